"""``gpu``: what the GPU path gives, measured in one run on one GPU.

1. Training clips/s of ResNet-18 at ``--size`` px + an LSTM head (``--frames`` frames per clip, batch
   ``--batch-size``), forward + backward + optimizer step, in fp32 and in bf16 autocast (channels_last both),
   from batches already on the GPU: the model's own speed.
2. The same bf16 training fed by the real loader (the demo's videos decoded by ``--workers`` DataLoader workers,
   pinned memory, non-blocking copies, prefetching): clips/s and the share of step time spent waiting for data.
3. Decoding the same clips (16 frames, every 2nd, from a generated 480p H.264 video) with torchcodec on the CPU
   and with torchcodec's CUDA decoder (NVDEC), clips/s each, in this process.

Each step ends with a device synchronisation, so a step's time is its real GPU time. Without a GPU it says so and
measures nothing.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vidlstm.cli.benchmark.common import demo_split

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}


def resnet_lstm(num_classes: int = 8, channels_last: bool = True) -> torch.nn.Module:
    """ResNet-18 (random init) per frame + a one-layer LSTM of 256 units: (B, T, 3, H, W) -> (B, num_classes)."""
    from vidlstm.models.registry import build_network

    return build_network({"encoder": {"backbone": "resnet18", "channels_last": channels_last},
                          "head": {"hidden_size": 256}}, num_classes)


def train_steps(net: torch.nn.Module, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device,
                precision: str, steps: int, warmup: int = 3,
                to_input: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict[str, float]:
    """Train ``net`` on ``steps`` batches after ``warmup`` untimed ones: {"clips_per_s", "data_wait" (share),
    "clips", "wait_s", "step_s"} where the wait is the time spent getting the next batch onto ``device`` (fetch
    + non-blocking copy) and the rest is the step (``to_input`` on the device first: uint8 clips become the
    model's float input, as `VideoDataModule.on_after_batch_transfer` does), each ending with a device
    synchronisation."""
    net = net.to(device).train()
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    dtype = PRECISIONS[precision]
    batches_iter: Iterator = iter(batches)
    wait_s = step_s = 0.0
    clips = 0
    for step in range(warmup + steps):
        started = time.perf_counter()
        frames, labels = next(batches_iter)
        frames, labels = frames.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        fetched = time.perf_counter()
        if to_input is not None:
            frames = to_input(frames)
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            loss = torch.nn.functional.cross_entropy(net(frames), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        done = time.perf_counter()
        if step >= warmup:
            wait_s, step_s, clips = wait_s + fetched - started, step_s + done - fetched, clips + len(labels)
    return {"clips_per_s": clips / (wait_s + step_s), "data_wait": wait_s / (wait_s + step_s), "clips": clips,
            "wait_s": wait_s, "step_s": step_s}


def in_memory(batch_size: int, frames: int, size: int, device: torch.device, num_classes: int = 8
              ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The same random batch forever, already on ``device``: no data cost at all."""
    clips = torch.randn(batch_size, frames, 3, size, size, device=device)
    labels = torch.randint(num_classes, (batch_size,), device=device)
    return itertools.repeat((clips, labels))


def from_videos(videos: Path, batch_size: int, frames: int, size: int, workers: int
                ) -> tuple[Iterator, Callable[[torch.Tensor], torch.Tensor]]:
    """(endless batches of the videos under ``videos`` (class folders) through vidlstm's dataset and a
    DataLoader set up as `trainer=gpu` sets it up: pinned memory, persistent workers, prefetching, uint8 clips;
    the float conversion + normalisation to run on the device)."""
    from vidlstm.data.dataset import VideoClipDataset, collate_clips
    from vidlstm.data.index import ClassFolderSource
    from vidlstm.data.sampling import UniformSegmentSampler
    from vidlstm.data.transforms import eval_transform

    records = ClassFolderSource(videos).records()
    in_loader, on_device = eval_transform(size).split()
    dataset = VideoClipDataset(records, sorted({r.label for r in records}), UniformSegmentSampler(frames), in_loader)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers, pin_memory=True,
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                        collate_fn=collate_clips, drop_last=True)
    batches = ((batch.clips, batch.labels) for batch in itertools.chain.from_iterable(itertools.repeat(loader)))
    return batches, on_device


