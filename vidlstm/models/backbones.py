"""Backbone trunks: an image network (torchvision, timm, or vidlstm's own "tiny") without its head, and the input
its weights expect.

A trunk maps frames (N, 3, H, W) to feature maps (N, C, h, w). For a torchvision model it is the model's own
traced graph up to the node where its global pooling starts (found in the graph, so nothing in between is
dropped: Inception's Mixed_7*, DenseNet's final ReLU, the input transform of Inception and GoogLeNet); for a
timm model it is ``forward_features``. Normalisation that the model's head applies to the pooled features
(ConvNeXt's LayerNorm) is kept as `Trunk.norm_pooled`, so globally pooled trunk features are the model's
penultimate activations (the input of its first fully connected layer). Hidden fully connected layers of a
head (MobileNetV3's 1024-unit layer, VGG's 4096-unit layers) belong to the classifier and are left out.
Transformers without a feature map (ViT: the class token) give one vector per frame as a (N, C, 1, 1) map.
"""

from __future__ import annotations

import functools
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import fx, nn
from torchvision.models import convnext as tv_convnext
from torchvision.models.feature_extraction import NodePathTracer, _set_default_tracer_kwargs

from vidlstm.data.transforms import IMAGENET_MEAN, IMAGENET_STD

log = logging.getLogger(__name__)
BACKBONES: dict[str, Callable[..., nn.Module]] = {}
# timm model names are identifiers with an optional ".tag"; prefixes such as "hf-hub:" or "local-dir:" would
# make timm fetch or read a config, which a backbone name (possibly read from a checkpoint) must never do.
_TIMM_NAME = re.compile(r"[A-Za-z0-9_]+(\.[A-Za-z0-9_]+)?")
# Children at which the trunks of vidlstm before whole-backbone trunks stopped (their checkpoints' key layout).
_LEGACY_CLASSIFIER_PARTS = {"avgpool", "fc", "classifier", "head", "heads", "flatten", "dropout", "AuxLogits"}
# Head parts between the trunk and a classifier's first Linear layer when the model has no global pooling (ViT).
_HEAD_MODULES = (nn.Linear, nn.Dropout, nn.Identity, nn.Flatten, nn.Tanh, nn.ReLU, nn.GELU, nn.Hardswish, nn.SiLU)


def register_backbone(name: str) -> Callable:
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        BACKBONES[name] = fn
        return fn

    return wrap


@register_backbone("tiny")
def tiny_cnn(widths: Sequence[int] = (16, 32, 64), weights: str | None = None) -> nn.Module:
    """A small conv net for low-resolution clips (the demo): one stride-2 stage per width, stride 2**len.
    (N, 3, H, W) -> (N, widths[-1], H / 2**len, W / 2**len)."""
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


def is_local_file(weights: str) -> bool:
    """Whether a ``weights`` setting names a file (by its suffix, or because it exists) rather than weights
    known by name ("DEFAULT", "IMAGENET1K_V1")."""
    return Path(weights).suffix in {".pt", ".pth", ".ckpt", ".bin"} or Path(weights).is_file()


class Trunk(nn.Module):
    """A backbone's feature part: frames (N, 3, H, W) -> feature maps (N, C, h, w).

    Attributes:
        vector: the network has no feature map before its head (ViT's class token): ``forward`` returns
            (N, C, 1, 1) and only global pooling (spatial_grid=1) makes sense.
        input_size: the one frame side the network accepts (ViT, MaxViT), else None.
        min_size: the smallest frame side it accepts.
    """

    vector: bool = False
    input_size: int | None = None
    min_size: int = 1

    def norm_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        """(N, C, g, g) pooled maps -> the same shape: the normalisation the model's head applies to its
        pooled features (ConvNeXt's LayerNorm), per grid cell; identity for most models."""
        return pooled

    def stages(self) -> list[nn.Module]:
        """The trunk's parameters in consecutive groups, input to output (freeze="all_but_last" trains the
        last N); see `stage_list`."""
        return stage_list(self)

    def check_frames(self, frames: torch.Tensor, name: str) -> None:
        """Raise a one-line ValueError when (N, 3, H, W) ``frames`` have a size the network cannot take."""
        h, w = frames.shape[-2:]
        if self.input_size is not None and (h, w) != (self.input_size, self.input_size):
            raise ValueError(f"backbone {name!r}: frames are {h}x{w} but it takes only {self.input_size}x"
                             f"{self.input_size} (set data.image_size={self.input_size})")
        if min(h, w) < self.min_size:
            raise ValueError(f"backbone {name!r}: frames are {h}x{w}, smaller than the {self.min_size}x"
                             f"{self.min_size} it needs (set data.image_size >= {self.min_size})")


