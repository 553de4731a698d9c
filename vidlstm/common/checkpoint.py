"""Reading vidlstm training checkpoints: a checkpoint is data. It is loaded with ``weights_only=True``, every
setting inference reads is type-checked, and the network is rebuilt through `vidlstm.models.registry`, so
nothing a file names is imported or called."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from vidlstm.data.transforms import INTERPOLATIONS
from vidlstm.models import CNNLSTM
from vidlstm.models.backbones import rebuild_weights_meta
from vidlstm.models.registry import ModelConfigError, build_network, describe_value, validate_model_config


class CheckpointError(ValueError):
    """The file is not a vidlstm checkpoint, is damaged, or holds settings vidlstm refuses (one-line message
    naming the file and the key)."""


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _three_numbers(value: Any) -> bool:
    return (isinstance(value, list | tuple) and len(value) == 3
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value))


def _check_data(data: Any, where: str) -> None:
    """The ``config.data`` settings the predictor reads: image_size, num_frames, eval_transform.resize/mean/std/
    interpolation (older checkpoints lack the last ones: None means ImageNet statistics and bilinear)."""
    if not isinstance(data, Mapping):
        raise CheckpointError(f"{where}: data: expected a mapping, got {describe_value(data)}")
    for key in ("image_size", "num_frames"):
        if key not in data:
            raise CheckpointError(f"{where}: data.{key}: missing")
        if not _positive_int(data[key]):
            raise CheckpointError(f"{where}: data.{key}: expected a positive int, got {describe_value(data[key])}")
    transform = data.get("eval_transform")
    if transform is None:
        return
    if not isinstance(transform, Mapping):
        raise CheckpointError(f"{where}: data.eval_transform: expected a mapping, got {describe_value(transform)}")
    resize = transform.get("resize")
    if resize is not None and not _positive_int(resize):
        raise CheckpointError(f"{where}: data.eval_transform.resize: expected a positive int or None, "
                              f"got {describe_value(resize)}")
    for key in ("mean", "std"):
        if transform.get(key) is not None and not _three_numbers(transform[key]):
            raise CheckpointError(f"{where}: data.eval_transform.{key}: expected 3 numbers (R, G, B) or None, "
                                  f"got {describe_value(transform[key])}")
    interpolation = transform.get("interpolation")
    if interpolation is not None and (not isinstance(interpolation, str) or interpolation not in INTERPOLATIONS):
        raise CheckpointError(f"{where}: data.eval_transform.interpolation: expected one of {INTERPOLATIONS} or None, "
                              f"got {describe_value(interpolation)}")


def _check_meta(meta: Mapping[str, Any], where: str) -> None:
    names = meta["class_names"]
    if not isinstance(names, list | tuple) or not names or not all(isinstance(n, str) for n in names):
        raise CheckpointError(f"{where}: class_names: expected a non-empty list of str, got {describe_value(names)}")
    config = meta["config"]
    if not isinstance(config, Mapping):
        raise CheckpointError(f"{where}: config: expected a mapping, got {describe_value(config)}")
    for key in ("data", "model"):
        if key not in config:
            raise CheckpointError(f"{where}: {key}: missing")
    _check_data(config["data"], where)
    try:
        validate_model_config(config["model"], where)
    except ModelConfigError as err:
        raise CheckpointError(str(err)) from err


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A vidlstm training checkpoint (``state_dict`` and ``vidlstm``: class names and the run's plain data and
    model config), loaded with ``weights_only=True`` and checked; `CheckpointError` for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # pickle errors, truncated zips, non-checkpoint files
        raise CheckpointError(f"{path}: not a loadable checkpoint ({' '.join(str(err).split())[:200]})") from err
    meta = checkpoint.get("vidlstm") if isinstance(checkpoint, dict) else None
    if (not isinstance(meta, dict) or "class_names" not in meta or "config" not in meta
            or not isinstance(checkpoint.get("state_dict"), Mapping)):
        raise CheckpointError(f"{path}: not a vidlstm checkpoint (no class names / model config inside); "
                              "use checkpoints/best.ckpt or last.ckpt of a vidlstm run")
    _check_meta(meta, str(path))
    return checkpoint


def build_net(checkpoint: Mapping[str, Any], where: str = "checkpoint") -> CNNLSTM:
    """The trained network of a checkpoint from `load_checkpoint`, (B, T, 3, H, W) -> logits (B, num_classes),
    weights loaded, in eval mode. ``where`` names the file in error messages."""
    meta = checkpoint["vidlstm"]
    try:
        model_cfg = validate_model_config(meta["config"]["model"], where)
        encoder = model_cfg["encoder"]
        # The checkpoint holds the weights; a file it names is never read. A torchvision weights name it holds
        # ("DEFAULT") still says which network those weights were trained in (e.g. Inception's input transform).
        encoder["weights_meta"] = rebuild_weights_meta(encoder.get("backbone", "tiny"), encoder.get("weights"),
                                                       encoder.get("weights_meta"))
        encoder["weights"] = None
        net = build_network(model_cfg, len(meta["class_names"]), where=where)
    except ModelConfigError as err:
        raise CheckpointError(str(err)) from err
    state = {k.removeprefix("net."): v for k, v in checkpoint["state_dict"].items() if k.startswith("net.")}
    try:
        net.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{where}: the weights do not fit the stored model config "
                              f"({' '.join(str(err).split())[:200]})") from err
    return net.eval()
