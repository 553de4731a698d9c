"""Every backbone whole: for each family the trunk's globally pooled features are the full model's penultimate
activations (the input of its first fully connected layer after the convolutional part), the feature size is
the model's, freeze="all" really freezes, and checkpoints of the old trunk key layout still load where the old
trunk computed the same thing. Random init and small frames only: nothing is downloaded."""

from __future__ import annotations

import copy
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torch import nn

from vidlstm.common.checkpoint import build_net
from vidlstm.models import FrameEncoder
from vidlstm.models.backbones import TorchvisionTrunk, rebuild_weights_meta


@dataclass
class Family:
    name: str
    size: int                   # frame side used (the smallest the weights allow, or their fixed size)
    features: int               # channels of the trunk = the classifier's input size
    classifier: str             # the model's first fully connected layer after the trunk
    build: dict[str, Any] = field(default_factory=dict)  # what torchvision's builder sets for pretrained weights
    slow: bool = False


FAMILIES = [
    Family("resnet18", 64, 512, "fc"),
    Family("mobilenet_v2", 64, 1280, "classifier.1"),
    Family("mobilenet_v3_small", 64, 576, "classifier.0"),  # its 1024-unit hidden layer belongs to the classifier
    Family("efficientnet_b0", 64, 1280, "classifier.1"),
    Family("regnet_y_400mf", 64, 440, "fc"),
    Family("convnext_tiny", 64, 768, "classifier.2", slow=True),  # LayerNorm after the pooling is kept
    Family("densenet121", 64, 1024, "classifier", slow=True),  # the final ReLU is kept
    Family("inception_v3", 75, 2048, "fc", {"transform_input": True, "aux_logits": True, "init_weights": False},
           slow=True),
    Family("googlenet", 64, 1024, "fc", {"transform_input": True, "aux_logits": True, "init_weights": False},
           slow=True),
    Family("vit_b_16", 224, 768, "heads.head", slow=True),  # the class token, as a 1x1 map
    Family("swin_t", 224, 768, "head", slow=True),  # (B, H, W, C) features permuted to (B, C, H, W)
]
PARAMS = [pytest.param(f, id=f.name, marks=[pytest.mark.slow] if f.slow else []) for f in FAMILIES]


def _reference(family: Family) -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.get_model(family.name, **family.build).eval()


def _classifier_input(model: nn.Module, path: str, x: torch.Tensor) -> torch.Tensor:
    """What the model's layer ``path`` receives on input ``x`` (the penultimate activations)."""
    seen: list[torch.Tensor] = []
    handle = model.get_submodule(path).register_forward_hook(lambda m, inputs, out: seen.append(inputs[0]))
    with torch.no_grad():
        model(x)
    handle.remove()
    return seen[0]


def _bn_stats(module: nn.Module) -> list[torch.Tensor]:
    return [t.clone() for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
            for t in (m.running_mean, m.running_var)]


@pytest.mark.parametrize("family", PARAMS)
def test_pooled_trunk_features_are_the_models_penultimate_activations(family: Family) -> None:
    model = _reference(family)
    encoder = FrameEncoder(family.name, spatial_grid=1).eval()
    encoder.trunk.load_model_weights(model.state_dict(), "reference model")
    assert encoder.out_dim == encoder.channels == family.features
    x = torch.randn(2, 3, family.size, family.size)
    expected = _classifier_input(model, family.classifier, x)
    assert expected.shape == (2, family.features)
    with torch.no_grad():
        torch.testing.assert_close(encoder.trunk_features(x), expected, atol=1e-5, rtol=1e-4)
        clips = x.view(1, 2, 3, family.size, family.size)
        torch.testing.assert_close(encoder(clips)[0], expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("family", PARAMS)
def test_freeze_all_freezes_every_trunk_parameter_and_statistic(family: Family) -> None:
    encoder = FrameEncoder(family.name, freeze="all", projection_size=4).train()
    assert not any(p.requires_grad for p in encoder.trunk.parameters())
    before = _bn_stats(encoder.trunk)
    clips = torch.randn(1, 2, 3, family.size, family.size)
    encoder(clips).square().sum().backward()
    assert all(p.grad is None for p in encoder.trunk.parameters())
    assert all(p.grad is not None for p in encoder.projection.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(encoder.trunk), strict=True))
    assert not any(m.training for m in encoder.trunk.modules())


@pytest.mark.parametrize(("name", "last"), [("resnet18", "layer4"), ("mobilenet_v3_small", "features.12"),
                                            ("regnet_y_400mf", "trunk_output.block4")])
