"""Every shipped experiment and config option composes and instantiates."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from vidlstm.data.datamodule import VideoDataModule
from vidlstm.models import CNNLSTM
from vidlstm.models.registry import build_network
from vidlstm.training.train import build_module

from .conftest import compose_config

CONF = files("vidlstm.conf")
EXPERIMENTS = sorted(p.name.removesuffix(".yaml") for p in CONF.joinpath("experiment").iterdir()
                     if p.name.endswith(".yaml"))
HEADS = sorted(p.name.removesuffix(".yaml") for p in CONF.joinpath("model", "head").iterdir()
               if p.name.endswith(".yaml"))


def test_experiments_are_shipped() -> None:
    assert {"demo", "demo_meanpool"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", [e for e in EXPERIMENTS if e.startswith("demo")])  # others need data
def test_experiment_composes_and_instantiates(experiment: str, tmp_path: Path) -> None:
    cfg = compose_config([f"experiment={experiment}", f"paths.root_dir={tmp_path}"], tmp_path / "run")
    assert cfg.task_name == experiment
    datamodule = instantiate(cfg.data)
    assert isinstance(datamodule, VideoDataModule)
    assert datamodule.train_transform.pipeline is not None
    model = build_network(OmegaConf.to_container(cfg.model, resolve=True), 8)
    assert isinstance(model, CNNLSTM)
    clips = torch.randn(2, cfg.data.num_frames, 3, cfg.data.image_size, cfg.data.image_size)
    assert model(clips).shape == (2, 8)
    module = build_module(cfg, class_names=[f"c{i}" for i in range(8)], class_counts=[2] * 8)
    module.trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=cfg.trainer.max_epochs)
    assert module.configure_optimizers()["optimizer"].param_groups


def test_no_arguments_means_the_demo(tmp_path: Path) -> None:
    cfg = compose_config([], tmp_path / "run")
    assert cfg.task_name == "demo"
    assert cfg.data.prepare._target_ == "vidlstm.data.synthetic.DemoDataset"
    assert cfg.data.train_transform.hflip is False, "flips would swap move_left and move_right"
    assert cfg.model.head.cell == "lstm" and cfg.model.encoder.spatial_grid > 1


def test_meanpool_experiment_removes_the_recurrence(tmp_path: Path) -> None:
    cfg = compose_config(["experiment=demo_meanpool"], tmp_path / "run")
    head = build_network(OmegaConf.to_container(cfg.model, resolve=True), 8).head
    assert head.recurrent is None and head.pooling.mode == "mean"
    demo = compose_config(["experiment=demo"], tmp_path / "run")
    for key in ("data", "optimizer", "scheduler", "trainer"):
        assert cfg[key] == demo[key], f"demo_meanpool must differ from demo only in the head ({key})"


@pytest.mark.parametrize("head", HEADS)
def test_every_head_builds(head: str, tmp_path: Path) -> None:
    cfg = compose_config([f"model/head={head}"], tmp_path / "run")
    model = build_network(OmegaConf.to_container(cfg.model, resolve=True), 3)
    assert model(torch.randn(1, 4, 3, 32, 32)).shape == (1, 3)


@pytest.mark.parametrize("trainer", ["cpu", "gpu", "ddp"])
def test_trainer_configs_compose(trainer: str, tmp_path: Path) -> None:
    cfg = compose_config([f"trainer={trainer}"], tmp_path / "run")
    assert cfg.trainer._target_ == "lightning.pytorch.Trainer"
    assert cfg.trainer.accelerator == ("cpu" if trainer == "cpu" else "gpu")


@pytest.mark.parametrize(
    ("data", "overrides", "source"),
    [
        ("ucf101", ["data.root=/v", "data.params.splits_dir=/s", "data.params.split=2"], "UCF101SplitSource"),
        ("hmdb51", ["data.root=/v", "data.params.splits_dir=/s"], "HMDB51SplitSource"),
        ("list_file", ["data.train.list_file=/l/train.txt", "data.val.list_file=/l/val.csv",
                       "data.test.list_file=/l/test.txt"], "ListFileSource"),
        ("split_folders", ["data.root=/v"], "ClassFolderSource"),
    ],
)
def test_dataset_layout_configs_instantiate(data: str, overrides: list[str], source: str, tmp_path: Path) -> None:
    cfg = compose_config([f"data={data}", *overrides], tmp_path / "run")
    datamodule = instantiate(cfg.data)
    assert type(datamodule.sources["train"]).__name__ == source
    if data == "ucf101":
        assert datamodule.sources["test"].split == 2 and datamodule.sources["test"].subset == "test"
        assert datamodule.sources["val"] is None and datamodule.val_fraction == 0.1


def test_folder_data_requires_a_root(tmp_path: Path) -> None:
    cfg = compose_config(["data=folder", f"data.root={tmp_path}/videos"], tmp_path / "run")
    assert cfg.data.train.root == f"{tmp_path}/videos"


@pytest.mark.parametrize("data", ["folder", "split_folders"])
def test_folder_sources_read_the_configured_endings(data: str, tmp_path: Path) -> None:
    plain = instantiate(compose_config([f"data={data}", "data.root=/v"], tmp_path / "run").data)
    assert ".mts" in plain.sources["train"].extensions and ".gif" not in plain.sources["train"].extensions
    cfg = compose_config([f"data={data}", "data.root=/v", "data.train.extensions=[gif,.MP4]"], tmp_path / "run")
    sources = instantiate(cfg.data).sources
    assert {name: source.extensions for name, source in sources.items() if source is not None} == {
        name: (".gif", ".mp4") for name in (["train"] if data == "folder" else ["train", "val", "test"])}