def _has_params(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _size(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _norm_only(module: nn.Module) -> bool:
    """A normalisation layer alone (DenseNet's norm5, Swin's final norm): it joins the stage before it."""
    return isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, ChannelNorm))


def stage_list(module: nn.Module) -> list[nn.Module]:
    """``module``'s parameters in consecutive stages, input to output (freeze="all_but_last" trains the last
    N): its children that hold parameters; where these are one block stack (alone, or after a smaller stem:
    RegNet's trunk_output, ViT's encoder, Swin's and MobileNet's features) the stack's children instead,
    recursively; a normalisation layer alone joins the stage before it. Parameters held by a container
    itself (ViT's class token) belong to no stage (and so are frozen with all_but_last)."""
    lead: list[nn.Module] = []
    kids = [c for c in module.children() if _has_params(c)]
    trail: list[nn.Module] = []
    while True:
        core = [c for c in kids if not _norm_only(c)]
        stack = core[-1] if core and (len(core) == 1 or (len(core) == 2 and _size(core[1]) > _size(core[0]))) \
            else None
        inner = [c for c in stack.children() if _has_params(c)] if stack is not None else []
        if not any(not _norm_only(c) for c in inner):
            break
        at = kids.index(stack)
        lead, trail = lead + kids[:at], kids[at + 1:] + trail
        kids = inner
    stages: list[nn.Module] = []
    for part in lead + kids + trail:
        if stages and _norm_only(part):
            stages[-1] = _joined(stages[-1], part)
        else:
            stages.append(part)
    return stages or [module]


def _joined(stage: nn.Module, extra: nn.Module) -> nn.Module:
    """One stage made of ``stage`` and ``extra`` (a view: the modules stay where they are)."""
    parts = list(stage) if isinstance(stage, _Stage) else [stage]
    return _Stage([*parts, extra])


class _Stage(nn.ModuleList):
    """Modules counted as one stage (a view for freezing; never registered in the network)."""


class ChannelNorm(nn.Module):
    """A head's LayerNorm over channels, applied to every cell of a pooled (N, C, g, g) map."""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm
        self.channels_first = isinstance(norm, tv_convnext.LayerNorm2d)  # it permutes (N, C, h, w) itself

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_first:
            return self.norm(x)
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


# --- torchvision ---

def torchvision_weights(name: str, value: str | None) -> Any:
    """The member of ``name``'s torchvision weights enum that ``value`` names ("DEFAULT", "IMAGENET1K_V1" or
    "ResNet18_Weights.IMAGENET1K_V1"); the DEFAULT member for None. A lookup in a fixed table: nothing is
    downloaded. Raises a one-line ValueError for an unknown name."""
    enum = torchvision.models.get_model_weights(name)
    if value is None:
        return enum.DEFAULT
    try:
        return enum.verify(value)
    except (KeyError, ValueError, TypeError) as err:
        raise ValueError(f"weights {value!r}: not weights of torchvision {name!r} (known: "
                         f"{', '.join(['DEFAULT', *(m.name for m in enum)])})") from err


def rebuild_weights_meta(backbone: str, weights: str | None, weights_meta: str | None) -> str | None:
    """The ``weights_meta`` that rebuilds the same network without reading or fetching ``weights``: as given,
    or the torchvision weights name ``weights`` holds (e.g. "DEFAULT"); a file path is left alone (and never
    touched). Used when a checkpoint's network is rebuilt with ``weights=None``."""
    if weights_meta is not None or weights is None or backbone in BACKBONES or backbone.startswith("timm:"):
        return weights_meta
    if backbone not in torchvision.models.list_models(module=torchvision.models):
        return weights_meta
    try:
        return torchvision_weights(backbone, weights).name
    except ValueError:  # a path, not a weights name
        return weights_meta


