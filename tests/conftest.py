"""Shared fixtures: a tiny rendered demo dataset and Hydra config composition for tests."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vidlstm.data.synthetic import DemoDataset

TINY_DEMO = dict(train_per_class=6, val_per_class=2, test_per_class=2, size=32, min_frames=8, max_frames=12,
                 workers=0)


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory: pytest.TempPathFactory) -> DemoDataset:
    """A small demo dataset rendered once per test session."""
    demo = DemoDataset(root=str(tmp_path_factory.mktemp("data") / "demo"), **TINY_DEMO)
    demo.prepare()
    return demo


def compose_config(overrides: list[str], output_dir: Path) -> DictConfig:
    """Compose conf/train.yaml as the CLI would, with the Hydra runtime pointing at ``output_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vidlstm.conf", version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    GlobalHydra.instance().clear()
    return cfg


@pytest.fixture
def make_config(tmp_path: Path, tiny_demo: DemoDataset) -> Callable[..., DictConfig]:
    """Config for a quick run on the tiny demo dataset: small frames, no workers, no progress bar.
    Each call gets its own run folder (Lightning resumes from a last.ckpt it finds in a reused one)."""
    runs = itertools.count()

    def make(*overrides: str) -> DictConfig:
        uses_other_data = any(o.startswith("data=") for o in overrides)
        base = [
            f"paths.data_dir={Path(tiny_demo.root).parent}",
            f"paths.log_dir={tmp_path / 'outputs'}",
            *(f"data.prepare.{k}={v}" for k, v in TINY_DEMO.items() if not uses_other_data),
            "data.image_size=32",
            "data.num_frames=8",
            "data.batch_size=8",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "callbacks.progress_bar=null",
            "callbacks.model_summary=null",
        ]
        return compose_config([*base, *overrides], tmp_path / f"run{next(runs)}")

    return make
