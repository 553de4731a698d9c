"""`Predictor`: a trained checkpoint -> class predictions for video files, with everything it needs (class
names, model, sampling and transform settings) read from the checkpoint itself."""

from __future__ import annotations

import contextlib
import functools
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vidlstm.common.checkpoint import CheckpointError, build_net, load_checkpoint
from vidlstm.data.sampling import DenseClipSampler, MultiClipSampler, UniformSegmentSampler
from vidlstm.data.transforms import eval_transform, uint8_and_float
from vidlstm.data.video import DEFAULT_TIMEOUT_S, VideoDecodeError, VideoReader, open_video

PREDICTION_FIELDS = ("path", "status", "label", "score", "topk_labels", "topk_scores", "num_frames", "error")
WINDOW_FIELDS = ("start_s", "end_s")


@dataclass
class Window:
    """One window of a long video: frames [first, stop), times [start_s, end_s)."""

    index: int
    count: int
    first: int
    stop: int
    start_s: float
    end_s: float


def window_span(start: float, window_s: float, num_frames: int, fps: float) -> tuple[int, int, float]:
    """Frames [first, stop) and end time of the window starting at ``start`` seconds in a video of
    ``num_frames`` frames at ``fps`` (the end is cut at the video's end). Streaming calls it with the frames
    received so far: a window that ends before them gets the same span as in the whole video."""
    duration = num_frames / fps if fps > 0 else 0.0
    end = min(start + window_s, duration) if duration else window_s
    first = min(round(start * fps), num_frames - 1)
    stop = max(first + 1, min(num_frames, round(end * fps)))
    return first, stop, end


def window_count(num_frames: int, fps: float, window_s: float, stride_s: float) -> int:
    """How many windows of ``window_s`` every ``stride_s`` seconds cover the video (at least one)."""
    duration = num_frames / fps if fps > 0 else 0.0
    return max(1, math.ceil(max(duration - window_s, 0.0) / stride_s) + 1)


def windows(num_frames: int, fps: float, window_s: float, stride_s: float) -> list[Window]:
    """Windows of ``window_s`` seconds every ``stride_s`` seconds covering the video (the last one may be
    shorter; a video shorter than one window is one window)."""
    if window_s <= 0 or stride_s <= 0:
        raise ValueError(f"window and stride must be positive, got {window_s}, {stride_s}")
    count = window_count(num_frames, fps, window_s, stride_s)
    spans = [(start, *window_span(start, window_s, num_frames, fps)) for start in
             (k * stride_s for k in range(count))]
    return [Window(i, count, first, stop, round(start, 3), round(end, 3))
            for i, (start, first, stop, end) in enumerate(spans)]


# Samplers a checkpoint's ``data.eval_sampler`` may name for window clips: Hydra target -> (class, settings
# read with their types). A literal table: a checkpoint names nothing else (see vidlstm.common.checkpoint).
WINDOW_SAMPLERS: dict[str, tuple[type, dict[str, type]]] = {
    "vidlstm.data.sampling.UniformSegmentSampler": (UniformSegmentSampler, {"offset": float}),
    "vidlstm.data.sampling.DenseClipSampler": (DenseClipSampler, {"frame_interval": int, "short_video": str,
                                                                  "position": float}),
}


def eval_clip_sampler(setting: Any, num_frames: int, where: str = "checkpoint") -> Callable[[int], list[int]]:
    """The clip sampler of a checkpoint's ``data.eval_sampler`` (None: the default, the centre frame of each of
    ``num_frames`` equal segments), without jitter: window mode samples each window's clip the way validation
    sampled a video. Raises `CheckpointError` for a sampler outside `WINDOW_SAMPLERS` or a wrongly typed value."""
    if setting is None:
        return UniformSegmentSampler(num_frames)
    target = setting.get("_target_") if isinstance(setting, dict) else None
    if target not in WINDOW_SAMPLERS:
        raise CheckpointError(f"{where}: data.eval_sampler: {target!r} is not a clip sampler window mode knows; "
                              f"known: {sorted(WINDOW_SAMPLERS)}")
    cls, types = WINDOW_SAMPLERS[target]
    kwargs = {}
    for key, value in setting.items():
        if key in ("_target_", "_partial_", "jitter"):
            continue
        if key not in types:
            raise CheckpointError(f"{where}: data.eval_sampler.{key}: not a setting of {cls.__name__}")
        kind = types[key]
        if isinstance(value, bool) or not isinstance(value, int | float if kind is float else kind):
            raise CheckpointError(f"{where}: data.eval_sampler.{key}: expected {kind.__name__}, got {value!r}")
        kwargs[key] = kind(value)
    try:
        return cls(num_frames, jitter=False, **kwargs)
    except ValueError as err:
        raise CheckpointError(f"{where}: data.eval_sampler: {err}") from err