def _architecture_kwargs(name: str, arch: Any) -> dict[str, Any]:
    """What torchvision's builders set when they load pretrained weights (torchvision/models/inception.py,
    googlenet.py, vision_transformer.py, maxvit.py): the network a weights file (or a rebuilt checkpoint)
    runs in is the one those weights were trained in, also with random init, so that it never depends on
    whether weights are loaded."""
    family = torchvision.models.get_model_builder(name).__module__.rsplit(".", 1)[-1]
    if family in ("inception", "googlenet"):
        return {"transform_input": True, "aux_logits": True}
    if family == "vision_transformer":
        return {"image_size": arch.meta["min_size"][0]}
    if family == "maxvit":
        return {"input_size": arch.meta["min_size"]}
    return {}


def _main_input(node: fx.Node) -> fx.Node | None:
    """The first argument of ``node`` that is a graph node (the tensor it transforms)."""
    return next((a for a in node.args if isinstance(a, fx.Node)), None)


def _is_global_pool(node: fx.Node, model: nn.Module) -> bool:
    if node.op == "call_module":
        return isinstance(model.get_submodule(node.target), nn.AdaptiveAvgPool2d)
    if node.op == "call_function":
        return node.target in (F.adaptive_avg_pool2d, torch.mean)
    return node.op == "call_method" and node.target == "mean"


def _owning_module(model: nn.Module, qualname: str) -> nn.Module | None:
    """The deepest module whose path prefixes ``qualname`` (a traced node's name)."""
    parts = qualname.split(".")
    for end in range(len(parts), 0, -1):
        try:
            return model.get_submodule(".".join(parts[:end]))
        except AttributeError:
            continue
    return None


@dataclass
class _Cut:
    node: fx.Node                   # the trunk's output
    vector: bool                    # a (N, C) vector (no global pooling in the model)
    head_norms: list[str]           # module paths of LayerNorms between the pooling and the first Linear


def _find_cut(name: str, model: nn.Module, graph: fx.Graph, qualnames: Mapping[fx.Node, str]) -> _Cut:
    """Where the trunk of traced ``model`` ends: the input of its head, i.e. of the global pooling nearest the
    output on the main path (or of the top-level child holding it: SqueezeNet's and MaxViT's classifier),
    else (no pooling: ViT) the input of the classifier's first fully connected layer."""
    output = next(n for n in graph.nodes if n.op == "output")
    chain: list[fx.Node] = []
    node = _main_input(output)
    while node is not None and node.op != "placeholder" and not _is_global_pool(node, model):
        chain.append(node)
        node = _main_input(node)
    if node is None or node.op == "placeholder":
        for node in chain:  # no pooling: skip the head's Linear / dropout / activation / flatten nodes
            module = model.get_submodule(node.target) if node.op == "call_module" else None
            if isinstance(module, _HEAD_MODULES) or (node.op != "call_module" and "flatten" in str(node.target)):
                continue
            return _Cut(node, vector=True, head_norms=[])
        raise ValueError(f"backbone {name!r}: not supported: no feature map or vector found before its classifier")
    pool, start = node, node
    top = qualnames.get(pool, "").split(".")[0]
    if "." in qualnames.get(pool, ""):  # the pooling sits inside a child (a classifier): the trunk ends before it
        start = next(n for n in graph.nodes if qualnames.get(n, "").split(".")[0] == top)
    cut = _main_input(start)
    norms: list[str] = []
    for node in reversed(chain):  # from the pooling towards the output, up to the first Linear
        module = _owning_module(model, qualnames.get(node, ""))
        if isinstance(module, nn.Linear) or (node.op == "call_function" and node.target is F.linear):
            break
        path = next((p for p, m in model.named_modules() if m is module), None)
        if isinstance(module, nn.LayerNorm) and path not in norms:
            norms.append(path)
    return _Cut(cut, vector=False, head_norms=norms)


