"""hparams_search=optuna: a 2-trial sweep on the tiny demo; the sweeper receives each trial's metric."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import TINY_DEMO

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_optuna_two_trial_sweep(tiny_demo, tmp_path: Path) -> None:
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    log_dir = tmp_path / "outputs"
    command = [sys.executable, str(REPO / "scripts" / "train.py"), "hparams_search=optuna", "task_name=sweep",
               "hydra.sweeper.n_trials=2", "hydra.sweeper.sampler.n_startup_trials=2",
               f"paths.data_dir={Path(tiny_demo.root).parent}", f"paths.log_dir={log_dir}",
               *(f"data.prepare.{k}={v}" for k, v in TINY_DEMO.items()), "data.image_size=32",
               "data.num_frames=6", "data.batch_size=8", "data.num_workers=0", "data.persistent_workers=false",
               "trainer.max_epochs=1", "test=false", "callbacks.progress_bar=null", "callbacks.model_summary=null"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (log_dir / "sweep" / "multiruns").iterdir()
    trials = [json.loads((sweep / str(n) / "summary.json").read_text()) for n in range(2)]
    configs = [yaml.safe_load((sweep / str(n) / ".hydra" / "overrides.yaml").read_text()) for n in range(2)]
    assert configs[0] != configs[1], "each trial gets its own parameters"
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(t["val/acc_best"] for t in trials))
    assert set(results["best_params"]) >= {"optimizer.lr", "model.head.hidden_size", "model.head.cell"}
