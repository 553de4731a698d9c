"""A checkpoint is data: the network is rebuilt from validated plain settings through vidlstm's registry. A
checkpoint that names code, holds unknown keys or wrongly typed values, is damaged, or is not a vidlstm
checkpoint fails with one line naming the file and the key, and nothing it names runs. Every shipped
encoder x head config builds through the registry exactly what Hydra's instantiate builds."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vidlstm.common.checkpoint import CheckpointError, build_net, load_checkpoint
from vidlstm.inference import Predictor
from vidlstm.models.registry import (
    RUN_SETTINGS,
    ModelConfigError,
    build_encoder,
    build_network,
    validate_model_config,
)

CLASSES = ["dark", "bright", "grey"]
DATA = {
    "image_size": 32, "num_frames": 4, "batch_size": 8,
    "eval_transform": {"_target_": "vidlstm.data.transforms.eval_transform", "_partial_": True, "resize": None,
                       "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
}
# As conf/model/cnn_lstm.yaml (encoder tiny, head lstm) composes it, smaller; the legacy spelling of the targets.
MODEL = {
    "_target_": "vidlstm.models.CNNLSTM", "_partial_": True,
    "encoder": {"_target_": "vidlstm.models.FrameEncoder", "backbone": "tiny", "weights": None, "channels_last": True,
                "spatial_grid": 2, "freeze": "none", "trainable_stages": 1, "freeze_bn": False, "chunk_size": 0,
                "projection_size": 0, "projection_dropout": 0.0},
    "head": {"_target_": "vidlstm.models.TemporalHead", "_partial_": True, "cell": "lstm", "hidden_size": 16,
             "num_layers": 1, "bidirectional": True, "dropout": 0.0, "pooling": "attention", "attention_size": 8,
             "classifier_dropout": 0.2, "proj_size": 0, "reverse": False, "forget_bias": None,
             "implementation": "auto", "peephole": False, "cell_clip": None, "zoneout_cell": 0.0},
}
LONG_SPELLING = {"vidlstm.models.CNNLSTM": "vidlstm.models.cnn_lstm.CNNLSTM",
                 "vidlstm.models.FrameEncoder": "vidlstm.models.encoders.FrameEncoder",
                 "vidlstm.models.TemporalHead": "vidlstm.models.cnn_lstm.TemporalHead"}


class _Payload:
    """Unpickling this creates the directory ``marker``: if it exists, something a file named has run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return os.makedirs, (str(self.marker),)


@pytest.fixture
def payload(tmp_path: Path) -> tuple[Path, Path]:
    """(a torch file whose unpickling creates the marker, the marker path), the payload proven to work."""
    evil, marker = tmp_path / "payload.pt", tmp_path / "ran"
    torch.save(_Payload(marker), evil)
    torch.load(evil, weights_only=False)
    assert marker.is_dir(), "the payload must run when unpickled without weights_only"
    marker.rmdir()
    return evil, marker


def _net(model: dict[str, Any]) -> torch.nn.Module:
    """The network as `hydra.utils.instantiate` built it before the registry existed."""
    return instantiate(copy.deepcopy(model))(num_classes=len(CLASSES)).eval()


def _checkpoint(model: dict[str, Any], net: torch.nn.Module) -> dict[str, Any]:
    """What training saves: Lightning's ``net.``-prefixed weights and the run's plain data/model config."""
    return {"epoch": 3, "state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
            "vidlstm": {"class_names": list(CLASSES), "config": {"data": copy.deepcopy(DATA),
                                                                  "model": copy.deepcopy(model)}}}


@pytest.fixture(scope="module")
def original() -> tuple[torch.nn.Module, dict[str, Any]]:
    torch.manual_seed(0)
    net = _net(MODEL)
    return net, _checkpoint(MODEL, net)


def _fill(node: Any, evil: Path, marker: Path) -> Any:
    if isinstance(node, dict):
        return {k: _fill(v, evil, marker) for k, v in node.items()}
    if isinstance(node, list):
        return [_fill(v, evil, marker) for v in node]
    return node.replace("EVIL", str(evil)).replace("MARKER", str(marker)) if isinstance(node, str) else node


def _hostile(original: dict[str, Any], path: tuple[str | int, ...], value: Any, evil: Path, marker: Path,
             out: Path) -> Path:
    """``original`` with ``config[path] = value`` (EVIL / MARKER in strings name the payload and the marker)."""
    checkpoint = copy.deepcopy(original)
    node = checkpoint["vidlstm"] if path[0] == "class_names" else checkpoint["vidlstm"]["config"]
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = _fill(value, evil, marker)
    torch.save(checkpoint, out)
    return out


