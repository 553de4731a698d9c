"""Resuming: a run killed with SIGKILL continues from the newest last.ckpt of its task at the right epoch,
with the optimizer and learning-rate schedule where they were, and ends exactly where an uninterrupted run
with the same seed ends: same best checkpoint, val/acc_best and test metrics."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from vidlstm.training.callbacks import ResumableModelCheckpoint
from vidlstm.training.train import _resume_seed, config_fingerprint, resolve_ckpt_path

from .conftest import TINY_DEMO

REPO = Path(__file__).resolve().parents[1]
EPOCHS = 6


def _command(tiny_demo, log_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(REPO / "scripts" / "train.py"), "task_name=resume",
            f"paths.data_dir={Path(tiny_demo.root).parent}", f"paths.log_dir={log_dir}",
            *(f"data.prepare.{k}={v}" for k, v in TINY_DEMO.items()), "data.image_size=32", "data.num_frames=8",
            "data.batch_size=8", "data.num_workers=0", "data.persistent_workers=false",
            "callbacks.progress_bar=null", "callbacks.model_summary=null", "callbacks.early_stopping=null",
            f"trainer.max_epochs={EPOCHS}", *extra]


def _saved_epoch(path: Path) -> int | None:
    try:
        return int(torch.load(path, map_location="cpu", weights_only=True)["epoch"])
    except Exception:  # not written yet, or caught mid-write
        return None


def _metrics(run: Path) -> dict[int, dict[str, str]]:
    """metrics.csv's validation row of every epoch."""
    rows = csv.DictReader((run / "metrics.csv").open())
    return {int(r["epoch"]): r for r in rows if r.get("val/acc")}


def _net_weights(path: Path) -> dict[str, torch.Tensor]:
    state = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k: v for k, v in state.items() if k.startswith("net.")}


@pytest.mark.slow
def test_resume_after_kill_9_continues_at_the_right_epoch(tiny_demo, tmp_path: Path) -> None:
    log_dir = tmp_path / "outputs"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = subprocess.run(_command(tiny_demo, tmp_path / "reference"), env=env, capture_output=True,
                               text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-3000:]
    (reference_run,) = (tmp_path / "reference" / "resume").iterdir()
    first = subprocess.Popen(_command(tiny_demo, log_dir), env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    killed_after = None
    try:
        while time.time() < deadline and first.poll() is None:
            found = list(log_dir.glob("resume/*/checkpoints/last.ckpt"))
            if found and (epoch := _saved_epoch(found[0])) is not None and epoch >= 1:
                os.killpg(first.pid, signal.SIGKILL)
                killed_after = epoch
                break
            time.sleep(0.1)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert killed_after is not None and killed_after < EPOCHS - 1, "the first run must be killed mid-training"
    (first_run,) = [p for p in (log_dir / "resume").iterdir() if p.is_dir()]
    saved = torch.load(first_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    killed_after = int(saved["epoch"])  # the last.ckpt may have advanced between the check and the kill
    assert not (first_run / "summary.json").exists()
    time.sleep(1.1)  # run folders are named to the second

    resumed = subprocess.run(_command(tiny_demo, log_dir, "ckpt_path=last"), env=env, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    (second_run,) = [p for p in (log_dir / "resume").iterdir() if p.is_dir() and p != first_run]
    summary = json.loads((second_run / "summary.json").read_text())
    assert summary["epochs_completed"] == EPOCHS
    rows = list(csv.DictReader((second_run / "metrics.csv").open()))
    epochs = sorted({int(r["epoch"]) for r in rows if r.get("train/loss")})
    assert epochs == list(range(killed_after + 1, EPOCHS)), "training continues after the saved epoch"
    steps = sorted(int(r["step"]) for r in rows if r.get("train/loss"))
    assert steps[0] > saved["global_step"], "the optimizer step count continues"
    # The cosine schedule continues where it was: lr at epoch e is eta_min + (lr0 - eta_min)(1 + cos(pi e / T)) / 2
    lr_column = next(k for k in rows[0] if k.startswith("lr-") and k.endswith("head"))
    lrs = [float(r[lr_column]) for r in sorted(rows, key=lambda r: int(r["step"])) if r.get(lr_column)]
    expected = [1e-5 + (0.003 - 1e-5) * (1 + math.cos(math.pi * e / EPOCHS)) / 2 for e in epochs]
    assert lrs == pytest.approx(expected, rel=1e-6)
    assert saved["optimizer_states"][0]["state"], "the checkpoint holds the optimizer's moments"

    # The same run as one that was never interrupted: every resumed epoch's metrics, the best checkpoint (the
    # earlier run's best is remembered), val/acc_best and the test metrics.
    expected = json.loads((reference_run / "summary.json").read_text())
    assert summary["resumed_from"] == str(first_run.resolve() / "checkpoints" / "last.ckpt")
    reference_rows, resumed_rows = _metrics(reference_run), _metrics(second_run)
    for epoch in epochs:
        for key in ("val/acc", "val/loss", "val/acc_best"):
            assert resumed_rows[epoch][key] == reference_rows[epoch][key], (epoch, key)
    for key in ("val/acc_best", "test/acc", "test/mean_class_acc", "test/confusion_matrix"):
        assert summary[key] == expected[key], key
    best, reference_best = _net_weights(Path(summary["best_ckpt"])), _net_weights(Path(expected["best_ckpt"]))
    assert best.keys() == reference_best.keys()
    assert all(torch.equal(best[k], reference_best[k]) for k in best)


def test_resumed_checkpoint_callback_remembers_the_earlier_best(tmp_path: Path) -> None:
    old_best = tmp_path / "old" / "checkpoints" / "best.ckpt"
    old_best.parent.mkdir(parents=True)
    old_best.write_bytes(b"weights of epoch 3")
    callback = ResumableModelCheckpoint(dirpath=tmp_path / "new" / "checkpoints", filename="best",
                                        monitor="val/acc", mode="max")
    callback.load_state_dict({"dirpath": str(old_best.parent), "best_model_path": str(old_best),
                              "best_model_score": torch.tensor(0.9), "best_k_models": {str(old_best): 0.9}})
    new_best = tmp_path / "new" / "checkpoints" / "best.ckpt"
    assert new_best.read_bytes() == b"weights of epoch 3"
    assert callback.best_model_path == str(new_best) and float(callback.best_model_score) == pytest.approx(0.9)
    trainer = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=lambda decision, all=True: decision))
    assert not callback.check_monitor_top_k(trainer, torch.tensor(0.8)), "a worse epoch must not become the best"
    assert callback.check_monitor_top_k(trainer, torch.tensor(0.95))


def _fake_checkpoint(path: Path, fingerprint: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"vidlstm": {"fingerprint": fingerprint}}, path)