def _trace(model: nn.Module) -> tuple[fx.Graph, dict[fx.Node, str]]:
    """The model's graph as torchvision's feature extractor traces it, with each node's qualified name."""
    tracer = NodePathTracer(**_set_default_tracer_kwargs(None))
    graph = tracer.trace(model)
    return graph, dict(tracer.node_to_qualname)


def _cut_graph(name: str, model: nn.Module) -> tuple[fx.GraphModule, _Cut, dict[fx.Node, str]]:
    """``model``'s evaluation-mode graph ending at the trunk's output, as a module sharing the model's layers
    (what ``create_feature_extractor`` builds, as one graph rather than a train/eval pair, so the trunk keeps
    its modes through ``copy.deepcopy`` and pickling). Layers (dropout, stochastic depth, BatchNorm) follow
    the trunk's mode as usual; only a functional call given ``training=self.training`` keeps its
    evaluation-mode value, which a warning names when it matters (a dropout probability above 0)."""
    model.eval()
    graph, qualnames = _trace(model)
    cut = _find_cut(name, model, graph, qualnames)
    output = next(n for n in graph.nodes if n.op == "output")
    output.args = (cut.node,)
    body = fx.GraphModule(model, graph, class_name=f"{type(model).__name__}Trunk")
    body.graph.eliminate_dead_code()
    body.delete_all_unused_submodules()
    body.recompile()
    for node in body.graph.nodes:
        rates = [v for k, v in node.kwargs.items() if "dropout" in k or k == "p"]
        if node.kwargs.get("training") is False and any(isinstance(r, float) and r > 0 for r in rates):
            log.warning("backbone %r: %s (dropout %s) inside the trunk stays in evaluation mode while training",
                        name, qualnames.get(node, node.name), rates)
    return body, cut, qualnames


def _call_hook(method: str) -> Callable[..., None]:
    """A load_state_dict pre-hook calling ``module.<method>(state_dict, prefix, ...)``: a plain function, so
    the module it is registered on can be copied and pickled with it."""
    return functools.partial(_run_hook, method)


def _run_hook(method: str, module: nn.Module, *args: Any) -> None:
    getattr(module, method)(*args)


