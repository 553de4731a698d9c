"""Shared fixtures: a tiny rendered demo dataset and Hydra config composition for tests."""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from vidlstm.data.synthetic import DemoDataset

from .video_factory import write_audio_only

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
            *(["~experiment"] if uses_other_data and not any(o.lstrip("~").startswith("experiment") for o in overrides)
              else []),
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


LEVELS = {"dark": 40, "bright": 215}


def brightness_clip(level: int, frames: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(level, 20, size=(frames, 32, 32, 3)), 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def brightness_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained for a few epochs to tell dark from bright clips (near-perfect by construction)."""
    root = tmp_path_factory.mktemp("brightness")
    from vidlstm.data.synthetic import write_mp4
    from vidlstm.training.train import train

    for label, level in LEVELS.items():
        (root / "videos" / label).mkdir(parents=True)
        for n in range(16):
            write_mp4(root / "videos" / label / f"{n}.mp4", brightness_clip(level, 12, seed=n + level), fps=8)
    cfg = compose_config([
        "~experiment", "data=folder", f"data.root={root / 'videos'}", f"paths.data_dir={root}",
        f"paths.log_dir={root / 'out'}",
        "data.image_size=32", "data.num_frames=4", "data.batch_size=8", "data.num_workers=0",
        "data.persistent_workers=false", "data.val_fraction=0.2", "data.test_fraction=0.2",
        "trainer.max_epochs=4", "optimizer.lr=0.003", "callbacks.progress_bar=null", "callbacks.model_summary=null",
    ], root / "run")
    summary, _ = train(cfg)
    assert summary["val/acc_best"] == 1.0, summary
    return Path(summary["best_ckpt"])


def assert_test_metrics_add_up(summary: dict, videos: int) -> None:
    """test/acc is the confusion matrix's diagonal share and every test video was scored exactly once."""
    matrix = np.asarray(summary["test/confusion_matrix"])
    assert matrix.sum() == videos == summary["test/videos"], (matrix.sum(), videos, summary["test/videos"])
    assert summary["test/acc"] == pytest.approx(np.trace(matrix) / videos, abs=1e-6)
    per_class = matrix.diagonal() / np.maximum(matrix.sum(axis=1), 1)
    assert summary["test/mean_class_acc"] == pytest.approx(per_class[matrix.sum(axis=1) > 0].mean(), abs=1e-6)


@pytest.fixture
def messy_tree(tmp_path: Path, tiny_demo) -> tuple[Path, dict[str, str]]:
    """The tiny demo's training videos plus four broken files, spread over the class folders."""
    root = tmp_path / "videos"
    shutil.copytree(tiny_demo.split_dir("train"), root)
    good = next((root / "grow").glob("*.mp4"))
    bad = {
        "grow/truncated.mp4": good.read_bytes()[: good.stat().st_size // 3],
        "shrink/zero_bytes.mp4": b"",
        "appear/notes.mp4": b"meeting notes, not a video\n" * 50,
    }
    for name, content in bad.items():
        (root / name).write_bytes(content)
    write_audio_only(root / "vanish" / "audio_only.mp4")
    reasons = {"grow/truncated.mp4": "", "shrink/zero_bytes.mp4": "empty file", "appear/notes.mp4": "not a readable",
               "vanish/audio_only.mp4": "no video stream"}
    return root, {str(root / name): reason for name, reason in reasons.items()}
