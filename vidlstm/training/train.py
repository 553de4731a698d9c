"""The training pipeline: config -> data, model, trainer -> fit, test best checkpoint, write run outputs."""

from __future__ import annotations

import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from vidlstm.data.datamodule import VideoDataModule
from vidlstm.data.features import FeatureCache, FeatureDataModule
from vidlstm.data.probe import append_bad_videos
from vidlstm.training.callbacks import EpochTimer
from vidlstm.training.module import VideoClassifier
from vidlstm.training.optim import balanced_class_weights
from vidlstm.training.plots import plot_attention, plot_confusion_matrix, plot_curves

log = logging.getLogger(__name__)


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry of a dict-of-configs group (callbacks, loggers); null entries are skipped."""
    nodes = [node for node in (group or {}).values() if node is not None and "_target_" in node]
    if any(str(node.get("tracking_uri", "")).startswith("file:") for node in nodes):
        # MLflow 3 refuses its file store unless this is set; our default logger=mlflow uses one on purpose.
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return [instantiate(node) for node in nodes]


def _plain(cfg: DictConfig, *keys: str) -> dict[str, Any]:
    """The named sections of ``cfg`` as resolved plain data (safe for weights_only checkpoint loading)."""
    return {key: OmegaConf.to_container(cfg[key], resolve=True) for key in keys if key in cfg}


# Keys of a scheduler config that tell Lightning how to step it rather than construct it.
SCHEDULER_STEPPING = ("interval", "monitor")


def build_module(cfg: DictConfig, class_names: list[str], class_counts: list[int] | None = None
                 ) -> VideoClassifier:
    """The LightningModule for ``cfg``; ``class_counts`` (training videos per class) feed
    ``class_weights: auto``."""
    net = instantiate(cfg.model)(num_classes=len(class_names))
    scheduler_cfg = OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else None
    stepping = {k: scheduler_cfg.pop(k, None) for k in SCHEDULER_STEPPING} if scheduler_cfg else {}
    return VideoClassifier(
        net=net,
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(scheduler_cfg) if scheduler_cfg else None,
        scheduler_interval=stepping.get("interval") or "epoch",
        scheduler_monitor=stepping.get("monitor") or "val/loss",
        class_names=class_names,
        label_smoothing=cfg.get("label_smoothing", 0.0),
        class_weights=_class_weights(cfg.get("class_weights"), class_names, class_counts),
        param_groups=OmegaConf.to_container(cfg.param_groups) if cfg.get("param_groups") else None,
        config=_plain(cfg, "data", "model"),
    )


def _class_weights(setting: Any, class_names: list[str], counts: list[int] | None) -> list[float] | None:
    if setting is None:
        return None
    if setting == "auto":
        if counts is None:
            raise ValueError("class_weights=auto needs the training set's class counts")
        return balanced_class_weights(counts).tolist()
    return [float(w) for w in setting]


RESUMABLE = ("last.ckpt", "interrupted.ckpt")


def resolve_ckpt_path(value: str | None, task_dir: Path, current_run: Path) -> str | None:
    """``last``: the newest last.ckpt / interrupted.ckpt of an earlier run of this task (``task_dir`` =
    ``<log_dir>/<task_name>``); a path is checked to exist; None stays None."""
    if value is None:
        return None
    if value != "last":
        if not Path(value).is_file():
            raise FileNotFoundError(f"{value}: checkpoint to resume from not found")
        return value
    candidates = [p for name in RESUMABLE for p in task_dir.glob(f"**/checkpoints/{name}")
                  if current_run not in p.parents]
    if not candidates:
        raise FileNotFoundError(f"{task_dir}: ckpt_path=last found no {' or '.join(RESUMABLE)} of an earlier run")
    newest = max(candidates, key=lambda p: p.stat().st_mtime)
    log.info("Resuming from %s", newest)
    return str(newest)


def feature_datamodule(videos: VideoDataModule, module: VideoClassifier, report: Path | None
                       ) -> FeatureDataModule:
    """Switch a run to feature-cache training: extract (or reuse) features of the frozen encoder and make the
    module take features. Videos that fail during extraction are listed in ``report``."""
    encoder = module.net.encoder
    if getattr(encoder, "freeze", None) != "all":
        raise ValueError("data.feature_cache=true needs a frozen encoder: set model.encoder.freeze=all "
                         "(features of an encoder that trains would go stale)")
    cache = FeatureCache(videos.feature_cache_dir, encoder, videos.feature_dtype, videos.eval_batch_size,
                         videos.num_workers)
    features = FeatureDataModule(videos, cache)
    features.prepare()
    if report is not None:
        for split, failures in features.failures.items():
            if failures:
                append_bad_videos(report, {f.path: f.reason for f in failures}, f"{split} features", None)
    module.inputs = "features"
    return features


def _count_parameters(module: L.LightningModule) -> dict[str, int]:
    params = list(module.parameters())
    return {"params/total": sum(p.numel() for p in params),
            "params/trainable": sum(p.numel() for p in params if p.requires_grad)}


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train and test as configured. Returns (summary metrics, objects built) so tests can inspect both."""
    started = time.perf_counter()
    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir).resolve()
    output_dir.mkdir(parents=True, exist_ok=True)

    datamodule: VideoDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("fit")
    log.info("Data: %d classes, %s videos (train/val/test)", datamodule.num_classes,
             "/".join(str(len(datamodule.splits[s])) for s in ("train", "val", "test")))
    module = build_module(cfg, datamodule.class_names, list(datamodule.class_counts("train").values()))
    extraction_s = None
    if datamodule.feature_cache:
        extract_started = time.perf_counter()
        datamodule = feature_datamodule(datamodule, module, Path(cfg.callbacks.bad_videos.report_path)
                                        if cfg.get("callbacks") and cfg.callbacks.get("bad_videos") else None)
        extraction_s = round(time.perf_counter() - extract_started, 2)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    for logger in loggers:
        logger.log_hyperparams({**_plain(cfg, "data", "model", "optimizer", "scheduler", "trainer"),
                                "seed": cfg.get("seed"), **_count_parameters(module)})
    objects = {"cfg": cfg, "datamodule": datamodule, "module": module, "trainer": trainer,
               "callbacks": callbacks, "loggers": loggers}

    summary: dict[str, Any] = {}
    if cfg.get("train", True):
        fit_started = time.perf_counter()
        resume = resolve_ckpt_path(cfg.get("ckpt_path"), Path(cfg.paths.log_dir).resolve() / cfg.task_name,
                                   output_dir)
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
        summary.update(_scalars(trainer.callback_metrics))
        summary["fit_time_s"] = round(time.perf_counter() - fit_started, 2)
    if extraction_s is not None:
        summary["feature_extraction_s"] = extraction_s
    timers = [c for c in callbacks if isinstance(c, EpochTimer) and c.epoch_times_s]
    if timers:
        summary["epoch_time_s"] = statistics.median(timers[0].epoch_times_s)
    best_ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("test", True):
        if not best_ckpt:
            log.warning("No best checkpoint was saved (fast_dev_run?); testing the current weights")
        trainer.test(module, datamodule=datamodule, ckpt_path=best_ckpt or None)
        summary.update(_scalars(trainer.callback_metrics))
        per_class = module.test_per_class.compute().tolist()
        summary["test/per_class_acc"] = dict(zip(datamodule.class_names, per_class, strict=True))
        confusion = module.test_confusion.compute().cpu().numpy()  # metrics sync across ranks: all compute
        summary["test/confusion_matrix"] = confusion.tolist()
        if trainer.is_global_zero:
            plot_confusion_matrix(confusion, datamodule.class_names, output_dir / "confusion_matrix.png")
    if not trainer.is_global_zero:  # under DDP only rank 0 writes the run's files
        return summary, objects

    if getattr(getattr(getattr(module.net, "head", None), "pooling", None), "mode", None) == "attention":
        _plot_attention(module, datamodule, output_dir / "attention.png")
    metrics_csv = output_dir / "metrics.csv"
    if metrics_csv.is_file():
        plot_curves(metrics_csv, output_dir / "curves.png")
    last_ckpt = output_dir / "checkpoints" / "last.ckpt"
    summary.update({
        "class_names": datamodule.class_names,
        "epochs_completed": trainer.current_epoch,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "best_ckpt": str(Path(best_ckpt).resolve()) if best_ckpt else None,
        "last_ckpt": str(last_ckpt) if last_ckpt.is_file() else None,
        "output_dir": str(output_dir),
        "seed": cfg.get("seed"),
    })
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    _report(summary, output_dir)
    return summary, objects


