"""Per-frame CNN encoders: (B, T, 3, H, W) clips -> (B, T, D) feature sequences."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn

BACKBONES: dict[str, Callable[..., nn.Module]] = {}
# Children at and after which a torchvision classifier stops being a spatial feature trunk.
_CLASSIFIER_PARTS = {"avgpool", "fc", "classifier", "head", "heads", "flatten", "dropout", "AuxLogits"}


def register_backbone(name: str) -> Callable:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BACKBONES[name] = fn
        return fn

    return wrap


@register_backbone("tiny")
def tiny_cnn(widths: Sequence[int] = (16, 32, 64), weights: str | None = None) -> nn.Module:
    """A small conv net for low-resolution clips (the demo): one stride-2 stage per width, stride 2**len."""
    layers: list[nn.Module] = []
    channels = 3
    for i, width in enumerate(widths):
        layers += [nn.Conv2d(channels, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                   nn.ReLU(inplace=True)]
        if i == len(widths) - 1:
            layers += [nn.Conv2d(width, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True)]
        channels = width
    trunk = nn.Sequential(*layers)
    if weights is not None:
        trunk.load_state_dict(load_local_state_dict(weights))
    return trunk


def load_local_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file: a bare state dict, or a checkpoint holding one under
    ``state_dict``/``model``; a DDP ``module.`` prefix is removed. Loaded with ``weights_only=True``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _is_local_file(weights: str) -> bool:
    return Path(weights).suffix in {".pt", ".pth", ".ckpt", ".bin"} or Path(weights).is_file()


def torchvision_trunk(name: str, weights: str | None = None) -> nn.Module:
    """The convolutional part of ``torchvision.models.get_model(name)`` (pooling and classifier removed).

    ``weights``: None (random init), a torchvision weights name such as "DEFAULT" (downloads on first use),
    or a local file with the full classification model's state dict (for machines without internet).
    """
    local = weights is not None and _is_local_file(weights)
    model = torchvision.models.get_model(name, weights=None if local else weights)
    if local:
        model.load_state_dict(load_local_state_dict(weights))
    parts = []
    for child_name, child in model.named_children():
        if child_name in _CLASSIFIER_PARTS:
            break
        parts.append(child)
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


class FrameEncoder(nn.Module):
    """Runs a CNN on every frame of a clip: (B, T, 3, H, W) -> (B, T, out_dim).

    All B*T frames go through the CNN in one call. ``spatial_grid`` sets the pooling of the final feature
    map: 1 is global average pooling (where things are is lost), g > 1 average-pools to a g x g grid and
    flattens it, keeping coarse position so motion direction stays visible to the recurrent head.

    Args:
        backbone: "tiny" or any torchvision classification model name (e.g. "resnet18", "mobilenet_v3_small").
        weights: None, a torchvision weights name ("DEFAULT"), or a local weights file.
        spatial_grid: output grid size of the spatial pooling (1 = GAP).
        channels_last: run the CNN in NHWC memory layout (often much faster with oneDNN on CPUs and with
            tensor cores on GPUs; same results up to float rounding).
        probe_size: input side used once at construction to discover the feature size.
    """

    def __init__(self, backbone: str = "tiny", weights: str | None = None, spatial_grid: int = 1,
                 channels_last: bool = False, probe_size: int = 64) -> None:
        super().__init__()
        builder = BACKBONES.get(backbone)
        self.trunk = builder(weights=weights) if builder else torchvision_trunk(backbone, weights)
        self.pool = nn.AdaptiveAvgPool2d(spatial_grid)
        self.backbone, self.spatial_grid = backbone, spatial_grid
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.trunk.to(memory_format=self.memory_format)
        self.channels = self._probe_channels(probe_size)
        self.out_dim = self.channels * spatial_grid * spatial_grid

    @torch.no_grad()
    def _probe_channels(self, size: int) -> int:
        was_training = self.trunk.training
        self.trunk.eval()
        maps = self.trunk(torch.zeros(1, 3, size, size).contiguous(memory_format=self.memory_format))
        self.trunk.train(was_training)
        if maps.dim() != 4:
            raise ValueError(f"backbone {self.backbone!r}: its trunk returns shape {tuple(maps.shape)}, "
                             "not (N, C, H, W) feature maps; pick a convolutional backbone")
        return int(maps.shape[1])

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, t = clips.shape[:2]
        maps = self.trunk(clips.flatten(0, 1).contiguous(memory_format=self.memory_format))
        return self.pool(maps).flatten(1).reshape(b, t, -1)
