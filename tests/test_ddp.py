"""DDP on CPU: two gloo processes share one run folder, and test metrics count every video exactly once."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from vidlstm.common.checkpoint import build_net, load_checkpoint
from vidlstm.data.dataset import collate_clips
from vidlstm.training.train import train

from .conftest import TINY_DEMO

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_ddp_cpu_two_processes_one_run_folder_exact_test_metrics(tiny_demo, make_config, tmp_path: Path) -> None:
    log_dir = tmp_path / "outputs"
    videos = sorted((Path(tiny_demo.root) / "test").glob("*/*.mp4"))[:15]  # odd: 2 ranks cannot split it evenly
    test_list = tmp_path / "test.txt"
    test_list.write_text("".join(f"{v} {v.parent.name}\n" for v in videos))
    test_source = ["~data.test", f"+data.test={{_target_:vidlstm.data.index.ListFileSource,list_file:{test_list}}}"]
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "trainer=ddp_cpu", "task_name=ddp",
               f"paths.data_dir={Path(tiny_demo.root).parent}", f"paths.log_dir={log_dir}",
               *(f"data.prepare.{k}={v}" for k, v in TINY_DEMO.items()), "data.image_size=32",
               "data.num_frames=8", "data.batch_size=4", "data.eval_batch_size=3", "data.num_workers=0",
               "data.persistent_workers=false", "callbacks.progress_bar=null", "callbacks.model_summary=null",
               "trainer.max_epochs=2", *test_source]
    result = subprocess.run(command, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = [p for p in (log_dir / "ddp").iterdir() if p.is_dir()]
    assert len(runs) == 1, f"one run folder for both ranks, found {runs}"
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["epochs_completed"] == 2
    assert "world_size=2" in result.stdout + result.stderr or "MEMBER: 2/2" in result.stdout + result.stderr

    # A padding DistributedSampler would count one of the 15 test videos twice. Evaluate the same checkpoint
    # in one process and compare.
    _, objects = train(make_config("train=false", "test=false", "data.image_size=32", *test_source))
    datamodule = objects["datamodule"]
    datamodule.prepare_data()
    datamodule.setup("test")
    net = build_net(load_checkpoint(summary["best_ckpt"]))
    correct = total = 0
    with torch.no_grad():
        for batch in DataLoader(datamodule.dataset("test"), batch_size=4, collate_fn=collate_clips):
            batch = datamodule.on_after_batch_transfer(batch, 0)  # uint8 clips -> the model's input
            correct += int((net(batch.clips).argmax(1) == batch.labels).sum())
            total += len(batch.labels)
    assert total == len(datamodule.splits["test"]) == 15
    assert summary["test/acc"] == pytest.approx(correct / total, abs=1e-6)
    assert sum(sum(row) for row in summary["test/confusion_matrix"]) == total


def _ddp_folder_command(root: Path, log_dir: Path, data_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "train.py"), "trainer=ddp_cpu", "task_name=ddp_bad",
            "~experiment", "data=folder", f"data.root={root}", f"paths.data_dir={data_dir}",
            f"paths.log_dir={log_dir}", "data.val_fraction=0.2", "data.test_fraction=0.2", "data.image_size=32",
            "data.num_frames=8", "data.batch_size=4", "data.num_workers=0", "data.persistent_workers=false",
            "callbacks.progress_bar=null", "callbacks.model_summary=null", "trainer.max_epochs=1", *extra]


@pytest.mark.slow
def test_ddp_bad_videos_are_probed_reported_and_extracted_once(messy_tree, tmp_path: Path) -> None:
    """Rank 0 alone probes, reports and extracts features; every rank reads the result."""
    root, bad = messy_tree
    command = _ddp_folder_command(root, tmp_path / "outputs", tmp_path / "data", "data.feature_cache=true",
                                  "model.encoder.freeze=all")
    result = subprocess.run(command, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                            timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    (run,) = (tmp_path / "outputs" / "ddp_bad").iterdir()
    with open(run / "bad_videos.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(r["path"] for r in rows) == sorted(bad), "one row per bad file, not one per rank"
    assert {r["stage"] for r in rows} == {"index"}
    extractions = re.findall(r"Features: (\d+) videos extracted by this process", output)
    assert extractions == [str(6 * 8)], f"one extraction of every good video, by one process: {extractions}"
    assert len(list((tmp_path / "data" / "feature_cache").rglob("*.npy"))) == 6 * 8


@pytest.mark.slow
def test_ddp_abort_on_one_rank_stops_every_rank_with_the_message(messy_tree, tmp_path: Path) -> None:
    root, _ = messy_tree
    command = _ddp_folder_command(root, tmp_path / "outputs", tmp_path / "data", "data.probe=false",
                                  "data.max_bad_fraction=0.0")
    started = time.monotonic()
    result = subprocess.run(command, env={**os.environ, "PYTHONUNBUFFERED": "1"}, capture_output=True, text=True,
                            timeout=600)  # a rank left waiting at a collective would hang until this kills it
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert time.monotonic() - started < 300
    messages = re.findall(r"clip loads \(\d+\.\d%\) failed in \w+ epoch 0, above data.max_bad_fraction=0.0", output)
    assert len(messages) >= 2, f"every rank ends with the same message:\n{output[-3000:]}"


def test_ranks_never_probe_on_their_own(make_config) -> None:
    """Without a probe cache each rank would probe by itself and could leave out different videos."""
    from types import SimpleNamespace

    from hydra.utils import instantiate

    datamodule = instantiate(make_config("data.probe_cache=null").data)
    datamodule.trainer = SimpleNamespace(world_size=2)
    with pytest.raises(ValueError, match=r"data.probe_cache=null with several processes"):
        datamodule.setup("fit")