class Predictor:
    """Predictions from a trained CNN+LSTM. Build with `Predictor.from_checkpoint`.

    Video-level scores average the class probabilities of ``num_clips`` evenly spaced clips.
    """

    def __init__(self, net: nn.Module, class_names: Sequence[str], num_frames: int, transform: Any,
                 num_clips: int = 3, top_k: int = 5, backend: str = "auto",
                 timeout_s: float | None = DEFAULT_TIMEOUT_S, device: str = "auto") -> None:
        self.device = torch.device(resolve_device(device))
        self.net = net.to(self.device).eval()
        self.class_names = list(class_names)
        self.num_frames, self.transform = num_frames, transform
        # The transform's uint8 steps and its float conversion: folder runs decode and resize in workers and
        # convert on the model's device (a quarter of the bytes between processes; see `clip_probabilities`).
        self.uint8_transform, self.to_float = uint8_and_float(transform)
        self.num_clips, self.top_k = num_clips, min(top_k, len(self.class_names))
        self.backend, self.timeout_s = backend, timeout_s
        self.sampler = MultiClipSampler(num_frames, num_clips, clip="segments")
        # data.eval_sampler of the checkpoint (set by from_checkpoint; None: the default segment centres)
        self.eval_sampler_setting: Any = None
        self.source = "checkpoint"

    @classmethod
    def from_checkpoint(cls, path: str | os.PathLike, device: str = "auto", num_clips: int = 3, top_k: int = 5,
                        backend: str = "auto", timeout_s: float | None = DEFAULT_TIMEOUT_S) -> Predictor:
        """Everything (class names, network, clip length, frame size, resize, interpolation, normalisation)
        comes from the checkpoint, loaded with ``weights_only=True``; a checkpoint without mean/std/
        interpolation (older runs) gets ImageNet statistics and bilinear resizing, as those runs used."""
        checkpoint = load_checkpoint(path)
        data = checkpoint["vidlstm"]["config"]["data"]  # type-checked by load_checkpoint
        transform_cfg = data.get("eval_transform") or {}
        transform = eval_transform(data["image_size"], resize=transform_cfg.get("resize"),
                                   mean=transform_cfg.get("mean"), std=transform_cfg.get("std"),
                                   interpolation=transform_cfg.get("interpolation"))
        predictor = cls(build_net(checkpoint, str(path)), checkpoint["vidlstm"]["class_names"],
                        data["num_frames"], transform, num_clips, top_k, backend, timeout_s, device)
        predictor.eval_sampler_setting, predictor.source = data.get("eval_sampler"), str(path)
        return predictor

    # --- decoding (runs in DataLoader workers for folder runs) ---
    def open(self, path: str | os.PathLike) -> VideoReader:
        return open_video(path, self.backend, timeout_s=self.timeout_s)

    def video_clips(self, reader: VideoReader, first: int = 0, stop: int | None = None,
                    num_clips: int | None = None, uint8: bool = False) -> torch.Tensor:
        """Float (N, T, 3, H, W) clips from frames [first, stop) of an open video, decoded in one call;
        ``uint8``: before the float conversion (`clip_probabilities` converts them on the model's device)."""
        stop = reader.num_frames if stop is None else stop
        if stop <= first:
            raise VideoDecodeError(reader.path, f"no frames to sample in [{first}, {stop})")
        count = num_clips or self.num_clips
        sampler = self.sampler if count == self.num_clips else MultiClipSampler(self.num_frames, count)
        clips = sampler(stop - first)
        frames = reader.get_frames([first + i for clip in clips for i in clip])
        return torch.stack([self._transform(uint8)(part) for part in frames.split(self.num_frames)])

    @functools.cached_property
    def window_sampler(self) -> Callable[[int], list[int]]:
        """One clip per window, sampled as the checkpoint's eval sampler samples a validation video."""
        return eval_clip_sampler(self.eval_sampler_setting, self.num_frames, self.source)

    def window_indices(self, first: int, stop: int) -> list[int]:
        """Frame indices of the clip that scores the window of frames [first, stop)."""
        return [first + i for i in self.window_sampler(stop - first)]

    def window_clip(self, reader: VideoReader, window: Window, uint8: bool = False) -> torch.Tensor:
        """Float (1, T, 3, H, W): the clip of one window, decoded in one call (``uint8``: as `video_clips`)."""
        return self._transform(uint8)(reader.get_frames(self.window_indices(window.first, window.stop)))[None]

    def _transform(self, uint8: bool) -> Callable[[torch.Tensor], torch.Tensor]:
        return self.uint8_transform if uint8 else self.transform

    # --- the model ---
    @torch.no_grad()
    def clip_probabilities(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, N, T, 3, H, W) -> (B, N, num_classes): class probabilities of every clip (float clips, or uint8
        ones from ``uint8=True`` decoding, converted here on the model's device)."""
        b, n = clips.shape[:2]
        clips = clips.to(self.device, non_blocking=True).flatten(0, 1)
        if clips.dtype == torch.uint8:
            clips = self.to_float(clips)
        autocast = torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda" \
            else contextlib.nullcontext()
        with autocast:
            logits = self.net(clips)
        return logits.float().softmax(dim=-1).view(b, n, -1).cpu()

    def probabilities(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, N, T, 3, H, W) -> (B, num_classes): class probabilities averaged over each video's N clips."""
        return self.clip_probabilities(clips).mean(dim=1)

    def row(self, path: str, probs: torch.Tensor, num_frames: int) -> dict[str, Any]:
        scores, indices = probs.topk(self.top_k)
        labels = [self.class_names[i] for i in indices.tolist()]
        return {"path": path, "status": "ok", "label": labels[0], "score": round(float(scores[0]), 6),
                "topk_labels": labels, "topk_scores": [round(float(s), 6) for s in scores],
                "num_frames": num_frames, "error": ""}

    @staticmethod
    def error_row(path: str, reason: str) -> dict[str, Any]:
        return {"path": path, "status": "error", "label": "", "score": "", "topk_labels": [],
                "topk_scores": [], "num_frames": "", "error": reason}

    # --- one video at a time (notebooks) ---
    def predict_video(self, path: str | os.PathLike) -> dict[str, Any]:
        """One row: label, score, top-k labels/scores, or ``status="error"`` with the reason."""
        try:
            with self.open(path) as reader:
                clips = self.video_clips(reader)
                num_frames = reader.num_frames
        except VideoDecodeError as err:
            return self.error_row(str(path), err.reason)
        return self.row(str(path), self.probabilities(clips[None])[0], num_frames)

    def predict_windows(self, path: str | os.PathLike, window_s: float, stride_s: float | None = None
                        ) -> list[dict[str, Any]]:
        """One row per window (``start_s``, ``end_s``, top-k; one clip per window) and a final video-level
        row (empty ``start_s``/``end_s``: probabilities averaged over windows). Frames are decoded one window
        at a time, so memory does not grow with the video's length."""
        rows, probs = [], []
        try:
            with self.open(path) as reader:
                for window in windows(reader.num_frames, reader.fps, window_s, stride_s or window_s):
                    p = self.probabilities(self.window_clip(reader, window)[None])[0]
                    probs.append(p)
                    rows.append({**self.row(str(path), p, window.stop - window.first),
                                 "start_s": window.start_s, "end_s": window.end_s})
                total = reader.num_frames
        except VideoDecodeError as err:
            return [{**self.error_row(str(path), err.reason), "start_s": "", "end_s": ""}]
        return [*rows, {**self.row(str(path), torch.stack(probs).mean(0), total), "start_s": "", "end_s": ""}]


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; otherwise the name given."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but no CUDA GPU is visible")
    return device
