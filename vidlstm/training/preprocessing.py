"""Preprocessing that follows the encoder's weights. When a run starts, the data transforms' null ``mean``,
``std`` and ``interpolation``, a null evaluation ``resize`` and a null ``data.image_size`` are filled in from
what the encoder's weights expect (`vidlstm.models.backbones.weights_preprocessing`; a vidlstm checkpoint
given as weights: the preprocessing it was trained with). Values the config sets stay. The result is logged
in one line and, being part of the run's config, stored in its checkpoints, so predict, evaluate and export
use the same values."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from vidlstm.common.checkpoint import CheckpointError, load_checkpoint
from vidlstm.data.transforms import INTERPOLATIONS
from vidlstm.models.backbones import Preprocessing, eval_resize, is_local_file, weights_preprocessing

log = logging.getLogger(__name__)
# The transform factories whose settings are filled in; a custom transform is left as configured.
TRAIN_TARGET, EVAL_TARGET = "vidlstm.data.transforms.train_transform", "vidlstm.data.transforms.eval_transform"
FILLED = ("mean", "std", "interpolation")


def encoder_preprocessing(encoder: Mapping[str, Any]) -> Preprocessing:
    """What the weights of a plain encoder config (``backbone``, ``weights``, ``weights_meta``) expect.
    A vidlstm checkpoint as ``weights``: its stored evaluation transform (its trunk is what gets reused)."""
    backbone, weights = encoder.get("backbone", "tiny"), encoder.get("weights")
    if weights is not None and is_local_file(weights):
        stored = _run_preprocessing(weights)
        if stored is not None:
            return stored
    return weights_preprocessing(backbone, weights, encoder.get("weights_meta"))


def _run_preprocessing(path: str) -> Preprocessing | None:
    """The evaluation preprocessing stored in vidlstm checkpoint ``path``, None when it is another file."""
    try:
        checkpoint = load_checkpoint(path)  # weights_only, every stored setting type-checked
    except CheckpointError:
        return None  # a plain state dict
    data = checkpoint["vidlstm"]["config"]["data"]
    transform = data.get("eval_transform") or {}
    defaults = Preprocessing()
    resize = transform.get("resize")
    return Preprocessing(tuple(transform.get("mean") or defaults.mean), tuple(transform.get("std") or defaults.std),
                         transform.get("interpolation") or defaults.interpolation,
                         resize / data["image_size"] if resize else 1.0, data["image_size"],
                         f"the vidlstm run {path} (its stored eval_transform)")


def resolve_preprocessing(cfg: DictConfig) -> Preprocessing:
    """Fill ``cfg.data``'s null preprocessing settings from the encoder's weights, in place (see the module
    docstring), log them in one line and return what the weights expect. Raises a one-line ValueError when
    ``data.image_size`` is null and the weights state no input size, or when the weights' interpolation is
    one video frames cannot use and the config does not set another."""
    prep = encoder_preprocessing(OmegaConf.to_container(cfg.model.encoder, resolve=True))
    data = cfg.data
    explicit: list[str] = []
    with open_dict(cfg):
        if data.get("image_size") is None:
            if prep.crop_size is None:
                raise ValueError(f"data.image_size=null takes the frame size from the encoder's weights, but "
                                 f"{prep.source} state none: set data.image_size")
            data.image_size = prep.crop_size
        nodes = {name: data.get(name) for name in ("train_transform", "eval_transform")}
        nodes = {name: node for name, node in nodes.items()
                 if isinstance(node, DictConfig) and node.get("_target_") in (TRAIN_TARGET, EVAL_TARGET)}
        unset = {name: [key for key in FILLED if node.get(key) is None] for name, node in nodes.items()}
        values = {"mean": list(prep.mean), "std": list(prep.std), "interpolation": prep.interpolation}
        for name, node in nodes.items():
            explicit += [f"{name}.{key}" for key in FILLED if key not in unset[name]]
            for key in unset[name]:
                if key == "interpolation" and prep.interpolation not in INTERPOLATIONS:
                    raise ValueError(f"interpolation {prep.interpolation!r} from {prep.source}: not one video "
                                     f"frames can use; set data.{name}.interpolation to one of {INTERPOLATIONS}")
                node[key] = values[key]
            if node.get("_target_") == EVAL_TARGET:
                if node.get("resize") is None:
                    node.resize = eval_resize(int(data.image_size), prep.resize_ratio)
                else:
                    explicit.append(f"{name}.resize")
    evaluation = nodes.get("eval_transform")
    shown = evaluation if evaluation is not None else next(iter(nodes.values()), None)
    native = f", weights trained at {prep.crop_size} px" if prep.crop_size else ""
    if shown is None:
        log.info("preprocessing: custom transforms (nothing filled in); the weights expect mean=%s std=%s "
                 "interpolation=%s, from %s", _short(prep.mean), _short(prep.std), prep.interpolation, prep.source)
    else:
        log.info("preprocessing: mean=%s std=%s interpolation=%s eval resize=%s crop=%s, from %s%s%s",
                 _short(shown.mean), _short(shown.std), shown.interpolation, shown.get("resize"), data.image_size,
                 prep.source, native, f"; set in the config: {', '.join(explicit)}" if explicit else "")
    return prep


def _short(values: Any) -> list[float]:
    return [round(float(v), 4) for v in values]