def test_ckpt_path_last_only_matches_runs_of_the_same_config(tmp_path: Path) -> None:
    task = tmp_path / "outputs" / "demo"
    _fake_checkpoint(task / "same" / "checkpoints" / "last.ckpt", "abc")
    time.sleep(0.02)
    _fake_checkpoint(task / "multiruns" / "x" / "0" / "checkpoints" / "last.ckpt", "other sweep trial")
    _fake_checkpoint(task / "other" / "checkpoints" / "interrupted.ckpt", "another config")
    assert resolve_ckpt_path("last", task, task / "now", "abc") == str(task / "same" / "checkpoints" / "last.ckpt")
    with pytest.raises(FileNotFoundError, match=r"same data and model config \(3 found belong to runs with another"):
        resolve_ckpt_path("last", task, task / "now", "xyz")


def test_ckpt_path_last_prefers_the_epoch_end_checkpoint_and_restores_the_seed(tmp_path: Path) -> None:
    task = tmp_path / "outputs" / "demo"
    torch.save({"vidlstm": {"fingerprint": "abc", "seed": 7}}, _made(task / "run" / "checkpoints" / "last.ckpt"))
    time.sleep(0.02)
    torch.save({"vidlstm": {"fingerprint": "abc", "seed": 7}},
               _made(task / "run" / "checkpoints" / "interrupted.ckpt"))  # newer, but saved mid-epoch
    resume = resolve_ckpt_path("last", task, task / "now", "abc")
    assert resume == str(task / "run" / "checkpoints" / "last.ckpt")
    assert _resume_seed(OmegaConf.create({"seed": None}), resume) == 7, "seed=null adopts the run's seed"
    assert _resume_seed(OmegaConf.create({"seed": 3}), resume) == 3
    assert _resume_seed(OmegaConf.create({"seed": None}), None) is None
    (task / "run" / "checkpoints" / "last.ckpt").unlink()
    interrupted = task / "run" / "checkpoints" / "interrupted.ckpt"
    assert resolve_ckpt_path("last", task, task / "now", "abc") == str(interrupted)


def _made(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def test_config_fingerprint_ignores_the_run_folder_and_speed_settings(tmp_path: Path) -> None:
    from .conftest import compose_config

    base = ["paths.data_dir=/data"]
    first = config_fingerprint(compose_config(base, tmp_path / "run1"))
    assert config_fingerprint(compose_config([*base, "data.num_workers=0"], tmp_path / "run2")) == first
    assert config_fingerprint(compose_config([*base, "data.num_frames=12"], tmp_path / "run3")) != first
    assert config_fingerprint(compose_config([*base, "model.head.hidden_size=64"], tmp_path / "run4")) != first


def test_ckpt_path_last_picks_the_newest_earlier_run(tmp_path: Path) -> None:
    task = tmp_path / "outputs" / "demo"
    older, newer, current = (task / name / "checkpoints" for name in ("a", "b", "c"))
    for folder in (older, newer, current):
        folder.mkdir(parents=True)
    (older / "last.ckpt").write_text("x")
    time.sleep(0.02)
    (newer / "interrupted.ckpt").write_text("x")
    time.sleep(0.02)
    (current / "last.ckpt").write_text("x")
    assert resolve_ckpt_path("last", task, task / "c") == str(newer / "interrupted.ckpt")
    assert resolve_ckpt_path(None, task, task / "c") is None
    with pytest.raises(FileNotFoundError, match="ckpt_path=last found no"):
        resolve_ckpt_path("last", tmp_path / "outputs" / "other", task / "c")
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt: checkpoint to resume from not found"):
        resolve_ckpt_path(str(tmp_path / "missing.ckpt"), task, task / "c")
