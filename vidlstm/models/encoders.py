"""Per-frame CNN encoders: (B, T, 3, H, W) clips -> (B, T, D) feature sequences."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from vidlstm.models.backbones import (
    BACKBONES,
    build_trunk,
    is_local_file,
    load_local_state_dict,
    register_backbone,
    stage_list,
    timm_trunk,
    tiny_cnn,
    torchvision_trunk,
)

__all__ = ["BACKBONES", "FREEZE_MODES", "FrameEncoder", "build_trunk", "load_local_state_dict", "register_backbone",
           "timm_trunk", "tiny_cnn", "torchvision_trunk"]


def _trunk_from_run(weights: str) -> dict[str, torch.Tensor] | None:
    """The encoder trunk's weights when ``weights`` is a vidlstm training checkpoint, else None."""
    if not is_local_file(weights):
        return None
    marker = "encoder.trunk."
    state = load_local_state_dict(weights)
    trunk = {k.split(marker, 1)[1]: v for k, v in state.items() if marker in k}
    return trunk or None


FREEZE_MODES = ("none", "all", "all_but_last")


class FrameEncoder(nn.Module):
    """Runs a CNN on every frame of a clip: (B, T, 3, H, W) -> (B, T, out_dim).

    Frames go through the CNN ``chunk_size`` at a time (all B*T at once when 0). The trunk (the whole
    backbone up to where its global pooling starts; see `vidlstm.models.backbones`) gives (N, C, h, w) maps;
    ``spatial_grid`` sets their pooling: 1 is global average pooling (where things are is lost), g > 1
    average-pools to a g x g grid and flattens it, keeping coarse position so motion direction stays visible
    to the recurrent head. A normalisation the backbone's head applies to pooled features (ConvNeXt's
    LayerNorm) is applied to every grid cell, so with ``spatial_grid=1`` the features are the backbone's
    penultimate activations.

    Args:
        backbone: "tiny", any torchvision classification model name (e.g. "resnet18", "mobilenet_v3_small",
            "inception_v3", "vit_b_16") or "timm:<name>" (optional extra).
        weights: None, a named weights set ("DEFAULT"; downloads), a local state-dict file of the full
            classification model, or a vidlstm checkpoint (its encoder trunk is loaded).
        spatial_grid: output grid size of the spatial pooling (1 = GAP). Backbones without a feature map
            (ViT: one class-token vector per frame) take only 1.
        channels_last: run the CNN in NHWC memory layout (often much faster with oneDNN on CPUs and with
            tensor cores on GPUs; same results up to float rounding).
        freeze: "none"; "all" (the CNN is a fixed feature extractor, BatchNorm statistics included);
            "all_but_last" (only the last ``trainable_stages`` stages train, e.g. ResNet's layer4; see
            `vidlstm.models.backbones.stage_list`).
        trainable_stages: stages left trainable with freeze="all_but_last".
        freeze_bn: keep every BatchNorm's running statistics fixed (eval mode) even while training; useful
            with small batches and pretrained weights.
        chunk_size: frames per CNN call; bounds activation memory for long clips (0 = all at once).
        projection_size: if > 0, a linear layer (+ dropout) maps the CNN features to this size.
        projection_dropout: dropout after the projection.
        probe_size: input side used once at construction to discover the feature size (raised to the
            backbone's minimum; a fixed-size backbone such as ViT is probed at its size).
        weights_meta: torchvision only: the weights (a member of the model's weights enum, e.g.
            "IMAGENET1K_V1") the network is built for and, at training start, whose preprocessing applies
            when ``weights`` is a local file; None: the model's DEFAULT weights.
    """

    def __init__(self, backbone: str = "tiny", weights: str | None = None, spatial_grid: int = 1,
                 channels_last: bool = False, freeze: str = "none", trainable_stages: int = 1,
                 freeze_bn: bool = False, chunk_size: int = 0, projection_size: int = 0,
                 projection_dropout: float = 0.0, probe_size: int = 64, weights_meta: str | None = None) -> None:
        super().__init__()
        if freeze not in FREEZE_MODES:
            raise ValueError(f"unknown freeze mode {freeze!r}; choose from {FREEZE_MODES}")
        if spatial_grid < 1:
            raise ValueError(f"spatial_grid must be >= 1, got {spatial_grid}")
        if freeze == "all_but_last" and trainable_stages < 1:
            raise ValueError(f"trainable_stages must be >= 1 with freeze='all_but_last', got {trainable_stages}")
        if not 16 <= probe_size <= 1024:
            raise ValueError(f"probe_size must be in [16, 1024], got {probe_size}")
        run_trunk = _trunk_from_run(weights) if weights else None
        self.trunk = build_trunk(backbone, None if run_trunk else weights, weights_meta)
        if run_trunk:
            self.trunk.load_state_dict(run_trunk)
        if spatial_grid > 1 and getattr(self.trunk, "vector", False):
            raise ValueError(f"backbone {backbone!r}: spatial_grid={spatial_grid} not supported: its features are "
                             "one vector per frame (no feature map); use spatial_grid=1")
        self.pool = nn.AdaptiveAvgPool2d(spatial_grid)
        self.backbone, self.spatial_grid, self.chunk_size = backbone, spatial_grid, chunk_size
        self.weights_meta = weights_meta
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.trunk.to(memory_format=self.memory_format)
        self.channels = self._probe_channels(probe_size)
        features = self.channels * spatial_grid * spatial_grid
        self.projection = (nn.Sequential(nn.Linear(features, projection_size), nn.Dropout(projection_dropout))
                           if projection_size else None)
        self.out_dim = projection_size or features
        self.freeze, self.freeze_bn = freeze, freeze_bn or freeze == "all"
        self.trainable_stages = trainable_stages
        self.frozen_stages = self._apply_freeze()
        self.train()

    def stages(self) -> list[nn.Module]:
        """The trunk's parameters in consecutive stages, input to output (e.g. ResNet: stem, layer1..layer4)."""
        own = getattr(self.trunk, "stages", None)
        return own() if callable(own) else stage_list(self.trunk)

    def _trainable_tail(self) -> list[nn.Module]:
        return self.stages()[-self.trainable_stages:] if self.freeze == "all_but_last" else []

    def _apply_freeze(self) -> int:
        """Turn off gradients of the frozen trunk parameters; returns the number of frozen stages."""
        if self.freeze == "none":
            return 0
        stages = self.stages()
        keep = {id(p) for stage in self._trainable_tail() for p in stage.parameters()}
        for param in self.trunk.parameters():
            if id(param) not in keep:
                param.requires_grad_(False)
        return len(stages) - len(self._trainable_tail())

    def train(self, mode: bool = True) -> FrameEncoder:
        super().train(mode)
        if self.freeze == "all":
            self.trunk.eval()  # no dropout, no BatchNorm updates: a fixed feature extractor
        elif self.freeze_bn:
            for module in self.trunk.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        if self.freeze == "all_but_last":
            live = {id(m) for stage in self._trainable_tail() for m in stage.modules()}
            for module in self.trunk.modules():  # one by one: a container of the live stages stays as it is
                if id(module) not in live:
                    module.training = False
        return self

    @torch.no_grad()
    def _probe_channels(self, size: int) -> int:
        side = getattr(self.trunk, "input_size", None) or max(size, getattr(self.trunk, "min_size", 1))
        was_training = self.trunk.training
        self.trunk.eval()
        try:
            maps = self.trunk(torch.zeros(1, 3, side, side).contiguous(memory_format=self.memory_format))
        except RuntimeError as err:
            raise ValueError(f"backbone {self.backbone!r}: a {side}x{side} probe frame fails in it "
                             f"({' '.join(str(err).split())[:160]}); it may need larger frames: raise "
                             "model.encoder.probe_size (and data.image_size)") from err
        finally:
            self.trunk.train(was_training)
        if maps.dim() != 4:
            raise ValueError(f"backbone {self.backbone!r}: its trunk returns shape {tuple(maps.shape)}, "
                             "not (N, C, H, W) feature maps; pick a convolutional backbone")
        return int(maps.shape[1])

    def trunk_features(self, frames: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, channels * grid^2): the CNN, spatial pooling and the head's normalisation of
        pooled features (if the backbone has one), before any projection. With freeze="all" this part is
        fixed, which is what the feature cache stores."""
        check = getattr(self.trunk, "check_frames", None)
        if check is not None:
            check(frames, self.backbone)
        norm = getattr(self.trunk, "norm_pooled", None)
        frames = frames.contiguous(memory_format=self.memory_format)
        chunks = frames.split(self.chunk_size) if self.chunk_size else (frames,)
        pooled = [self.pool(self.trunk(chunk)) for chunk in chunks]
        return torch.cat([(norm(p) if norm is not None else p).flatten(1) for p in pooled])

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
        """A hash of everything `trunk_features` depends on: backbone (and the torchvision weights its network
        is built for), pooling and the trunk's weights and buffers. Changes whenever cached features would."""
        arch = getattr(self.trunk, "arch", None)
        digest = hashlib.sha1(f"{self.backbone}|{self.spatial_grid}{f'|{arch}' if arch else ''}".encode())
        for name, tensor in sorted(self.trunk.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]