@torch.no_grad()
def _plot_attention(module: VideoClassifier, datamodule: Any, out_png: Path, clips: int = 8) -> None:
    """attention.png: the attention head's weights over time for the first validation clips."""
    batch = next(iter(datamodule.val_dataloader()), None)
    if batch is None:
        return
    module.eval()
    inputs, labels = batch[0][:clips], batch[1][:clips]
    predictions = module(inputs.to(module.device)).argmax(dim=-1).cpu()
    weights = module.net.head.attention_weights
    if weights is None or weights.dim() != 2:  # multi-clip inputs: no single weight row per clip
        return
    plot_attention(weights.cpu().numpy(), labels.tolist(), predictions.tolist(), datamodule.class_names, out_png)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: round(float(value), 6) for key, value in metrics.items()}


def _report(summary: dict[str, Any], output_dir: Path) -> None:
    shown = {k: summary[k] for k in ("val/acc_best", "test/acc", "test/acc_top5", "test/mean_class_acc")
             if k in summary}
    log.info("Metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    log.info("Run folder: %s", output_dir)
    for name in ("summary.json", "metrics.csv", "confusion_matrix.png", "curves.png"):
        if (output_dir / name).is_file():
            log.info("  %-20s %s", name, output_dir / name)
    if summary.get("best_ckpt"):
        log.info("  %-20s %s", "best checkpoint", summary["best_ckpt"])
