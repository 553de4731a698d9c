"""`model.compile=true`: the network runs through torch.compile with the same outputs and gradients as eager mode
(CPU, inductor), and checkpoints keep the plain network's keys."""

from __future__ import annotations

import functools

import pytest
import torch

from vidlstm.models.registry import build_network
from vidlstm.training.module import VideoClassifier

CLASSES = [f"c{i}" for i in range(4)]


def _module(compile: bool, inputs: str = "clips") -> VideoClassifier:
    torch.manual_seed(0)
    net = build_network({"encoder": {"backbone": "tiny", "spatial_grid": 2}, "head": {"hidden_size": 16,
                                                                                      "classifier_dropout": 0.0}},
                        len(CLASSES))
    return VideoClassifier(net, functools.partial(torch.optim.SGD, lr=0.1), class_names=CLASSES, inputs=inputs,
                           compile=compile)


@pytest.mark.slow
def test_compiled_network_matches_eager_outputs_and_gradients() -> None:
    eager, compiled = _module(False), _module(True)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # no wrapper prefix in checkpoints
    clips = torch.randn(3, 5, 3, 32, 32)
    labels = torch.tensor([0, 1, 3])
    for mode in ("train", "eval"):
        getattr(eager, mode)()
        getattr(compiled, mode)()
        out_eager, out_compiled = eager(clips), compiled(clips)
        torch.testing.assert_close(out_compiled, out_eager, atol=1e-5, rtol=1e-5)
    eager.train()
    compiled.train()
    for module in (eager, compiled):
        module.zero_grad()
        torch.nn.functional.cross_entropy(module(clips), labels).backward()
    for (name, p_eager), (_, p_compiled) in zip(eager.named_parameters(), compiled.named_parameters(), strict=True):
        torch.testing.assert_close(p_compiled.grad, p_eager.grad, atol=1e-5, rtol=1e-4, msg=name)
    assert "_compiled" in compiled.__dict__ and "_compiled" not in eager.__dict__


@pytest.mark.slow
def test_compiled_feature_head_matches_eager() -> None:
    eager, compiled = _module(False, "features"), _module(True, "features")
    features = torch.randn(2, 6, eager.net.encoder.out_dim)  # no projection: trunk features are out_dim wide
    eager.eval()
    compiled.eval()
    torch.testing.assert_close(compiled(features), eager(features), atol=1e-5, rtol=1e-5)


def test_compile_is_a_run_setting_the_registry_checks_and_never_passes_on() -> None:
    from vidlstm.models.registry import ModelConfigError, validate_model_config

    config = {"encoder": {"backbone": "tiny"}, "head": {"hidden_size": 8}}
    assert validate_model_config({**config, "compile": True}) == validate_model_config(config)
    with pytest.raises(ModelConfigError, match=r"model\.compile: expected bool, got str 'yes'"):
        validate_model_config({**config, "compile": "yes"})
    assert isinstance(build_network({**config, "compile": True}, 3), torch.nn.Module)
