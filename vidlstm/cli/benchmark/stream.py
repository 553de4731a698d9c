"""``stream``: can `vidlstm-stream` keep up with a live 30 frames/s source on this machine?

A ``--seconds`` long H.264 video at ``--fps`` (default 30, ``--width`` x ``--height``) is streamed through a
``--encoder`` (default mobilenet_v3_small, random weights: speed does not depend on them) at ``--size`` px with
an LSTM head, windows of ``--window`` s every ``--stride`` s:

1. as fast as possible (the file read at full speed, nothing dropped): frames/s and the real-time factor
   (seconds of video per second of wall time; above 1 keeps up);
2. paced at the source's frame rate, as a camera delivers it: frames/s, frames dropped on purpose, and the lag
   from the arrival of a window's newest frame to its output line (p50/p95),

each for the checkpoint's clip length ``--num-frames`` (only sampled frames go through the CNN), for a clip
that takes every frame of the window (every frame through the CNN: the worst case), and for ``state=carry``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

DEMO_NAMES = ("move_right", "move_left", "grow", "shrink", "rotate_cw", "rotate_ccw", "appear", "vanish")


def random_checkpoint(path: Path, overrides: Sequence[str] = (), class_names: Sequence[str] = DEMO_NAMES) -> Path:
    """A checkpoint in vidlstm's format with random weights, for the train config with ``overrides`` (e.g.
    ``model/encoder=mobilenet_v3_small``); nothing is downloaded."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from vidlstm.training.train import build_module

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vidlstm.conf", version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=.", *overrides])
    GlobalHydra.instance().clear()
    module = build_module(cfg, class_names=list(class_names))
    config = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model")}
    torch.save({"state_dict": module.state_dict(), "vidlstm": {"class_names": list(class_names), "config": config}},
               path)
    return path


def source_video(path: Path, seconds: float, fps: int, width: int, height: int) -> Path:
    """A video of a square crossing a noisy background (H.264)."""
    from vidlstm.data.synthetic import write_mp4

    rng = np.random.default_rng(0)
    count = round(seconds * fps)
    frames = np.empty((count, height, width, 3), dtype=np.uint8)
    background = rng.integers(40, 90, size=(height, width, 3), dtype=np.uint8)
    side = max(8, height // 5)
    for i in range(count):
        frames[i] = background
        x = int((width - side) * (i % (2 * fps)) / (2 * fps))
        frames[i, height // 2 - side // 2: height // 2 + side // 2, x: x + side] = (220, 60, 60)
    write_mp4(path, frames, fps=fps, crf=23)
    return path


def measure(ckpt: Path, video: Path, realtime: bool, state: str, window: float, stride: float,
            max_lag_s: float) -> dict:
    from vidlstm.inference.predictor import Predictor
    from vidlstm.inference.stream import stream

    predictor = Predictor.from_checkpoint(ckpt, device="cpu", num_clips=1)
    result = stream(predictor, str(video), os.devnull, window, stride, state=state, realtime=realtime,
                    max_lag_s=max_lag_s, log_every_s=1e9)
    return result.summary()


def run(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        video = source_video(root / "source.mp4", args.seconds, args.fps, args.width, args.height)
        window_frames = round(args.window * args.fps)
        base = [f"model/encoder={args.encoder}", "model.encoder.weights=null", f"data.image_size={args.size}"]
        cases = [(f"T={args.num_frames} (sampled frames)", f"data.num_frames={args.num_frames}", "window"),
                 (f"T={window_frames} (every frame)", f"data.num_frames={window_frames}", "window"),
                 (f"T={args.num_frames}, state=carry", f"data.num_frames={args.num_frames}", "carry")]
        print(f"stream benchmark: {args.encoder} at {args.size} px + LSTM, {args.seconds:g} s source at {args.fps} "
              f"frames/s ({args.width}x{args.height}), window {args.window:g} s every {args.stride:g} s, "
              f"{max(1, (os.cpu_count() or 1) - 1)} model thread(s) (cpus: {os.cpu_count()})")
        print(f"  {'clip':28} {'full speed':>22}   {'paced at ' + str(args.fps) + ' frames/s (a live source)':>50}")
        print(f"  {'':28} {'frames/s':>10} {'RT factor':>10}   {'frames/s':>10} {'encoded':>8} {'dropped':>8} "
              f"{'lag p50':>9} {'lag p95':>9}")
        for name, clip, state in cases:
            ckpt = random_checkpoint(root / f"{state}{clip.split('=')[1]}.ckpt", [*base, clip])
            fast = measure(ckpt, video, False, state, args.window, args.stride, args.max_lag)
            paced = measure(ckpt, video, True, state, args.window, args.stride, args.max_lag)
            print(f"  {name:28} {fast['frames_per_s']:10.1f} {fast['realtime_factor']:10.2f}   "
                  f"{paced['frames_per_s']:10.1f} {paced['encoded']:8d} {paced['dropped']:8d} "
                  f"{_seconds(paced['lag_p50_s']):>9} {_seconds(paced['lag_p95_s']):>9}")
        print(f"  RT factor: seconds of video per second of wall time (>= 1 keeps up). Lag: from a window's newest "
              f"frame arriving to its line being written; frames older than --max-lag {args.max_lag:g} s are "
              "dropped on purpose, so it stays bounded.")


def _seconds(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f} s"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", default="mobilenet_v3_small", help="model/encoder config (random weights)")
    parser.add_argument("--size", type=int, default=112, help="frame size the model sees (px)")
    parser.add_argument("--num-frames", type=int, default=16, help="the checkpoint's clip length T")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the source video")
    parser.add_argument("--fps", type=int, default=30, help="source frame rate")
    parser.add_argument("--width", type=int, default=320, help="source width")
    parser.add_argument("--height", type=int, default=240, help="source height")
    parser.add_argument("--window", type=float, default=2.0, help="window length (s)")
    parser.add_argument("--stride", type=float, default=1.0, help="seconds between windows")
    parser.add_argument("--max-lag", type=float, default=1.0, help="frames older than this are dropped (s)")
