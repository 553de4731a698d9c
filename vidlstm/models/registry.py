"""Networks from plain keyword arguments: the one way a model config (a Hydra config or a checkpoint's stored
copy) becomes modules, for training and inference alike.

An explicit registry of vidlstm classes, never an import by name. Every key is checked against the signature
of the class it configures and every value against that parameter's annotation; the Hydra ``_target_`` strings
that configs and older checkpoints hold are only compared with a literal table, so a config can name nothing
else to build or call.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from torch import nn

from vidlstm.models.cnn_lstm import CNNLSTM, TemporalHead
from vidlstm.models.encoders import FrameEncoder
from vidlstm.models.recurrent import VARIANT_DEFAULTS, LSTMVariants, RecurrentEncoder


class ModelConfigError(ValueError):
    """A model config the registry refuses; the message is one line: ``<where>: <key path>: <problem>``."""


MODEL_CLASSES: dict[str, type[nn.Module]] = {
    "CNNLSTM": CNNLSTM,
    "FrameEncoder": FrameEncoder,
    "TemporalHead": TemporalHead,
}
# The `_target_` spellings of shipped configs and existing checkpoints -> registry entry.
LEGACY_TARGETS: dict[str, str] = {
    "vidlstm.models.CNNLSTM": "CNNLSTM",
    "vidlstm.models.cnn_lstm.CNNLSTM": "CNNLSTM",
    "vidlstm.models.FrameEncoder": "FrameEncoder",
    "vidlstm.models.encoders.FrameEncoder": "FrameEncoder",
    "vidlstm.models.TemporalHead": "TemporalHead",
    "vidlstm.models.cnn_lstm.TemporalHead": "TemporalHead",
}
# Arguments the builder passes itself; a config never sets them.
FILLED_IN = frozenset({"num_classes", "input_size", "encoder", "head"})
# Sub-configs of the network config, each built by its registry entry.
PARTS = {"encoder": "FrameEncoder", "head": "TemporalHead"}
# Keys of a node that say how a run executes the network, not what it is: type-checked, never passed on.
RUN_SETTINGS: dict[str, dict[str, type]] = {"CNNLSTM": {"compile": bool}}


def _parameters(init: Callable[..., Any], skip: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
    """{name: evaluated annotation} of the named parameters of ``init`` (no self, no *args/**kwargs)."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    signature = inspect.signature(init, eval_str=True)
    return {name: p.annotation for name, p in signature.parameters.items()
            if name != "self" and p.kind in named and name not in skip}


def _head_parameters() -> dict[str, Any]:
    """TemporalHead's own arguments plus the ``**recurrent_options`` it forwards to RecurrentEncoder (whose
    ``**variants`` are LSTMVariants' options)."""
    own = _parameters(TemporalHead.__init__, FILLED_IN)
    # The head passes its own arguments on and always feeds (B, T, D), so batch_first is not an option.
    recurrent = _parameters(RecurrentEncoder.__init__, FILLED_IN | set(own) | {"batch_first"})
    variants = {k: v for k, v in _parameters(LSTMVariants.__init__).items() if k in VARIANT_DEFAULTS}
    return {**own, **recurrent, **variants}


ALLOWED_KEYS: dict[str, dict[str, Any]] = {
    "CNNLSTM": _parameters(CNNLSTM.__init__, FILLED_IN),
    "FrameEncoder": _parameters(FrameEncoder.__init__, FILLED_IN),
    "TemporalHead": _head_parameters(),
}


def _matches(value: Any, annotation: Any) -> bool:
    """Whether plain ``value`` suits ``annotation`` (bool is not an int; an int is a float)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(annotation))
    if annotation is None or annotation is type(None):
        return value is None
    if annotation is bool:
        return isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if annotation is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        item = (typing.get_args(annotation) or (None,))[0]
        return isinstance(value, list | tuple) and all(_matches(v, item) for v in value)
    return False


def _describe_type(annotation: Any) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " | ".join(_describe_type(arg) for arg in typing.get_args(annotation))
    if annotation is None or annotation is type(None):
        return "None"
    return getattr(annotation, "__name__", str(annotation))


def describe_value(value: Any) -> str:
    """A short, one-line description of a config value for error messages: its type, and scalars' values."""
    if value is None or isinstance(value, bool | int | float | str):
        return f"{type(value).__name__} {_short_repr(value, 40)}"
    return type(value).__name__


def _short_repr(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text[:limit] + "..." if len(text) > limit else text


def _error(where: str, path: str, problem: str) -> ModelConfigError:
    return ModelConfigError(f"{where}: {path}: {problem}")


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300]


def _check_node(node: Any, entry: str, path: str, where: str, parts: tuple[str, ...] = ()
                ) -> tuple[dict[str, Any], dict[str, Any]]:
    """(validated keyword arguments, raw sub-configs named in ``parts``) of one config node for ``entry``."""
    if not isinstance(node, Mapping):
        raise _error(where, path, f"expected a mapping of {entry} settings, got {describe_value(node)}")
    if "_target_" in node:
        target = node["_target_"]
        if not isinstance(target, str) or LEGACY_TARGETS.get(target) != entry:
            known = ", ".join(t for t, e in LEGACY_TARGETS.items() if e == entry)
            raise _error(where, f"{path}._target_", f"refuses to build {_short_repr(target)}: only {entry} is "
                                                    f"built here (accepted names: {known})")
    allowed = ALLOWED_KEYS[entry]
    kwargs: dict[str, Any] = {}
    children: dict[str, Any] = {}
    for key, value in node.items():
        # Odd keys (not strings, or with dots, spaces, newlines) are shown as reprs: messages stay one line.
        at = f"{path}.{key}" if isinstance(key, str) and key.isidentifier() else f"{path}[{_short_repr(key)}]"
        if key == "_target_":
            continue
        if key == "_partial_":
            if not isinstance(value, bool):
                raise _error(where, at, f"expected bool, got {describe_value(value)}")
        elif isinstance(key, str) and key.startswith("_"):
            raise _error(where, at, "not allowed (the only special keys are _target_ and _partial_)")
        elif key in parts:
            children[key] = value
        elif key in RUN_SETTINGS.get(entry, {}):
            if not isinstance(value, RUN_SETTINGS[entry][key]):
                raise _error(where, at, f"expected {RUN_SETTINGS[entry][key].__name__}, got {describe_value(value)}")
        elif key not in allowed:
            raise _error(where, at, "unknown key")
        elif not _matches(value, allowed[key]):
            raise _error(where, at, f"expected {_describe_type(allowed[key])}, got {describe_value(value)}")
        else:
            kwargs[key] = value
    return kwargs, children


def _validate_network(model_cfg: Any, where: str, encoder_required: bool) -> dict[str, Any]:
    kwargs, children = _check_node(model_cfg, "CNNLSTM", "model", where, tuple(PARTS))
    for part, entry in PARTS.items():
        if part in children:
            kwargs[part] = _check_node(children[part], entry, f"model.{part}", where)[0]
        elif part == "head" or encoder_required:
            raise _error(where, f"model.{part}", "missing")
    return kwargs


def validate_model_config(model_cfg: Mapping[str, Any], where: str = "model config") -> dict[str, Any]:
    """Checks a network config (keys ``encoder`` and ``head``, optional Hydra ``_target_``/``_partial_``) and
    returns it as plain keyword arguments: ``{"encoder": {...}, "head": {...}}`` without the Hydra keys (itself
    a valid config). Raises `ModelConfigError` naming ``where`` and the key path."""
    return _validate_network(model_cfg, where, encoder_required=True)


def _frame_encoder(kwargs: Mapping[str, Any], where: str) -> FrameEncoder:
    """``FrameEncoder(**kwargs)``; the constructor's own value checks come back as a `ModelConfigError`."""
    try:
        return FrameEncoder(**kwargs)
    except (ValueError, TypeError) as err:
        raise _error(where, "model.encoder", _one_line(err)) from err


def build_encoder(encoder_cfg: Mapping[str, Any], where: str = "model config") -> FrameEncoder:
    """The per-frame CNN, (B, T, 3, H, W) -> (B, T, out_dim), from an encoder config (`FrameEncoder`'s
    arguments, e.g. ``{"backbone": "tiny", "spatial_grid": 2}``). Raises `ModelConfigError`."""
    return _frame_encoder(_check_node(encoder_cfg, "FrameEncoder", "model.encoder", where)[0], where)


def build_network(model_cfg: Mapping[str, Any], num_classes: int, encoder: FrameEncoder | None = None,
                  where: str = "model config") -> CNNLSTM:
    """The CNN+LSTM, (B, T, 3, H, W) -> logits (B, num_classes), from a network config (``encoder`` and
    ``head`` sub-configs, as ``OmegaConf.to_container(cfg.model, resolve=True)`` gives them or as a
    checkpoint stores them). ``encoder``: an already built encoder to reuse instead of ``model_cfg["encoder"]``.
    Builds what ``hydra.utils.instantiate(cfg.model)(num_classes=num_classes)`` builds, less the run settings
    (`RUN_SETTINGS`: ``compile``, which the trainer applies). Raises
    `ModelConfigError` naming ``where`` and the key path."""
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise _error(where, "num_classes", f"expected a positive int, got {describe_value(num_classes)}")
    kwargs = _validate_network(model_cfg, where, encoder_required=encoder is None)
    encoder_kwargs, head_kwargs = kwargs.pop("encoder", None), kwargs.pop("head")
    if encoder is None:
        encoder = _frame_encoder(encoder_kwargs, where)
    head = functools.partial(TemporalHead, **head_kwargs)
    try:  # CNNLSTM calls head(input_size=..., num_classes=...): the head's own value checks run there
        return CNNLSTM(encoder, head, num_classes, **kwargs)
    except (ValueError, TypeError) as err:
        raise _error(where, "model.head", _one_line(err)) from err
