"""Optimisation: parameter groups, schedules, class weights, and every optimizer/scheduler config."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from vidlstm.models import CNNLSTM, FrameEncoder, TemporalHead
from vidlstm.training.optim import balanced_class_weights, build_scheduler, parameter_groups, warmup_cosine
from vidlstm.training.train import build_module

from .conftest import compose_config


def _net(**encoder: object) -> CNNLSTM:
    return CNNLSTM(FrameEncoder("tiny", **encoder), TemporalHead, num_classes=3)


def test_parameter_groups_split_encoder_and_head_with_their_own_settings() -> None:
    net = _net()
    groups = parameter_groups(net, {"encoder": {"lr": 1e-4, "weight_decay": None}, "head": {"weight_decay": 0.0}})
    assert [g["name"] for g in groups] == ["encoder", "head"]
    assert groups[0]["lr"] == 1e-4 and "weight_decay" not in groups[0] and groups[1]["weight_decay"] == 0.0
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in net.encoder.parameters()}
    assert len(groups[0]["params"]) + len(groups[1]["params"]) == len(list(net.parameters()))
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-3]


def test_a_frozen_encoder_leaves_only_the_head_group() -> None:
    groups = parameter_groups(_net(freeze="all"))
    assert [g["name"] for g in groups] == ["head"]
    with pytest.raises(ValueError, match="unknown parameter group"):
        parameter_groups(_net(), {"decoder": {"lr": 1.0}})


def test_warmup_cosine_shape() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, total=12, warmup=2, start_factor=0.1, min_factor=0.0)
    lrs = []
    for _ in range(13):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[1] == pytest.approx(0.55) and lrs[2] == pytest.approx(1.0)
    assert lrs[7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lrs[12] == pytest.approx(0.0, abs=1e-12)


def test_one_cycle_gets_total_steps_and_each_groups_lr_from_the_trainer() -> None:
    import functools

    net = _net()
    optimizer = torch.optim.AdamW(parameter_groups(net, {"encoder": {"lr": 1e-4}}), lr=1e-2)
    factory = functools.partial(torch.optim.lr_scheduler.OneCycleLR, max_lr=None, total_steps=None)
    scheduler = build_scheduler(factory, optimizer, total_steps=40, total_intervals=40)
    assert scheduler.total_steps == 40
    assert [g["max_lr"] for g in optimizer.param_groups] == [1e-4, 1e-2]


def test_balanced_class_weights() -> None:
    weights = balanced_class_weights([10, 30, 0, 20])
    assert weights.tolist() == pytest.approx([60 / 40, 60 / 120, 0.0, 60 / 80])


@pytest.mark.parametrize("optimizer", ["adamw", "adam", "sgd", "rmsprop", "adagrad"])
@pytest.mark.parametrize("scheduler", ["cosine", "warmup_cosine", "step", "plateau", "onecycle"])
def test_every_optimizer_and_scheduler_config_builds_and_steps(optimizer: str, scheduler: str,
                                                               tmp_path: Path) -> None:
    cfg = compose_config([f"optimizer={optimizer}", f"scheduler={scheduler}", "param_groups.encoder.lr=0.0001",
                          "class_weights=auto"], tmp_path)
    module = build_module(cfg, class_names=["a", "b", "c"], class_counts=[4, 2, 2])
    module.trainer = SimpleNamespace(estimated_stepping_batches=30, max_epochs=cfg.trainer.max_epochs)
    configured = module.configure_optimizers()
    opt = configured["optimizer"]
    assert type(opt).__name__.lower() == {"adamw": "adamw", "adam": "adam", "sgd": "sgd", "rmsprop": "rmsprop",
                                           "adagrad": "adagrad"}[optimizer]
    assert [g["name"] for g in opt.param_groups] == ["encoder", "head"]
    assert configured["lr_scheduler"]["interval"] == ("step" if scheduler == "onecycle" else "epoch")
    torch.testing.assert_close(module.criterion.weight, torch.tensor([8 / 12, 8 / 6, 8 / 6]))
    sched = configured["lr_scheduler"]["scheduler"]
    for _ in range(3):
        opt.step()
        sched.step(1.0) if scheduler == "plateau" else sched.step()
    encoder_lr, head_lr = (g["lr"] for g in opt.param_groups)
    assert encoder_lr < head_lr, "the encoder group keeps its own, smaller learning rate"


def test_trainer_knobs_reach_lightning(make_config) -> None:
    from hydra.utils import instantiate

    cfg = make_config("trainer.gradient_clip_val=0.5", "trainer.gradient_clip_algorithm=value",
                      "trainer.accumulate_grad_batches=2", "trainer.precision=bf16-mixed")
    trainer = instantiate(cfg.trainer, logger=False, callbacks=[])
    assert trainer.gradient_clip_val == 0.5 and trainer.gradient_clip_algorithm == "value"
    assert trainer.accumulate_grad_batches == 2 and trainer.precision == "bf16-mixed"


def test_ema_callback_averages_the_weights(make_config) -> None:
    from vidlstm.training.train import train

    common = ("trainer.max_epochs=2", "test=false", "callbacks.early_stopping=null")
    _, plain = train(make_config(*common))
    _, averaged = train(make_config(*common, "callbacks=ema", "callbacks.ema.update_starting_at_epoch=0",
                                    "callbacks.ema.decay=0.9"))
    assert any(type(c).__name__ == "EMAWeightAveraging" for c in averaged["callbacks"])
    raw = dict(plain["module"].net.head.named_parameters())
    ema = dict(averaged["module"].net.head.named_parameters())
    assert any(not torch.allclose(raw[k], ema[k]) for k in raw), "the trained module holds the averaged weights"