def _assert_refused(path: Path, marker: Path, problem: str, load: Callable[[Path], Any] | None = None) -> str:
    with pytest.raises(CheckpointError) as info:
        (load or (lambda p: Predictor.from_checkpoint(p, device="cpu")))(path)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith(f"{path}: "), message
    assert re.search(problem, message), message
    assert not marker.exists(), "something named in the checkpoint ran"
    return message


GADGET = {"_target_": "vidlstm.data.video.torch.load", "_args_": ["EVIL"], "weights_only": False}
MODEL_GADGET = {**GADGET, "_target_": "vidlstm.models.encoders.torch.load"}  # passes a "vidlstm." prefix check

HOSTILE = {
    # (a) a torch.load gadget reached through an attribute path, nested under model.head
    "gadget_as_head_value": (("model", "head", "hidden_size"), GADGET,
                             r"model\.head\.hidden_size: expected int, got dict"),
    "gadget_under_new_head_key": (("model", "head", "payload"), MODEL_GADGET, r"model\.head\.payload: unknown key"),
    "gadget_as_head": (("model", "head"), MODEL_GADGET,
                       r"model\.head\._target_: refuses to build 'vidlstm\.models\.encoders\.torch\.load'"),
    "gadget_as_encoder": (("model", "encoder"), GADGET,
                          r"model\.encoder\._target_: refuses to build 'vidlstm\.data\.video\.torch\.load'"),
    "head_args": (("model", "head", "_args_"), ["EVIL"], r"model\.head\._args_: not allowed"),
    # (b) foreign targets, top level and nested
    "os_system_top": (("model", "_target_"), "os.system", r"model\._target_: refuses to build 'os\.system'"),
    "os_system_model": (("model",), {"_target_": "os.system", "_args_": ["mkdir MARKER"]},
                        r"model\._target_: refuses to build 'os\.system'"),
    "eval_encoder": (("model", "encoder"),
                     {"_target_": "builtins.eval", "_args_": ["__import__('os').makedirs('MARKER')"]},
                     r"model\.encoder\._target_: refuses to build 'builtins\.eval'"),
    "os_system_in_cell": (("model", "head", "cell"), {"_target_": "os.system", "_args_": ["mkdir MARKER"]},
                          r"model\.head\.cell: expected str \| None, got dict"),
    "vidlstm_class_in_wrong_place": (("model", "head", "_target_"), "vidlstm.models.CNNLSTM",
                                     r"model\.head\._target_: refuses to build 'vidlstm\.models\.CNNLSTM'"),
    "recursive_flag": (("model", "_recursive_"), False, r"model\._recursive_: not allowed"),
    "target_not_a_string": (("model", "encoder", "_target_"), ["os.system"],
                            r"model\.encoder\._target_: refuses to build \['os\.system'\]"),
    # backbone names that make timm read a directory or fetch from a hub, and names that are no model at all
    "timm_local_dir": (("model", "encoder", "backbone"), "timm:local-dir:EVIL",
                       r"model\.encoder: backbone 'timm:local-dir:.*not a timm model name"),
    "timm_hub": (("model", "encoder", "backbone"), "timm:hf-hub:someone/evil",
                 r"model\.encoder: backbone 'timm:hf-hub:someone/evil': not a timm model name"),
    "backbone_not_a_model": (("model", "encoder", "backbone"), "os.system",
                             r"model\.encoder: backbone 'os\.system': not a torchvision classification model"),
    "huge_probe": (("model", "encoder", "probe_size"), 10**6, r"model\.encoder: probe_size must be in \[16, 1024\]"),
    "weights_meta_path": (("model", "encoder", "weights_meta"), "EVIL",
                          r"model\.encoder: weights_meta '.*payload\.pt': names torchvision weights, not ones of "
                          r"'tiny'"),
    "interpolation_code": (("data", "eval_transform", "interpolation"), "vidlstm.data.video.torch.load",
                           r"data\.eval_transform\.interpolation: expected one of \('bilinear'"),
    # (c) unknown keys
    "unknown_head_key": (("model", "head", "foo"), 1, r"model\.head\.foo: unknown key"),
    "unknown_encoder_key": (("model", "encoder", "weights_path"), "EVIL", r"model\.encoder\.weights_path: unknown key"),
    "unknown_model_key": (("model", "extra"), {}, r"model\.extra: unknown key"),
    "not_a_head_option": (("model", "head", "batch_first"), False, r"model\.head\.batch_first: unknown key"),
    "multi_line_key": (("model", "head", "evil\nkey"), 1, r"model\.head\['evil\\nkey'\]: unknown key"),
    "int_key": (("model", "encoder", 3), 1, r"model\.encoder\[3\]: unknown key"),
    # (d) wrong types
    "str_for_int": (("model", "head", "hidden_size"), "128", r"model\.head\.hidden_size: expected int, got str '128'"),
    "bool_for_int": (("model", "head", "num_layers"), True, r"model\.head\.num_layers: expected int, got bool True"),
    "list_for_str": (("model", "head", "cell"), ["lstm"], r"model\.head\.cell: expected str \| None, got list"),
    "dict_for_float": (("model", "head", "dropout"), {"p": 0.1}, r"model\.head\.dropout: expected float, got dict"),
    "none_for_str": (("model", "encoder", "backbone"), None, r"model\.encoder\.backbone: expected str, got NoneType"),
    "str_for_float_or_none": (("model", "head", "forget_bias"), "1.0",
                              r"model\.head\.forget_bias: expected float \| None, got str"),
    "str_for_partial": (("model", "head", "_partial_"), "yes", r"model\.head\._partial_: expected bool, got str"),
    "bad_value": (("model", "head", "pooling"), "median", r"model\.head: unknown temporal pooling 'median'"),
    "model_not_a_mapping": (("model",), ["os.system"], r"model: expected a mapping of CNNLSTM settings, got list"),
    "head_missing": (("model", "head"), None, r"model\.head: expected a mapping of TemporalHead settings"),
    "image_size_str": (("data", "image_size"), "32", r"data\.image_size: expected a positive int, got str '32'"),
    "num_frames_bool": (("data", "num_frames"), True, r"data\.num_frames: expected a positive int, got bool"),
    "mean_str": (("data", "eval_transform", "mean"), "imagenet", r"data\.eval_transform\.mean: expected 3 numbers"),
    "resize_list": (("data", "eval_transform", "resize"), [32], r"data\.eval_transform\.resize: expected a positive"),
    "transform_gadget": (("data", "eval_transform"), "EVIL", r"data\.eval_transform: expected a mapping, got str"),
    "class_names_ints": (("class_names",), [1, 2, 3], r"class_names: expected a non-empty list of str"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_or_malformed_config_is_refused_and_nothing_runs(case: str, original, payload, tmp_path: Path
                                                                  ) -> None:
    key_path, value, problem = HOSTILE[case]
    evil, marker = payload
    path = _hostile(original[1], key_path, value, evil, marker, tmp_path / "best.ckpt")
    _assert_refused(path, marker, problem)


def test_every_config_error_is_caught_at_load_time_too(original, payload, tmp_path: Path) -> None:
    """`load_checkpoint` alone refuses a checkpoint that names code, before anything is built."""
    evil, marker = payload
    path = _hostile(original[1], ("model", "head", "hidden_size"), GADGET, evil, marker, tmp_path / "best.ckpt")
    _assert_refused(path, marker, r"model\.head\.hidden_size: expected int", load=load_checkpoint)


def test_payload_file_given_as_checkpoint_is_not_unpickled(payload) -> None:
    evil, marker = payload
    _assert_refused(evil, marker, r"not a loadable checkpoint")


@pytest.mark.parametrize("cut", [0, 0.5])
def test_truncated_checkpoint(cut: float, original, payload, tmp_path: Path) -> None:
    marker = payload[1]
    whole = tmp_path / "whole.ckpt"
    torch.save(original[1], whole)
    data = whole.read_bytes()
    (tmp_path / "cut.ckpt").write_bytes(data[: int(len(data) * cut)])
    _assert_refused(tmp_path / "cut.ckpt", marker, r"not a loadable checkpoint")


@pytest.mark.parametrize("content", ["state_dict", "tensor", "list", "no_state_dict", "lightning_only"])
def test_torch_file_that_is_not_a_vidlstm_checkpoint(content: str, original, payload, tmp_path: Path) -> None:
    marker = payload[1]
    net, checkpoint = original
    obj = {"state_dict": net.state_dict(), "tensor": torch.zeros(3), "list": [1, 2],
           "no_state_dict": {"vidlstm": checkpoint["vidlstm"]},
           "lightning_only": {"state_dict": checkpoint["state_dict"], "epoch": 1}}[content]
    torch.save(obj, tmp_path / "other.pt")
    _assert_refused(tmp_path / "other.pt", marker, r"not a vidlstm checkpoint")


def test_weights_that_do_not_fit_the_config(original, payload, tmp_path: Path) -> None:
    evil, marker = payload
    path = _hostile(original[1], ("model", "head", "hidden_size"), 17, evil, marker, tmp_path / "best.ckpt")
    _assert_refused(path, marker, r"the weights do not fit the stored model config")


def test_missing_checkpoint_is_a_file_not_found_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nowhere\.ckpt: checkpoint not found"):
        load_checkpoint(tmp_path / "nowhere.ckpt")


@pytest.mark.parametrize("spelling", ["short", "long"])
def test_legacy_checkpoint_with_old_target_strings_predicts_as_before(spelling: str, tmp_path: Path) -> None:
    model = copy.deepcopy(MODEL)
    if spelling == "long":
        for node in (model, model["encoder"], model["head"]):
            node["_target_"] = LONG_SPELLING[node["_target_"]]
    torch.manual_seed(1)
    net = _net(model)
    torch.save(_checkpoint(model, net), tmp_path / "legacy.ckpt")
    clips = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        expected = net(clips)
        rebuilt = build_net(load_checkpoint(tmp_path / "legacy.ckpt"))
        predictor = Predictor.from_checkpoint(tmp_path / "legacy.ckpt", device="cpu")
        torch.testing.assert_close(rebuilt(clips), expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(predictor.net(clips), expected, atol=1e-6, rtol=0)
    assert predictor.class_names == CLASSES and predictor.num_frames == 4


def test_encoder_weights_named_in_a_checkpoint_are_never_read(original, payload, tmp_path: Path) -> None:
    evil, marker = payload
    path = _hostile(original[1], ("model", "encoder", "weights"), "EVIL", evil, marker, tmp_path / "best.ckpt")
    net = Predictor.from_checkpoint(path, device="cpu").net
    clips = torch.randn(1, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net(clips), original[0](clips), atol=1e-6, rtol=0)
    assert not marker.exists()


def test_registry_api() -> None:
    """Plain configs without Hydra keys, ints where floats are expected, reusing a built encoder, and errors
    that name where the config came from."""
    plain = validate_model_config(MODEL)
    assert "_target_" not in plain and "_partial_" not in plain["head"] and plain["encoder"]["backbone"] == "tiny"
    assert validate_model_config(plain) == plain
    plain["head"].update(dropout=0, forget_bias=1)
    encoder = build_encoder(plain["encoder"])
    net = build_network({"head": plain["head"]}, 5, encoder=encoder)
    assert net.encoder is encoder and net(torch.randn(1, 3, 3, 32, 32)).shape == (1, 5)
    with pytest.raises(ModelConfigError, match=r"^train config: model\.encoder: missing$"):
        build_network({"head": plain["head"]}, 5, where="train config")
    with pytest.raises(ModelConfigError, match=r"^model config: model\.encoder\.freeze: expected str, got int 1$"):
        build_encoder({**plain["encoder"], "freeze": 1})
    with pytest.raises(ModelConfigError, match=r"^model config: model\.encoder: unknown freeze mode 'some'"):
        build_encoder({**plain["encoder"], "freeze": "some"})
    with pytest.raises(ModelConfigError, match=r"^model config: num_classes: expected a positive int, got bool"):
        build_network(plain, True)


CONF = files("vidlstm.conf").joinpath("model")
ENCODERS = sorted(p.name.removesuffix(".yaml") for p in CONF.joinpath("encoder").iterdir() if p.name.endswith(".yaml"))
HEADS = sorted(p.name.removesuffix(".yaml") for p in CONF.joinpath("head").iterdir() if p.name.endswith(".yaml"))


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("encoder", ENCODERS)
def test_registry_builds_what_hydra_builds_for_every_shipped_config(encoder: str, head: str) -> None:
    with initialize_config_module(config_module="vidlstm.conf", version_base="1.3"):
        cfg = compose("model/cnn_lstm", overrides=[f"model/encoder={encoder}", f"model/head={head}",
                                                   "model.encoder.weights=null"])
    assert cfg.model.encoder.backbone == {"tiny": "tiny", "cnn": "resnet18"}.get(encoder, encoder)
    built = build_network(OmegaConf.to_container(cfg.model, resolve=True), 5).eval()
    network = OmegaConf.masked_copy(cfg.model, [k for k in cfg.model if k not in RUN_SETTINGS["CNNLSTM"]])
    reference = instantiate(network)(num_classes=5).eval()  # run settings (compile) are not the network's
    assert {k: v.shape for k, v in built.state_dict().items()} == \
        {k: v.shape for k, v in reference.state_dict().items()}
    reference.load_state_dict(built.state_dict())
    clips = torch.randn(1, 3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(built(clips), reference(clips), atol=1e-5, rtol=0)