def decode_rates(video: Path, clips: int, device: torch.device) -> dict[str, float | str]:
    """clips/s of torchcodec decoding the same random 16-frame clips (every 2nd frame) of ``video`` on the CPU
    and on ``device``'s decoder; a string in place of a rate says why that side could not run."""
    from torchcodec.decoders import VideoDecoder

    total = VideoDecoder(str(video), seek_mode="exact").metadata.num_frames
    rng = random.Random(0)
    starts = [rng.randrange(0, total - 31) for _ in range(clips)]
    rates: dict[str, float | str] = {}
    for name, target in (("cpu", "cpu"), ("cuda", str(device))):
        try:
            decoder = VideoDecoder(str(video), seek_mode="exact", device=target)
            decoder.get_frames_at(list(range(0, 32, 2)))  # warm-up: decoder start, first frames
            if target != "cpu":
                torch.cuda.synchronize(device)
            started = time.perf_counter()
            for start in starts:
                decoder.get_frames_at(list(range(start, start + 32, 2)))
            if target != "cpu":
                torch.cuda.synchronize(device)
            rates[name] = clips / (time.perf_counter() - started)
        except Exception as err:  # e.g. torchcodec or FFmpeg built without NVDEC support
            rates[name] = f"not available ({type(err).__name__}: {' '.join(str(err).split())[:200]})"
    return rates


def run(args: argparse.Namespace) -> None:
    if not torch.cuda.is_available():
        print(f"gpu benchmark: no GPU present (torch {torch.__version__}: torch.cuda.is_available() is False); "
              "nothing was measured. Run it on a machine with an NVIDIA GPU.")
        return
    device = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    print(f"gpu benchmark: {torch.cuda.get_device_name(device)}, torch {torch.__version__}, CUDA "
          f"{torch.version.cuda}; ResNet-18 at {args.size} px + LSTM 256, {args.frames} frames, batch "
          f"{args.batch_size}, {args.steps} timed steps (cpus: {os.cpu_count()})")
    precisions = ["fp32", "bf16"] if torch.cuda.is_bf16_supported() else ["fp32"]
    compute = {}
    for precision in precisions:
        torch.manual_seed(0)
        result = train_steps(resnet_lstm(), in_memory(args.batch_size, args.frames, args.size, device), device,
                             precision, args.steps)
        compute[precision] = result["clips_per_s"]
        print(f"  training, batches in GPU memory, {precision:<4}   {result['clips_per_s']:8.1f} clips/s")
    if "bf16" in compute:
        print(f"  ratio bf16 / fp32: {compute['bf16'] / compute['fp32']:.2f}")
    precision = precisions[-1]
    videos = args.videos or demo_split("train")
    batches, to_input = from_videos(videos, args.batch_size, args.frames, args.size, args.workers)
    fed = train_steps(resnet_lstm(), batches, device, precision, args.steps, to_input=to_input)
    print(f"  training from {videos} ({args.workers} workers), {precision}: {fed['clips_per_s']:8.1f} clips/s, "
          f"waiting for data {100 * fed['data_wait']:.0f}% of the time; ratio to in-memory batches "
          f"{fed['clips_per_s'] / compute[precision]:.2f}")
    from vidlstm.cli.benchmark.data import long_video

    video = args.long_video or long_video(Path(os.environ.get("VIDLSTM_ROOT", ".")) / "data" / "benchmark",
                                          minutes=1)
    rates = decode_rates(video, args.decode_clips, device)
    print(f"decoding {args.decode_clips} clips of 16 frames from {video} with torchcodec, in this process:")
    for name, rate in rates.items():
        print(f"  {name:<5} " + (f"{rate:8.1f} clips/s" if isinstance(rate, float) else rate))
    if all(isinstance(r, float) for r in rates.values()):
        print(f"  ratio GPU / CPU decoding: {rates['cuda'] / rates['cpu']:.2f}")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--size", type=int, default=224, help="frame side")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--batch-size", type=int, default=16, help="clips per training step")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps per measurement")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), help="decoding workers")
    parser.add_argument("--videos", type=Path, help="class-per-folder videos for the loader-fed run (default: demo)")
    parser.add_argument("--long-video", type=Path, help="video for the decoding check (default: a generated "
                                                          "1-minute 480p H.264 file in ./data/benchmark)")
    parser.add_argument("--decode-clips", type=int, default=64, help="clips decoded on each side")
