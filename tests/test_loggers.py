"""Loggers: TensorBoard and MLflow (local file store) receive the same metrics as metrics.csv, plus the
hyperparameters and parameter counts."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from vidlstm.training.train import train


def test_many_loggers_record_the_same_metrics(make_config, tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    summary, objects = train(make_config("logger=many", "trainer.max_epochs=2", "test=false"))
    run_dir = Path(summary["output_dir"])
    rows = list(csv.DictReader((run_dir / "metrics.csv").open()))
    csv_val_acc = [float(r["val/acc"]) for r in rows if r.get("val/acc")]
    assert len(csv_val_acc) == 2

    events = EventAccumulator(str(run_dir / "tensorboard")).Reload()
    assert [round(e.value, 5) for e in events.Scalars("val/acc")] == [round(v, 5) for v in csv_val_acc]

    mlflow_logger = next(lg for lg in objects["loggers"] if type(lg).__name__ == "MLFlowLogger")
    client = MlflowClient(tracking_uri=mlflow_logger._tracking_uri)
    history = client.get_metric_history(mlflow_logger.run_id, "val/acc")
    assert [round(m.value, 5) for m in sorted(history, key=lambda m: m.step)] == [round(v, 5) for v in csv_val_acc]
    params = client.get_run(mlflow_logger.run_id).data.params
    total = sum(p.numel() for p in objects["module"].parameters())
    assert params["params/total"] == str(total)
    assert params["model/head/hidden_size"] == "128"
    assert (Path(objects["cfg"].paths.log_dir) / "mlruns").is_dir()
