"""`trainer=gpu` is fast by default: bf16 autocast (16-mixed where a GPU lacks bf16), channels_last, pinned memory
and prefetching left to 'auto'; `model.compile=true` reaches the module. Checked on the composed configs and the
decisions, which need no GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from vidlstm.training import train as train_module
from vidlstm.training.train import build_module, config_fingerprint

from .conftest import compose_config


def test_trainer_gpu_composes_the_fast_settings(tmp_path: Path) -> None:
    cfg = compose_config(["trainer=gpu"], tmp_path / "run")
    assert (cfg.trainer.accelerator, cfg.trainer.precision) == ("gpu", "bf16-mixed")
    assert cfg.model.encoder.channels_last is True
    assert (cfg.data.pin_memory, cfg.data.prefetch_factor, cfg.data.persistent_workers) == ("auto", "auto", True)
    assert compose_config(["trainer=ddp"], tmp_path / "run").trainer.precision == "bf16-mixed"


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
def test_bf16_falls_back_to_16_mixed_where_the_gpu_lacks_it(monkeypatch: pytest.MonkeyPatch, bf16: bool,
                                                           expected: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "an older GPU")
    gpu = OmegaConf.create({"accelerator": "gpu", "precision": "bf16-mixed"})
    assert train_module._supported_precision(gpu) == expected
    cpu = OmegaConf.create({"accelerator": "cpu", "precision": "bf16-mixed"})  # CPUs run bf16 autocast
    assert train_module._supported_precision(cpu) == "bf16-mixed"


def test_model_compile_reaches_the_module_and_changes_nothing_else(tmp_path: Path) -> None:
    plain = compose_config([], tmp_path / "run")
    compiled = compose_config(["model.compile=true"], tmp_path / "run")
    classes = [f"c{i}" for i in range(8)]
    assert build_module(compiled, class_names=classes).compile_net is True
    assert build_module(plain, class_names=classes).compile_net is False
    assert config_fingerprint(compiled) == config_fingerprint(plain)  # a compiled run resumes an eager one
    stored = build_module(compiled, class_names=classes).config["model"]
    assert stored["compile"] is True  # kept as plain data; the registry type-checks and never passes it on