class TorchvisionTrunk(Trunk):
    """A torchvision classification model's traced graph up to its global pooling (or class token), plus the
    LayerNorm its head applies to pooled features. State-dict keys: ``body.<the model's own names>`` and
    ``head_norm.norm.*``; checkpoints of the old layout (``0.weight``, ... of the first children) are mapped
    when the old trunk computed what this one computes."""

    def __init__(self, name: str, model: nn.Module, min_size: int = 1, input_size: int | None = None) -> None:
        super().__init__()
        body, cut, qualnames = _cut_graph(name, model)
        self.name, self.body, self.vector = name, body, cut.vector
        if len(cut.head_norms) > 1:
            raise ValueError(f"backbone {name!r}: not supported: its head normalises pooled features "
                             f"{len(cut.head_norms)} times")
        self._head_norm_path = cut.head_norms[0] if cut.head_norms else ""
        self.head_norm = ChannelNorm(model.get_submodule(cut.head_norms[0])) if cut.head_norms else None
        self.min_size, self.input_size = min_size, input_size
        self._legacy = self._legacy_layout(model, qualnames)
        self.register_load_state_dict_pre_hook(_call_hook("_map_legacy_keys"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.body(x)
        return features[:, :, None, None] if self.vector else features

    def norm_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head_norm(pooled) if self.head_norm is not None else pooled

    def stages(self) -> list[nn.Module]:
        stages = stage_list(self.body)
        return [*stages[:-1], _joined(stages[-1], self.head_norm)] if self.head_norm is not None else stages

    def _legacy_layout(self, model: nn.Module, qualnames: Mapping[fx.Node, str]) -> tuple[dict[str, str], bool]:
        """(old key prefix -> new key prefix, whether the old trunk computed what this one does). The old
        trunk was the model's children before the first classifier-like one, as an nn.Sequential (or that one
        child alone); it computed the same when every node of this trunk's graph runs inside those children."""
        names = []
        for child_name, _ in model.named_children():
            if child_name in _LEGACY_CLASSIFIER_PARTS:
                break
            names.append(child_name)
        mapping = ({"": f"body.{names[0]}."} if len(names) == 1
                   else {f"{i}.": f"body.{child}." for i, child in enumerate(names)})
        nodes = [n for n in self.body.graph.nodes if n.op not in ("placeholder", "output")]
        same = (self.head_norm is None and not self.vector
                and all(qualnames.get(n, "").split(".")[0] in names for n in nodes))
        return mapping, same

    def _map_legacy_keys(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict, strict: bool,
                         missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        mine = [k for k in state_dict if k.startswith(prefix)]
        old = [k for k in mine if not k[len(prefix):].startswith(("body.", "head_norm."))]
        if not old:
            return
        mapping, same = self._legacy
        if not same:
            error_msgs.append(f"backbone {self.name!r}: these weights have the trunk layout of vidlstm before "
                              "whole-backbone trunks, which left part of this network out: retrain")
            return
        for key in old:
            rest = key[len(prefix):]
            old_prefix = next((p for p in mapping if rest.startswith(p)), None)
            if old_prefix is not None:
                state_dict[prefix + mapping[old_prefix] + rest[len(old_prefix):]] = state_dict.pop(key)

    def load_model_weights(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Load the trunk's tensors from a full classification model's ``state`` (classifier and auxiliary
        heads are ignored); a one-line ValueError names what is missing or does not fit."""
        wanted = {f"body.{k}": k for k in self.body.state_dict()}
        if self.head_norm is not None:
            wanted.update({f"head_norm.norm.{k}": f"{self._head_norm_path}.{k}"
                           for k in self.head_norm.norm.state_dict()})
        missing = [k for k in wanted.values() if k not in state]
        if missing:
            raise ValueError(f"{source}: not a {self.name} state dict: {len(missing)} of the trunk's "
                             f"{len(wanted)} tensors are missing (e.g. {missing[0]!r})")
        try:
            self.load_state_dict({key: state[model_key] for key, model_key in wanted.items()})
        except RuntimeError as err:
            raise ValueError(f"{source}: does not fit {self.name} ({' '.join(str(err).split())[:200]})") from err


def torchvision_trunk(name: str, weights: str | None = None, weights_meta: str | None = None) -> TorchvisionTrunk:
    """The feature part of ``torchvision.models.get_model(name)`` (see the module docstring).

    ``weights``: None (random init), a torchvision weights name such as "DEFAULT" (downloads on first use), or
    a local file with the full classification model's state dict (for machines without internet).
    ``weights_meta``: the torchvision weights (enum member name) the network is built for (e.g. Inception's
    input transform, ViT's image size) when ``weights`` is a file or None; None: the model's DEFAULT weights.
    """
    local = weights is not None and is_local_file(weights)
    named = weights is not None and not local
    arch = torchvision_weights(name, weights if named else weights_meta)
    kwargs = _architecture_kwargs(name, arch)
    if "transform_input" in kwargs and not named:
        kwargs["init_weights"] = not local  # skip the slow init when weights are loaded; silences a warning
    model = torchvision.models.get_model(name, weights=arch if named else None, **({} if named else kwargs))
    exact = kwargs.get("image_size") or (kwargs["input_size"][0] if "input_size" in kwargs else None)
    trunk = TorchvisionTrunk(name, model, min_size=max(arch.meta.get("min_size", (1, 1))), input_size=exact)
    trunk.arch = f"{type(arch).__name__}.{arch.name}"
    if local:
        trunk.load_model_weights(load_local_state_dict(weights), str(weights))
    return trunk.eval()


# --- timm ---

class TimmTrunk(Trunk):
    """A timm model's ``forward_features`` (NHWC outputs permuted to NCHW), its classifier removed; models
    whose features are tokens (ViT) give ``forward_head(..., pre_logits=True)`` as a (N, C, 1, 1) map. The
    head's norm (NormMlpClassifierHead: ConvNeXt) is `norm_pooled`. State-dict keys: ``model.*``."""

    def __init__(self, name: str, model: nn.Module) -> None:
        super().__init__()
        self.name = name
        before = set(model.state_dict())
        model.reset_classifier(0)
        self._classifier_keys = sorted(before - set(model.state_dict()))
        self.model = model
        cfg = getattr(model, "pretrained_cfg", None) or {}
        side = int(cfg.get("input_size", (3, 224, 224))[-1])
        self.input_size = side if cfg.get("fixed_input_size") else None
        self.min_size = int((cfg.get("min_input_size") or (3, 1, 1))[-1])
        self.nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
        probe = self.input_size or max(64, self.min_size)
        with torch.no_grad():
            was = model.training
            features = model.eval().forward_features(torch.zeros(1, 3, probe, probe))
            model.train(was)
        self.vector = features.dim() != 4
        norm = getattr(getattr(model, "head", None), "norm", None)
        self._has_norm = not self.vector and isinstance(norm, nn.Module) and not isinstance(norm, nn.Identity)
        self.register_load_state_dict_pre_hook(_call_hook("_drop_old_classifier"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.model.forward_features(x)
        if self.vector:
            return self.model.forward_head(features, pre_logits=True)[:, :, None, None]
        return features.permute(0, 3, 1, 2) if self.nhwc else features

    def norm_pooled(self, pooled: torch.Tensor) -> torch.Tensor:
        if not self._has_norm:
            return pooled
        x = pooled.permute(0, 2, 3, 1) if self.nhwc else pooled
        x = self.model.head.norm(x)
        return x.permute(0, 3, 1, 2) if self.nhwc else x

    def stages(self) -> list[nn.Module]:
        """Groups ending at each of timm's ``feature_info`` modules; parts after the last join the last."""
        names = [info["module"] for info in getattr(self.model, "feature_info", None) or []]
        units = list(_units(self.model, set(names)))
        stages, current = [], []
        for path, module in units:
            current.append(module)
            if path in names:
                stages.append(current)
                current = []
        if current and stages:
            stages[-1] += current
        groups: list[nn.Module] = [_Stage(g) for g in stages if any(_has_params(m) for m in g)]
        return groups or stage_list(self.model)

    def _drop_old_classifier(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict, strict: bool,
                             missing_keys: list[str], unexpected_keys: list[str], error_msgs: list[str]) -> None:
        """Checkpoints of vidlstm before whole-backbone trunks kept timm's classifier: its keys are dropped
        where the old trunk computed what this one does (NCHW features, no head norm)."""
        old = [prefix + "model." + k for k in self._classifier_keys if prefix + "model." + k in state_dict]
        if not old:
            return
        if self.nhwc or self._has_norm or self.vector:
            error_msgs.append(f"backbone 'timm:{self.name}': these weights have the trunk layout of vidlstm before "
                              "whole-backbone trunks, which computed other features for this model: retrain")
            return
        for key in old:
            del state_dict[key]


def _units(module: nn.Module, marks: set[str], prefix: str = "") -> Iterator[tuple[str, nn.Module]]:
    """``module``'s submodules in order, expanded only where they hold a module named in ``marks``."""
    for name, child in module.named_children():
        path = f"{prefix}{name}"
        if path not in marks and any(m.startswith(path + ".") for m in marks):
            yield from _units(child, marks, path + ".")
        else:
            yield path, child


def _import_timm(backbone: str) -> Any:
    try:
        import timm
    except ImportError as err:
        raise ImportError(f"backbone {backbone!r} needs timm: pip install -e '.[timm]'") from err
    return timm


def timm_trunk(name: str, weights: str | None = None) -> TimmTrunk:
    """``timm.create_model(name)``'s feature trunk (see `TimmTrunk`; needs ``pip install timm``).
    ``weights``: None, "DEFAULT" (timm's pretrained weights for the name's tag, downloaded) or a local
    state-dict file of the full model (its classifier is ignored)."""
    timm = _import_timm(f"timm:{name}")
    local = weights is not None and is_local_file(weights)
    model = timm.create_model(name, pretrained=weights is not None and not local)
    trunk = TimmTrunk(name, model)
    if local:
        state = {k: v for k, v in load_local_state_dict(weights).items() if k not in trunk._classifier_keys}
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{weights}: does not fit timm:{name} ({' '.join(str(err).split())[:200]})") from err
    return trunk.eval()


def build_trunk(backbone: str, weights: str | None = None, weights_meta: str | None = None) -> nn.Module:
    """"tiny" (or another registered name), "timm:<name>", or any torchvision classification model name.
    ``weights_meta`` (torchvision only) names the weights the network is built for; see `torchvision_trunk`."""
    if weights_meta is not None and (backbone in BACKBONES or backbone.startswith("timm:")):
        raise ValueError(f"weights_meta {weights_meta!r}: names torchvision weights, not ones of {backbone!r} "
                         "(a timm model's weights are named by its tag, timm:<model>.<tag>)")
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
    return torchvision_trunk(backbone, weights, weights_meta)


# --- what the weights expect ---

@dataclass(frozen=True)
class Preprocessing:
    """The input a backbone's weights expect.

    mean / std: per-channel (R, G, B) normalisation of [0, 1] pixels.
    interpolation: resampling for resizes, as the metadata names it (e.g. "bilinear", "bicubic").
    resize_ratio: evaluation resizes the short side to ``round(crop * resize_ratio)`` before the centre crop
        (torchvision: resize_size / crop_size, e.g. 256 / 224; timm: 1 / crop_pct).
    crop_size: the frame side the weights were trained at (None: not stated).
    source: where these values come from, for the run's log.
    """

    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    resize_ratio: float = 1.0
    crop_size: int | None = None
    source: str = "ImageNet defaults"


def weights_preprocessing(backbone: str, weights: str | None = None, weights_meta: str | None = None
                          ) -> Preprocessing:
    """What the weights of an encoder config expect, read from metadata without downloading anything.

    torchvision: the weights enum member's ``transforms()`` (a local file: the member ``weights_meta`` names,
    else the model's DEFAULT weights, which is what ``weights="DEFAULT"`` saved on another machine holds).
    timm: the name's ``pretrained_cfg`` (the name's tag names the weights). "tiny" and random init (weights
    None): ImageNet mean/std, bilinear, no resize margin (today's defaults).
    """
    if weights is None:
        return Preprocessing(source="ImageNet defaults (no pretrained weights)")
    if backbone in BACKBONES:
        return Preprocessing(source=f"ImageNet defaults ({backbone!r} has no pretrained statistics)")
    local = is_local_file(weights)
    if backbone.startswith("timm:"):
        return _timm_preprocessing(backbone.removeprefix("timm:"), local)
    arch = torchvision_weights(backbone, weights_meta if local else weights)
    t = arch.transforms()
    crop, resize = int(t.crop_size[0]), int(t.resize_size[0])
    note = ""
    if local:
        note = (" (named by model.encoder.weights_meta for the local file)" if weights_meta is not None else
                " (the DEFAULT weights, assumed for the local file: model.encoder.weights_meta names others)")
    return Preprocessing(tuple(t.mean), tuple(t.std), t.interpolation.value, resize / crop, crop,
                         f"torchvision {type(arch).__name__}.{arch.name}{note}")


def _timm_preprocessing(name: str, local: bool) -> Preprocessing:
    timm = _import_timm(f"timm:{name}")
    cfg = timm.models.get_pretrained_cfg(name)
    if cfg is None:
        raise ValueError(f"backbone 'timm:{name}': timm knows no pretrained weights of that name")
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    return Preprocessing(tuple(cfg.mean), tuple(cfg.std), cfg.interpolation,
                         1.0 / (cfg.crop_pct or 0.875), int(cfg.input_size[-1]),
                         f"timm {tag} pretrained_cfg" + (" (the local file is taken to hold these weights)" if local
                                                         else ""))


def eval_resize(image_size: int, ratio: float) -> int:
    """The short side evaluation resizes to before centre-cropping ``image_size``."""
    return max(image_size, math.floor(image_size * ratio + 0.5))
