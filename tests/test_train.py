"""The training pipeline on a tiny rendered dataset: outputs, checkpoints, determinism."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from vidlstm.models.registry import build_network
from vidlstm.training.callbacks import ThroughputMeter
from vidlstm.training.train import train

from .conftest import assert_test_metrics_add_up


def test_fast_dev_run_goes_through_every_stage(make_config) -> None:
    cfg = make_config("debug=fdr")
    summary, objects = train(cfg)
    assert objects["trainer"].fast_dev_run
    assert {"test/acc", "test/acc_top5", "test/mean_class_acc", "wall_time_s"} <= set(summary)
    assert_test_metrics_add_up(summary, 8)  # fast_dev_run: one test batch of data.batch_size=8 videos
    run = Path(cfg.paths.output_dir)
    assert json.loads((run / "summary.json").read_text())["class_names"] == objects["datamodule"].class_names
    assert (run / "confusion_matrix.png").stat().st_size > 0


def test_training_writes_checkpoints_metrics_and_plots(make_config) -> None:
    cfg = make_config("trainer.max_epochs=2")
    summary, objects = train(cfg)
    run = Path(cfg.paths.output_dir)
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["best.ckpt", "last.ckpt"]
    assert summary["best_ckpt"] == str(run / "checkpoints" / "best.ckpt")
    for name in ("summary.json", "metrics.csv", "curves.png", "confusion_matrix.png"):
        assert (run / name).stat().st_size > 0, name

    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted({int(r["epoch"]) for r in rows if r["val/acc"]}) == [0, 1]
    assert {"train/loss", "train/acc", "val/acc", "val/acc_best", "val/mean_class_acc"} <= set(rows[0])

    saved = json.loads((run / "summary.json").read_text())
    assert saved["test/acc"] == summary["test/acc"]
    assert 0 < saved["fit_time_s"] < saved["wall_time_s"]
    assert len(saved["test/confusion_matrix"]) == 8
    test_videos = len(objects["datamodule"].splits["test"])
    assert sum(map(sum, saved["test/confusion_matrix"])) == test_videos
    confusion = saved["test/confusion_matrix"]
    assert abs(sum(confusion[i][i] for i in range(8)) / test_videos - saved["test/acc"]) < 1e-6
    per_class = [confusion[i][i] / sum(confusion[i]) for i in range(8)]
    assert abs(sum(per_class) / 8 - saved["test/mean_class_acc"]) < 1e-6
    assert saved["test/per_class_acc"] == pytest.approx(dict(zip(saved["class_names"], per_class, strict=True)))
    meter = next(c for c in objects["callbacks"] if isinstance(c, ThroughputMeter))
    assert meter.clips == 2 * len(objects["datamodule"].splits["train"])  # every training clip, both epochs
    assert saved["train/clips_per_s"] == pytest.approx(meter.clips / (meter.wait_s + meter.step_s), rel=1e-3)
    assert saved["train/data_wait_share"] == pytest.approx(meter.wait_s / (meter.wait_s + meter.step_s), abs=1e-4)
    assert {"train/epoch_clips_per_s", "train/epoch_data_wait"} <= set(rows[0])


def test_checkpoint_is_safe_to_load_and_rebuilds_the_model(make_config) -> None:
    cfg = make_config("trainer.max_epochs=1")
    _, objects = train(cfg)
    ckpt = torch.load(Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    meta = ckpt["vidlstm"]
    assert meta["class_names"] == objects["datamodule"].class_names
    net = build_network(meta["config"]["model"], len(meta["class_names"]))
    net.load_state_dict({k.removeprefix("net."): v for k, v in ckpt["state_dict"].items()
                         if k.startswith("net.")})
    net.eval()
    trained = objects["module"].net.eval()
    clips = torch.randn(2, 8, 3, 32, 32)
    torch.testing.assert_close(net(clips), trained(clips))


def test_same_seed_same_run_different_seed_different_run(make_config) -> None:
    def final_weights(seed: int) -> dict[str, torch.Tensor]:
        _, objects = train(make_config("trainer.max_epochs=1", f"seed={seed}", "test=false"))
        return {k: v.clone() for k, v in objects["module"].net.state_dict().items()}

    first, again, other = final_weights(0), final_weights(0), final_weights(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.equal(first[k], other[k]) for k in first)


def test_own_class_folder_tree_trains_with_carved_splits(make_config, tiny_demo) -> None:
    """`data=folder data.root=...` (the README's own-videos command) on a class-per-folder tree."""
    cfg = make_config("data=folder", f"data.root={tiny_demo.split_dir('train')}", "data.val_fraction=0.2",
                      "data.test_fraction=0.2", "debug=fdr")
    summary, objects = train(cfg)
    splits = objects["datamodule"].splits
    paths = [{r.path for r in splits[s]} for s in ("train", "val", "test")]
    assert sum(map(len, paths)) == 6 * 8 and not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert objects["datamodule"].class_names == sorted(tiny_demo.classes)
    assert "test/acc" in summary


def test_multi_clip_testing_from_the_command_line(make_config) -> None:
    cfg = make_config("trainer.max_epochs=1",
                      "data.test_sampler={_target_:vidlstm.data.sampling.MultiClipSampler,_partial_:true,num_clips:3}")
    summary, objects = train(cfg)
    batch = next(iter(objects["datamodule"].test_dataloader()))
    assert batch.clips.shape[1:3] == (3, 8)
    assert_test_metrics_add_up(summary, 16)


def test_attention_head_run_plots_attention_over_time(make_config) -> None:
    summary, objects = train(make_config("model/head=attn_lstm", "trainer.max_epochs=1", "test=false"))
    assert (Path(summary["output_dir"]) / "attention.png").is_file()
    weights = objects["module"].net.head.attention_weights
    assert weights.shape == (8, 8)  # 8 validation clips x 8 frames
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(8))
