"""Clip transforms (torchvision.transforms.v2) on uint8 (T, 3, H, W): one random draw per clip, shared by
all of its frames, so motion is preserved."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import torch
from torchvision import tv_tensors
from torchvision.transforms import InterpolationMode, v2
from torchvision.transforms.v2 import functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Resampling modes for resizes (torchvision's names); the ones v2 applies to video tensors.
INTERPOLATIONS = ("bilinear", "bicubic", "nearest", "nearest-exact")


class ClipTransform:
    """Wraps a v2 pipeline: uint8 (T, 3, H, W) -> float32 (T, 3, size, size), normalised.

    A pipeline ending in ``ToDtype(float32, scale=True)`` + ``Normalize`` runs those two as one fused
    ``(x - 255 mean) / (255 std)`` on the float copy (same values to float rounding, a fifth of the time: it is
    part of every clip a loader worker makes); ``pipeline`` always holds every step."""

    def __init__(self, steps: list[v2.Transform]) -> None:
        self.pipeline = v2.Compose(steps)
        self._whole = _runner(self.pipeline)
        self._geometric, self._shift, self._scale = None, None, None
        if (len(steps) >= 2 and isinstance(steps[-2], v2.ToDtype) and isinstance(steps[-1], v2.Normalize)
                and steps[-2].dtype == torch.float32 and steps[-2].scale and not steps[-1].inplace):
            mean = torch.as_tensor(steps[-1].mean, dtype=torch.float32).view(-1, 1, 1)
            std = torch.as_tensor(steps[-1].std, dtype=torch.float32).view(-1, 1, 1)
            self._geometric = _runner(v2.Compose(steps[:-2])) if len(steps) > 2 else None
            self._shift, self._scale = mean * 255, 1 / (std * 255)

    def split(self) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
        """(the steps before the conversion to float, on uint8; the conversion and what follows): applied one
        after the other they are the whole transform, so a frame can stay small (uint8 at the model's size) until
        needed. Without a ``ToDtype`` step the first part is the identity."""
        steps = list(self.pipeline.transforms)
        cut = next((i for i, step in enumerate(steps) if isinstance(step, v2.ToDtype)), None)
        if cut is None:
            return identity, self
        return ClipTransform(steps[:cut]), ClipTransform(steps[cut:])

    def __call__(self, clip: torch.Tensor) -> torch.Tensor:
        if self._shift is None or clip.dtype != torch.uint8:
            return self._whole(clip)
        if self._geometric is not None:
            clip = self._geometric(clip)
        shift, scale = self._shift, self._scale
        if clip.device != shift.device:  # frames decoded on a GPU
            shift, scale = shift.to(clip.device), scale.to(clip.device)
        return clip.to(torch.float32).sub_(shift).mul_(scale)

    def __repr__(self) -> str:
        return f"ClipTransform({self.pipeline})"


def identity(clip: torch.Tensor) -> torch.Tensor:
    return clip


def _runner(composed: v2.Compose) -> Callable[[torch.Tensor], torch.Tensor]:
    """``composed``'s steps as one call on a plain (T, 3, H, W) tensor. When every step is a fixed resize or centre crop
    (evaluation), the functional ops are called directly: the same ops v2 runs on a video, without its
    per-call dispatch (0.12 -> 0.015 ms on a 16-frame clip already at size, the common case with a frame cache).
    Anything else (random steps, colour, user transforms) goes through v2 on a `tv_tensors.Video`."""
    direct = [_functional(step) for step in composed.transforms]
    if all(op is not None for op in direct):
        def run(clip: torch.Tensor) -> torch.Tensor:
            for op in direct:
                clip = op(clip)
            return clip
        return run
    return lambda clip: composed(tv_tensors.Video(clip)).as_subclass(torch.Tensor)


def _functional(step: v2.Transform) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The functional op a deterministic Resize / CenterCrop applies (exact types only: a subclass may differ)."""
    if type(step) is v2.Resize:
        return partial(F.resize, size=step.size, interpolation=step.interpolation, max_size=step.max_size,
                       antialias=step.antialias)
    if type(step) is v2.CenterCrop:
        return partial(F.center_crop, output_size=list(step.size))
    return None


def uint8_and_float(transform: Callable[[torch.Tensor], torch.Tensor]
                    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """(what a loader applies, what runs on the model's device): a `ClipTransform`'s uint8 steps and its float
    conversion (`ClipTransform.split`); any other transform whole in the loader, nothing on the device."""
    return transform.split() if isinstance(transform, ClipTransform) else (transform, identity)


def interpolation_mode(name: str | None) -> InterpolationMode:
    """``name`` (one of `INTERPOLATIONS`; None: "bilinear") as torchvision's InterpolationMode."""
    name = name or "bilinear"
    if name not in INTERPOLATIONS:
        raise ValueError(f"interpolation {name!r}: choose one of {INTERPOLATIONS}")
    return InterpolationMode(name)


def _to_float(mean: Sequence[float] | None, std: Sequence[float] | None) -> list[v2.Transform]:
    return [v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(IMAGENET_MEAN if mean is None else mean), list(IMAGENET_STD if std is None else std))]


def train_transform(
    size: int,
    resize: int | None = None,
    scale: Sequence[float] = (0.6, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    hflip: bool = False,
    color_jitter: float = 0.0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str | None = None,
) -> ClipTransform:
    """[Resize the short side to ``resize``,] random-resized crop to ``size``, optional horizontal flip and
    colour jitter, then normalise. ``mean``/``std`` None: ImageNet's; ``interpolation`` None: bilinear."""
    mode = interpolation_mode(interpolation)
    steps: list[v2.Transform] = [v2.Resize(resize, interpolation=mode, antialias=True)] if resize else []
    steps.append(v2.RandomResizedCrop(size, scale=tuple(scale), ratio=tuple(ratio), interpolation=mode,
                                      antialias=True))
    if hflip:
        steps.append(v2.RandomHorizontalFlip())
    if color_jitter > 0:
        steps.append(v2.ColorJitter(color_jitter, color_jitter, color_jitter))
    return ClipTransform(steps + _to_float(mean, std))


def eval_transform(
    size: int,
    resize: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    interpolation: str | None = None,
) -> ClipTransform:
    """Resize the short side to ``resize`` (default ``size``), centre-crop ``size``, normalise.
    ``mean``/``std`` None: ImageNet's; ``interpolation`` None: bilinear."""
    steps = [v2.Resize(resize or size, interpolation=interpolation_mode(interpolation), antialias=True),
             v2.CenterCrop(size)]
    return ClipTransform(steps + _to_float(mean, std))
