"""DDP on CPU: two gloo processes share one run folder, and test metrics count every video exactly once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

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
    datamodule, module = objects["datamodule"], objects["module"]
    state = torch.load(summary["best_ckpt"], map_location="cpu", weights_only=True)["state_dict"]
    module.load_state_dict(state)
    module.eval()
    correct = total = 0
    with torch.no_grad():
        for batch in DataLoader(datamodule.dataset("test"), batch_size=4, collate_fn=collate_clips):
            correct += int((module(batch.clips).argmax(1) == batch.labels).sum())
            total += len(batch.labels)
    assert total == len(datamodule.splits["test"]) == 15
    assert summary["test/acc"] == pytest.approx(correct / total, abs=1e-6)
    assert sum(sum(row) for row in summary["test/confusion_matrix"]) == total