def test_all_but_last_trains_exactly_the_last_stage(name: str, last: str) -> None:
    encoder = FrameEncoder(name, freeze="all_but_last", trainable_stages=1).train()
    trainable = {n for n, p in encoder.trunk.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(f"body.{last}.") for n in trainable), sorted(trainable)[:3]
    assert trainable == {n for n, _ in encoder.trunk.named_parameters() if n.startswith(f"body.{last}.")}
    assert encoder.trunk.body.get_submodule(last).training
    assert not any(m.training for n, m in encoder.trunk.body.named_modules() if n and not n.startswith(last))


def test_token_models_take_one_vector_per_frame_and_their_fixed_size() -> None:
    with pytest.raises(ValueError, match=r"^backbone 'vit_b_16': spatial_grid=2 not supported: its features are "
                                         r"one vector per frame"):
        FrameEncoder("vit_b_16", spatial_grid=2)
    encoder = FrameEncoder("vit_b_16")
    with pytest.raises(ValueError, match=r"^backbone 'vit_b_16': frames are 64x64 but it takes only 224x224 "
                                         r"\(set data.image_size=224\)$"):
        encoder(torch.randn(1, 1, 3, 64, 64))


def test_frames_below_the_weights_minimum_are_a_clear_error() -> None:
    encoder = FrameEncoder("inception_v3")  # probed at its minimum, 75 px, though probe_size is 64
    assert encoder.out_dim == 2048
    with pytest.raises(ValueError, match=r"^backbone 'inception_v3': frames are 64x64, smaller than the 75x75 it "
                                         r"needs \(set data.image_size >= 75\)$"):
        encoder(torch.randn(1, 1, 3, 64, 64))


def test_trunk_keeps_its_modes_through_deepcopy_and_pickle() -> None:
    """Lightning's EMA deep-copies the network; spawned processes pickle it."""
    encoder = FrameEncoder("resnet18", freeze="all", projection_size=4).train()
    x = torch.randn(1, 2, 3, 64, 64)
    expected = encoder.eval()(x)
    for clone in (copy.deepcopy(encoder), pickle.loads(pickle.dumps(encoder))):
        clone.train()
        assert not any(m.training for m in clone.trunk.modules())
        torch.testing.assert_close(clone.eval()(x), expected)


# --- old checkpoints: the trunk was nn.Sequential(first children) with keys "0.weight", "4.0.conv1.weight" ---

def _old_trunk(model: nn.Module) -> nn.Module:
    """The trunk vidlstm built before whole-backbone trunks: children up to the first classifier-like one."""
    parts = []
    for name, child in model.named_children():
        if name in {"avgpool", "fc", "classifier", "head", "heads", "flatten", "dropout", "AuxLogits"}:
            break
        parts.append(child)
    return parts[0] if len(parts) == 1 else nn.Sequential(*parts)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small"])
