"""Every shipped experiment composes and runs one batch of train/val/test (fast_dev_run) on a small generated
tree laid out the way its header says."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from vidlstm.training.train import train

from .conftest import assert_test_metrics_add_up, compose_config

CLASSES = ("grow", "shrink")


def _videos(tiny_demo, label: str, count: int = 8) -> list[Path]:
    """``count`` video files of ``label`` (repeating the tiny demo's six where needed)."""
    found = sorted((Path(tiny_demo.root) / "train" / label).glob("*.mp4"))
    return [found[i % len(found)] for i in range(count)]


def _ucf101(tiny_demo, tmp_path: Path) -> list[str]:
    root, splits = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    (splits / "classInd.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(CLASSES)))
    train_lines, test_lines = [], []
    for i, label in enumerate(CLASSES):
        (root / label).mkdir(parents=True)
        for group, video in enumerate(_videos(tiny_demo, label), start=1):
            name = f"{label}/v_{label}_g{group:02d}_c01.avi"
            shutil.copy(video, root / name)
            (test_lines if group == 1 else train_lines).append(f"{name} {i + 1}\n" if group > 1 else f"{name}\n")
    (splits / "trainlist01.txt").write_text("".join(train_lines))
    (splits / "testlist01.txt").write_text("".join(test_lines))
    return [f"data.root={root}", f"data.params.splits_dir={splits}"]


def _hmdb51(tiny_demo, tmp_path: Path) -> list[str]:
    root, splits = tmp_path / "hmdb51", tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    for label in CLASSES:
        (root / label).mkdir(parents=True)
        lines = []
        for n, video in enumerate(_videos(tiny_demo, label)):
            shutil.copy(video, root / label / f"{label}_{n}.avi")
            lines.append(f"{label}_{n}.avi {2 if n == 0 else 1}\n")
        (splits / f"{label}_test_split1.txt").write_text("".join(lines))
    return [f"data.root={root}", f"data.params.splits_dir={splits}"]


def _kinetics(tiny_demo, tmp_path: Path) -> list[str]:
    root = tmp_path / "kinetics"
    lists = {"train": [], "val": []}
    for label in CLASSES:
        for n, video in enumerate(_videos(tiny_demo, label)):
            relative = f"videos/{label.upper()}_{n}.mp4"
            (root / "videos").mkdir(parents=True, exist_ok=True)
            shutil.copy(video, root / relative)
            lists["val" if n == 0 else "train"].append(f"{relative} {label}\n")
    for split, lines in lists.items():
        (root / f"{split}.txt").write_text("".join(lines))
    return [f"data.root={root}", f"data.train.list_file={root / 'train.txt'}",
            f"data.val.list_file={root / 'val.txt'}"]


def _folder(tiny_demo, tmp_path: Path) -> list[str]:
    root = tmp_path / "my_videos"
    for label in CLASSES:
        (root / label / "nested").mkdir(parents=True)
        for n, video in enumerate(_videos(tiny_demo, label, 12)):
            shutil.copy(video, root / label / "nested" / f"{n}.mp4")
    return [f"data.root={root}", "data.test_fraction=0.3"]


LAYOUTS = {"ucf101_lrcn": _ucf101, "hmdb51_lrcn": _hmdb51, "kinetics_bilstm": _kinetics, "folder": _folder,
           "demo": None, "demo_meanpool": None, "demo_features": None, "demo_appearance_features": None}


def test_every_shipped_experiment_has_a_layout_test() -> None:
    from importlib.resources import files

    shipped = {p.name.removesuffix(".yaml") for p in files("vidlstm.conf").joinpath("experiment").iterdir()
               if p.name.endswith(".yaml")}
    assert shipped == set(LAYOUTS)


@pytest.mark.parametrize("experiment", ["ucf101_lrcn", "hmdb51_lrcn", "kinetics_bilstm", "folder"])
def test_experiment_fast_dev_run_on_its_layout(experiment: str, tiny_demo, tmp_path: Path) -> None:
    layout = LAYOUTS[experiment](tiny_demo, tmp_path)
    cfg = compose_config([
        f"experiment={experiment}", *layout, "debug=fdr", f"paths.data_dir={tmp_path / 'data'}",
        f"paths.log_dir={tmp_path / 'outputs'}", "model.encoder.weights=null", "data.num_frames=4",
        "data.image_size=32", "data.train_transform.resize=36", "data.eval_transform.resize=36",
        "data.batch_size=2", "data.num_workers=0", "data.persistent_workers=false", "data.val_fraction=0.3",
        "callbacks.progress_bar=null", "callbacks.model_summary=null",
    ], tmp_path / "run")
    assert cfg.model.encoder.freeze == "none" and cfg.tags[0] in experiment
    summary, objects = train(cfg)
    datamodule = objects["datamodule"]
    assert datamodule.class_names == sorted(CLASSES)
    assert all(len(datamodule.splits[s]) > 0 for s in ("train", "val", "test"))
    assert summary["class_names"] == sorted(CLASSES)
    # fast_dev_run tests one batch of eval_batch_size (= batch_size) videos
    assert_test_metrics_add_up(summary, min(2, len(datamodule.splits["test"])))
    assert summary["test_is_val"] is (experiment == "kinetics_bilstm")
    if experiment in ("folder", "kinetics_bilstm"):  # the recipe that never loses to a frame average
        head = objects["module"].net.head
        assert head.mean_path and head.feature_norm is not None and head.recurrent is not None


def test_demo_features_fast_dev_run(make_config, tmp_path: Path) -> None:
    summary, objects = train(make_config("experiment=demo_features", "debug=fdr",
                                         f"data.feature_cache_dir={tmp_path / 'features'}"))
    assert objects["module"].inputs == "features"
    assert list((tmp_path / "features").rglob("*.npy"))
    assert_test_metrics_add_up(summary, 8)  # one test batch of data.batch_size=8 videos


def test_demo_appearance_features_fast_dev_run(make_config, tmp_path: Path) -> None:
    cfg = make_config("experiment=demo_appearance_features", "debug=fdr",
                      f"data.feature_cache_dir={tmp_path / 'features'}")
    assert cfg.data.prepare._target_.endswith("AppearanceDataset") and cfg.model.head.feature_norm
    summary, objects = train(cfg)
    assert objects["module"].inputs == "features"
    assert objects["datamodule"].class_names == sorted(cfg.data.prepare.classes)
    assert_test_metrics_add_up(summary, 8)  # one test batch of data.batch_size=8 videos
