"""Per-frame CNN encoders: (B, T, 3, H, W) clips -> (B, T, D) feature sequences."""

from __future__ import annotations

import hashlib
import re
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


class _TimmTrunk(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def timm_trunk(name: str, weights: str | None = None) -> nn.Module:
    """``timm.create_model(name)``'s feature trunk (``forward_features``; needs ``pip install timm``).
    ``weights``: None, "DEFAULT" (timm's pretrained weights, downloaded) or a local state-dict file."""
    try:
        import timm
    except ImportError as err:
        raise ImportError(f"backbone 'timm:{name}' needs timm: pip install -e '.[timm]'") from err
    local = weights is not None and _is_local_file(weights)
    model = timm.create_model(name, pretrained=weights is not None and not local)
    if local:
        model.load_state_dict(load_local_state_dict(weights))
    return _TimmTrunk(model)


# timm model names are identifiers with an optional ".tag"; prefixes such as "hf-hub:" or "local-dir:" would
# make timm fetch or read a config, which a backbone name (possibly read from a checkpoint) must never do.
_TIMM_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?")


def build_trunk(backbone: str, weights: str | None = None) -> nn.Module:
    """"tiny" (or another registered name), "timm:<name>", or any torchvision classification model name."""
    if backbone in BACKBONES:
        return BACKBONES[backbone](weights=weights)
    if backbone.startswith("timm:"):
        name = backbone.removeprefix("timm:")
        if not _TIMM_NAME.fullmatch(name):
            raise ValueError(f"backbone {backbone!r}: not a timm model name (hub and directory prefixes are refused)")
        return timm_trunk(name, weights)
    if backbone not in torchvision.models.list_models(module=torchvision.models):
        raise ValueError(f"backbone {backbone!r}: not a torchvision classification model, 'timm:<name>' or one of "
                         f"{sorted(BACKBONES)}")
    return torchvision_trunk(backbone, weights)


def _trunk_from_run(weights: str) -> dict[str, torch.Tensor] | None:
    """The encoder trunk's weights when ``weights`` is a vidlstm training checkpoint, else None."""
    if not _is_local_file(weights):
        return None
    marker = "encoder.trunk."
    state = load_local_state_dict(weights)
    trunk = {k.split(marker, 1)[1]: v for k, v in state.items() if marker in k}
    return trunk or None


FREEZE_MODES = ("none", "all", "all_but_last")


class FrameEncoder(nn.Module):
    """Runs a CNN on every frame of a clip: (B, T, 3, H, W) -> (B, T, out_dim).

    Frames go through the CNN ``chunk_size`` at a time (all B*T at once when 0). ``spatial_grid`` sets the
    pooling of the final feature map: 1 is global average pooling (where things are is lost), g > 1
    average-pools to a g x g grid and flattens it, keeping coarse position so motion direction stays visible
    to the recurrent head.

    Args:
        backbone: "tiny", any torchvision classification model name (e.g. "resnet18", "mobilenet_v3_small")
            or "timm:<name>" (optional extra).
        weights: None, a named weights set ("DEFAULT"; downloads), a local state-dict file of the full
            classification model, or a vidlstm checkpoint (its encoder trunk is loaded).
        spatial_grid: output grid size of the spatial pooling (1 = GAP).
        channels_last: run the CNN in NHWC memory layout (often much faster with oneDNN on CPUs and with
            tensor cores on GPUs; same results up to float rounding).
        freeze: "none"; "all" (the CNN is a fixed feature extractor, BatchNorm statistics included);
            "all_but_last" (only the last ``trainable_stages`` stages, i.e. top-level trunk children with
            parameters such as ResNet's layer4, train).
        trainable_stages: stages left trainable with freeze="all_but_last".
        freeze_bn: keep every BatchNorm's running statistics fixed (eval mode) even while training; useful
            with small batches and pretrained weights.
        chunk_size: frames per CNN call; bounds activation memory for long clips (0 = all at once).
        projection_size: if > 0, a linear layer (+ dropout) maps the CNN features to this size.
        projection_dropout: dropout after the projection.
        probe_size: input side used once at construction to discover the feature size.
    """

    def __init__(self, backbone: str = "tiny", weights: str | None = None, spatial_grid: int = 1,
                 channels_last: bool = False, freeze: str = "none", trainable_stages: int = 1,
                 freeze_bn: bool = False, chunk_size: int = 0, projection_size: int = 0,
                 projection_dropout: float = 0.0, probe_size: int = 64) -> None:
        super().__init__()
        if freeze not in FREEZE_MODES:
            raise ValueError(f"unknown freeze mode {freeze!r}; choose from {FREEZE_MODES}")
        run_trunk = _trunk_from_run(weights) if weights else None
        self.trunk = build_trunk(backbone, None if run_trunk else weights)
        if run_trunk:
            self.trunk.load_state_dict(run_trunk)
        self.pool = nn.AdaptiveAvgPool2d(spatial_grid)
        self.backbone, self.spatial_grid, self.chunk_size = backbone, spatial_grid, chunk_size
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.trunk.to(memory_format=self.memory_format)
        if not 16 <= probe_size <= 1024:
            raise ValueError(f"probe_size must be in [16, 1024], got {probe_size}")
        self.channels = self._probe_channels(probe_size)
        features = self.channels * spatial_grid * spatial_grid
        self.projection = (nn.Sequential(nn.Linear(features, projection_size), nn.Dropout(projection_dropout))
                           if projection_size else None)
        self.out_dim = projection_size or features
        self.freeze, self.freeze_bn, self.frozen_stages = freeze, freeze_bn or freeze == "all", 0
        self._apply_freeze(trainable_stages)
        self.train()

    def stages(self) -> list[nn.Module]:
        """The trunk's top-level children that hold parameters, input to output."""
        return [m for m in self.trunk.children() if any(True for _ in m.parameters())] or [self.trunk]

    def _apply_freeze(self, trainable_stages: int) -> None:
        if self.freeze == "none":
            return
        frozen = self.stages()
        if self.freeze == "all_but_last":
            if trainable_stages < 1:
                raise ValueError(f"trainable_stages must be >= 1 with freeze='all_but_last', got {trainable_stages}")
            frozen = frozen[:-trainable_stages]
        for stage in frozen:
            stage.requires_grad_(False)
        self.frozen_stages = len(frozen)

    def train(self, mode: bool = True) -> FrameEncoder:
        super().train(mode)
        if self.freeze == "all":
            self.trunk.eval()  # no dropout, no BatchNorm updates: a fixed feature extractor
        elif self.freeze_bn:
            for module in self.trunk.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        if self.freeze == "all_but_last":
            for stage in self.stages()[: self.frozen_stages]:
                stage.eval()
        return self

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

    def trunk_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, channels * grid^2): the CNN and spatial pooling, before any projection. With
        freeze="all" this part is fixed, which is what the feature cache stores."""
        frames = frames.contiguous(memory_format=self.memory_format)
        chunks = frames.split(self.chunk_size) if self.chunk_size else (frames,)
        return torch.cat([self.pool(self.trunk(chunk)).flatten(1) for chunk in chunks])

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Trunk features (..., channels * grid^2) -> (..., out_dim): the optional projection."""
        return self.projection(features) if self.projection is not None else features

    def frame_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, out_dim)."""
        return self.project(self.trunk_features(frames))

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        b, t = clips.shape[:2]
        return self.frame_features(clips.flatten(0, 1)).reshape(b, t, -1)

    def fingerprint(self) -> str:
        """A hash of everything `trunk_features` depends on: backbone, pooling and the trunk's weights and
        buffers. Changes whenever cached features would."""
        digest = hashlib.sha1(f"{self.backbone}|{self.spatial_grid}".encode())
        for name, tensor in sorted(self.trunk.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]
