"""Clip transforms (torchvision.transforms.v2) on uint8 (T, 3, H, W): one random draw per clip, shared by
all of its frames, so motion is preserved."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ClipTransform:
    """Wraps a v2 pipeline: uint8 (T, 3, H, W) -> float32 (T, 3, size, size), normalised."""

    def __init__(self, steps: list[v2.Transform]) -> None:
        self.pipeline = v2.Compose(steps)

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        return self.pipeline(tv_tensors.Video(clip)).as_subclass(torch.Tensor)

    def __repr__(self) -> str:
        return f"ClipTransform({self.pipeline})"


def _to_float(mean: Sequence[float], std: Sequence[float]) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True), v2.Normalize(list(mean), list(std))]


def train_transform(
    size: int,
    resize: int | None = None,
    scale: Sequence[float] = (0.6, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: bool = False,
    color_jitter: float = 0.0,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ClipTransform:
    """[Resize the short side to ``resize``,] random-resized crop to ``size``, optional horizontal flip and
    colour jitter, then normalise."""
    steps: list[v2.Transform] = [v2.Resize(resize, antialias=True)] if resize else []
    steps.append(v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), antialias=True))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if color_jitter > 0:
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    return ClipTransform(steps + _to_float(mean, std))


def eval_transform(
    size: int,
    resize: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> ClipTransform:
    """Resize the short side to ``resize`` (default ``size``), centre-crop ``size``, normalise."""
    steps = [v2.Resize(resize or size, antialias=True), v2.CenterCrop(size)]
    return ClipTransform(steps + _to_float(mean, std))