def test_old_trunk_keys_load_and_compute_the_same(name: str) -> None:
    model = _reference(Family(name, 64, 0, ""))
    old = _old_trunk(model).eval()
    assert next(iter(old.state_dict())).startswith("0.")
    encoder = FrameEncoder(name).eval()
    encoder.trunk.load_state_dict(old.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(encoder.trunk(x), old(x))


def test_old_resnet18_checkpoint_rebuilds_and_its_trunk_is_reused(tmp_path: Path) -> None:
    """A training checkpoint of the old layout (``net.encoder.trunk.0.weight``) rebuilds through the registry,
    and ``weights=<that checkpoint>`` reuses its trunk."""
    torch.manual_seed(3)
    reference = torchvision.models.resnet18().eval()
    new = build_net_from({"backbone": "resnet18", "spatial_grid": 1})
    old_state = {f"net.encoder.trunk.{k}": v for k, v in _old_trunk(reference).state_dict().items()}
    head_state = {f"net.{k}": v for k, v in new.state_dict().items() if not k.startswith("encoder.trunk.")}
    checkpoint = {"state_dict": {**old_state, **head_state},
                  "vidlstm": {"class_names": ["a", "b"], "config": {
                      "data": {"image_size": 64, "num_frames": 2},
                      "model": {"encoder": {"backbone": "resnet18", "spatial_grid": 1},
                                "head": {"cell": "lstm", "hidden_size": 8}}}}}
    net = build_net(checkpoint)
    torch.testing.assert_close(net.encoder.trunk.body.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(net.encoder.trunk.body.get_submodule("layer4.1.bn2").running_var,
                               reference.layer4[1].bn2.running_var)
    torch.save(checkpoint, tmp_path / "old.ckpt")
    reused = FrameEncoder("resnet18", weights=str(tmp_path / "old.ckpt")).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = _classifier_input(reference, "fc", x)
        torch.testing.assert_close(reused.trunk_features(x), expected, atol=1e-5, rtol=1e-4)


def build_net_from(encoder: dict[str, Any]) -> nn.Module:
    from vidlstm.models.registry import build_network

    return build_network({"encoder": encoder, "head": {"cell": "lstm", "hidden_size": 8}}, 2)


def test_old_trunk_keys_of_a_network_that_was_cut_short_are_refused() -> None:
    """DenseNet's old trunk lacked the final ReLU: its weights load into no network that exists now."""
    old = _old_trunk(torchvision.models.densenet121())
    encoder = FrameEncoder("densenet121")
    with pytest.raises(RuntimeError, match="trunk layout of vidlstm before whole-backbone trunks, which left part "
                                           "of this network out: retrain"):
        encoder.trunk.load_state_dict(old.state_dict())


def test_a_checkpoint_trained_with_named_weights_rebuilds_the_same_network() -> None:
    """build_net never reads weights, but a torchvision weights name still says which network they came with."""
    assert rebuild_weights_meta("inception_v3", "DEFAULT", None) == "IMAGENET1K_V1"
    assert rebuild_weights_meta("inception_v3", "/models/inception.pth", None) is None
    assert rebuild_weights_meta("inception_v3", None, "IMAGENET1K_V1") == "IMAGENET1K_V1"
    assert rebuild_weights_meta("timm:resnet18", "DEFAULT", None) is None


def test_unknown_weights_meta_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"^weights 'IMAGENET1K_V9': not weights of torchvision 'resnet18' "
                                         r"\(known: DEFAULT, IMAGENET1K_V1\)$"):
        FrameEncoder("resnet18", weights_meta="IMAGENET1K_V9")
    with pytest.raises(ValueError, match=r"^weights_meta 'IMAGENET1K_V1': names torchvision weights"):
        FrameEncoder("tiny", weights_meta="IMAGENET1K_V1")


def test_torchvision_local_file_loads_exactly_and_misfits_are_named(tmp_path: Path) -> None:
    torch.manual_seed(5)
    googlenet = torchvision.models.googlenet(aux_logits=False, init_weights=True)  # as the pretrained file is
    torch.save(googlenet.state_dict(), tmp_path / "googlenet.pth")
    encoder = FrameEncoder("googlenet", weights=str(tmp_path / "googlenet.pth"))
    torch.testing.assert_close(encoder.trunk.body.get_submodule("inception5b.branch1.conv").weight,
                               googlenet.inception5b.branch1.conv.weight)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(ValueError, match=r"resnet18\.pth: not a googlenet state dict: \d+ of the trunk's \d+ "
                                         r"tensors are missing"):
        FrameEncoder("googlenet", weights=str(tmp_path / "resnet18.pth"))


# --- timm ---

TIMM = [("resnet18", 64, 512), ("efficientnet_b0", 64, 1280), ("convnext_atto", 64, 320),
        ("vit_tiny_patch16_224", 224, 192), ("swin_tiny_patch4_window7_224", 224, 768)]


@pytest.mark.parametrize(("name", "size", "features"), [
    pytest.param(*t, id=t[0], marks=[pytest.mark.slow] if t[0] != "resnet18" else []) for t in TIMM])
def test_timm_pooled_features_are_pre_logits(name: str, size: int, features: int) -> None:
    """Against timm's own ``forward_head(pre_logits=True)``: pooling, ConvNeXt's head norm, Swin's NHWC layout,
    ViT's class token."""
    pytest.importorskip("timm")
    torch.manual_seed(0)
    encoder = FrameEncoder(f"timm:{name}").eval()
    assert encoder.out_dim == features
    model = encoder.trunk.model
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(encoder.trunk_features(x), expected, atol=1e-5, rtol=1e-4)
    frozen = FrameEncoder(f"timm:{name}", freeze="all", projection_size=4).train()
    before = _bn_stats(frozen.trunk)
    frozen(x[None]).sum().backward()
    assert all(p.grad is None for p in frozen.trunk.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(frozen.trunk), strict=True))


def test_timm_all_but_last_follows_timms_stages_and_old_keys_load() -> None:
    timm = pytest.importorskip("timm")
    encoder = FrameEncoder("timm:resnet18", freeze="all_but_last", trainable_stages=1)
    assert {n.split(".")[1] for n, p in encoder.trunk.named_parameters() if p.requires_grad} == {"layer4"}
    torch.manual_seed(2)
    full = timm.create_model("resnet18")  # the old trunk kept the classifier: keys model.fc.*
    encoder.trunk.load_state_dict({f"model.{k}": v for k, v in full.state_dict().items()})
    torch.testing.assert_close(encoder.trunk.model.conv1.weight, full.conv1.weight)
    assert not any(k.startswith("model.fc.") for k in encoder.trunk.state_dict())


def test_trunk_interface() -> None:
    trunk = FrameEncoder("convnext_tiny").trunk
    assert isinstance(trunk, TorchvisionTrunk) and trunk.head_norm is not None
    assert {k.split(".")[0] for k in trunk.state_dict()} == {"body", "head_norm"}
    assert not any(k.startswith("body.classifier.2") for k in trunk.state_dict())
