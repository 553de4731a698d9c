"""The training pipeline: config -> data, model, trainer -> fit, test best checkpoint, write run outputs."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import statistics
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from vidlstm.common.plots import plot_attention, plot_confusion_matrix, plot_curves
from vidlstm.common.report import TestExamples, config_yaml, training_report
from vidlstm.data.datamodule import VideoDataModule
from vidlstm.models.encoders import FrameEncoder
from vidlstm.models.registry import build_encoder, build_network
from vidlstm.training.callbacks import BadVideoMonitor, EpochTimer, NetworkBuilder, ThroughputMeter
from vidlstm.training.features import FeatureCache, FeatureDataModule
from vidlstm.training.module import VideoClassifier
from vidlstm.training.preprocessing import resolve_preprocessing

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
DATA_WAIT_WARNING = 0.3  # share of training time spent waiting for data past which the run says so


def build_module(cfg: DictConfig, seed: int | None = None, class_names: list[str] | None = None,
                 encoder: FrameEncoder | None = None, class_counts: list[int] | None = None) -> VideoClassifier:
    """The LightningModule for ``cfg``. The network, which needs the class list, is built from the plain model
    config through the model registry in the module's ``setup`` (or now, when ``class_names`` are given),
    around ``encoder`` when one is given (feature extraction needs the encoder before fitting).
    ``class_counts`` (training videos per class) feed ``class_weights: auto`` for a network built now."""
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    encoder = encoder or build_encoder(model_cfg["encoder"])
    net: Any = functools.partial(build_network, model_cfg, encoder=encoder)
    if class_names is not None:
        net = net(len(class_names))
    scheduler_cfg = OmegaConf.to_container(cfg.scheduler, resolve=True) if cfg.get("scheduler") else None
    stepping = {k: scheduler_cfg.pop(k, None) for k in SCHEDULER_STEPPING} if scheduler_cfg else {}
    return VideoClassifier(
        net=net,
        optimizer=instantiate(cfg.optimizer),
        class_names=class_names,
        scheduler=instantiate(scheduler_cfg) if scheduler_cfg else None,
        scheduler_interval=stepping.get("interval") or "epoch",
        scheduler_monitor=stepping.get("monitor") or "val/loss",
        label_smoothing=cfg.get("label_smoothing", 0.0),
        class_weights=_class_weights(cfg.get("class_weights")),
        param_groups=OmegaConf.to_container(cfg.param_groups) if cfg.get("param_groups") else None,
        config=_plain(cfg, "data", "model"),
        seed=seed,
        hparams={**_plain(cfg, "data", "model", "optimizer", "scheduler", "trainer"), "seed": seed},
        fingerprint=config_fingerprint(cfg),
        class_counts=class_counts,
        compile=bool(cfg.model.get("compile", False)),
    )


def _class_weights(setting: Any) -> list[float] | str | None:
    if setting is None or setting == "auto":
        return setting
    return [float(w) for w in setting]


# Settings that change how fast a run goes, never what it computes: a run may resume with other values.
RUN_ONLY_DATA_KEYS = ("num_workers", "persistent_workers", "pin_memory", "prefetch_factor", "probe_workers",
                      "probe_cache", "quarantine_report", "eval_batch_size", "decode_timeout_s")


def config_fingerprint(cfg: DictConfig) -> str:
    """A hash of the run's resolved data and model config, less the run folder and the speed-only settings:
    `ckpt_path=last` resumes only a run whose fingerprint matches."""
    masked = cfg.copy()
    with open_dict(masked):
        masked.paths.output_dir = "<run folder>"
    plain = _plain(masked, "data", "model")
    for key in RUN_ONLY_DATA_KEYS:
        plain.get("data", {}).pop(key, None)
    plain.get("model", {}).pop("compile", None)  # how the network runs, not what it is
    if isinstance(plain.get("data", {}).get("prepare"), dict):
        plain["data"]["prepare"].pop("workers", None)
    return hashlib.sha1(json.dumps(plain, sort_keys=True, default=str).encode()).hexdigest()


RESUMABLE = ("last.ckpt", "interrupted.ckpt")


def _stored_meta(path: Path) -> dict[str, Any]:
    """The vidlstm section of a checkpoint ({} when it has none or cannot be read)."""
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # caught mid-write, damaged: never resumed from
        return {}
    meta = checkpoint.get("vidlstm") if isinstance(checkpoint, dict) else None
    return meta if isinstance(meta, dict) else {}


def resolve_ckpt_path(value: str | None, task_dir: Path, current_run: Path, fingerprint: str | None = None
                      ) -> str | None:
    """``last``: the checkpoint to resume of the newest earlier run of this task (``task_dir`` =
    ``<log_dir>/<task_name>``) whose data and model config match ``fingerprint`` (see `config_fingerprint`):
    its last.ckpt (saved at an epoch's end, so the resumed run replays exactly what an uninterrupted one does),
    or its interrupted.ckpt when it has no last.ckpt. A path is checked to exist; None stays None."""
    if value is None:
        return None
    if value != "last":
        if not Path(value).is_file():
            raise FileNotFoundError(f"{value}: checkpoint to resume from not found")
        return value
    runs: dict[Path, dict[str, Path]] = {}
    for name in RESUMABLE:
        for path in task_dir.glob(f"**/checkpoints/{name}"):
            if current_run not in path.parents:
                runs.setdefault(path.parent.parent, {})[name] = path
    newest_first = sorted(runs.values(), key=lambda files: max(p.stat().st_mtime for p in files.values()),
                          reverse=True)
    others = 0
    for files in newest_first:
        candidate = files.get("last.ckpt") or files["interrupted.ckpt"]
        if fingerprint is None or _stored_meta(candidate).get("fingerprint") == fingerprint:
            if candidate.name == "interrupted.ckpt":
                log.warning("Resuming from %s, saved mid-epoch: that epoch restarts from its first batch, so the "
                            "run will not be identical to an uninterrupted one", candidate)
            log.info("Resuming from %s (run folder %s)", candidate, candidate.parent.parent)
            return str(candidate)
        others += 1
    detail = f" ({others} found belong to runs with another data/model config)" if others else ""
    raise FileNotFoundError(f"{task_dir}: ckpt_path=last found no {' or '.join(RESUMABLE)} of an earlier run of "
                            f"this task with the same data and model config{detail}")


def _resume_seed(cfg: DictConfig, resume: str | None) -> int | None:
    """The seed a resumed run must use: the interrupted run's (also when ``seed: null`` would draw a new one);
    a different configured seed is used but warned about, since the continuation then differs."""
    stored = _stored_meta(Path(resume)).get("seed") if resume else None
    configured = cfg.get("seed")
    if stored is None:
        return configured
    if configured is not None and configured != stored:
        log.warning("Resuming a run trained with seed=%s using seed=%s: the rest of the run will differ from an "
                    "uninterrupted one", stored, configured)
        return configured
    return stored


def feature_datamodule(videos: VideoDataModule, module: VideoClassifier, encoder: FrameEncoder,
                       report: str | None) -> FeatureDataModule:
    """Switch a run to feature-cache training: the frozen encoder's features are extracted (or reused) in the
    datamodule's ``prepare_data`` (rank 0) and read in ``setup`` (every rank); the module takes features.
    Videos that fail during extraction are listed in ``report``."""
    if getattr(encoder, "freeze", None) != "all":
        raise ValueError("data.feature_cache=true needs a frozen encoder: set model.encoder.freeze=all "
                         "(features of an encoder that trains would go stale)")
    cache = FeatureCache(videos.feature_cache_dir, encoder, videos.feature_dtype, videos.eval_batch_size,
                         videos.num_workers)
    module.inputs = "features"
    return FeatureDataModule(videos, cache, report=report)


def check_recipe(cfg: DictConfig) -> None:
    """Refuse an experiment tuned for one data config (``experiment_data``) combined with another: the run
    would silently inherit the recipe's task name, learning rate and schedule."""
    wanted = cfg.get("experiment_data")
    if wanted is None or not HydraConfig.initialized():
        return
    choices = HydraConfig.get().runtime.choices
    chosen = choices.get("data")
    if chosen is not None and chosen != wanted:
        raise ValueError(f"experiment={choices.get('experiment')} is tuned for data={wanted}, not data={chosen}: "
                         "pick a recipe for your data (e.g. experiment=folder) or ~experiment for the plain "
                         "defaults")


def _run_seed(seed: int | None) -> int:
    """``seed``, or (None) a random one, recorded in the summary and checkpoints so the run can be repeated or
    resumed. Lightning exports it to the processes it starts, so DDP ranks agree."""
    return L.seed_everything(seed, workers=True, verbose=False)


def _supported_precision(trainer_cfg: DictConfig) -> Any:
    """The configured precision, except bf16 on CUDA GPUs that lack it (before Ampere): 16-mixed instead, said
    in the log (the GPU configs default to bf16-mixed)."""
    precision = trainer_cfg.get("precision", "32-true")
    on_cuda = str(trainer_cfg.get("accelerator")) in ("gpu", "cuda", "auto") and torch.cuda.is_available()
    if str(precision).startswith("bf16") and on_cuda and not torch.cuda.is_bf16_supported():
        fallback = str(precision).replace("bf16", "16")
        log.warning("trainer.precision=%s: %s has no bf16 support; training with %s", precision,
                    torch.cuda.get_device_name(), fallback)
        return fallback
    return precision


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Train and test as configured. Returns (summary metrics, objects built) so tests can inspect both.

    The data transforms' null preprocessing settings are first filled in from the encoder's weights
    (`resolve_preprocessing`). Nothing here touches the data before the Trainer does: rendering, probing, the
    quarantine report and feature extraction happen in the datamodule's ``prepare_data`` (rank 0 only under
    DDP), indexing in its ``setup`` (every rank), and the network is built in the module's ``setup``."""
    started = time.perf_counter()
    check_recipe(cfg)
    resolve_preprocessing(cfg)  # before anything reads the data config: the checkpoints store what it fills in
    output_dir = Path(cfg.paths.output_dir).resolve()
    resume = None
    if cfg.get("train", True):
        resume = resolve_ckpt_path(cfg.get("ckpt_path"), Path(cfg.paths.log_dir).resolve() / cfg.task_name,
                                   output_dir, config_fingerprint(cfg))
    seed = _run_seed(_resume_seed(cfg, resume))
    output_dir.mkdir(parents=True, exist_ok=True)

    videos: VideoDataModule = instantiate(cfg.data, seed=seed)
    encoder = build_encoder(OmegaConf.to_container(cfg.model.encoder, resolve=True))
    module = build_module(cfg, seed, encoder=encoder)
    examples = TestExamples()  # misclassified test videos for report.html's filmstrips
    callbacks = [NetworkBuilder(), *_instantiate_all(cfg.get("callbacks")), examples]
    monitor = next((c for c in callbacks if isinstance(c, BadVideoMonitor)), None)
    datamodule: Any = videos
    if videos.feature_cache:
        datamodule = feature_datamodule(videos, module, encoder, str(monitor.report_path) if monitor else None)
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False,
                                     precision=_supported_precision(cfg.trainer))
    objects = {"cfg": cfg, "datamodule": datamodule, "module": module, "trainer": trainer,
               "callbacks": callbacks, "loggers": loggers}

    summary: dict[str, Any] = {}
    if cfg.get("train", True):
        fit_started = time.perf_counter()
        if resume:
            summary["resumed_from"] = str(Path(resume).resolve())
        trainer.fit(module, datamodule=datamodule, ckpt_path=resume)
        summary.update(_scalars(trainer.callback_metrics))
        summary["fit_time_s"] = round(time.perf_counter() - fit_started, 2)
    if isinstance(datamodule, FeatureDataModule) and datamodule.extraction_s is not None:
        summary["feature_extraction_s"] = datamodule.extraction_s
    timers = [c for c in callbacks if isinstance(c, EpochTimer) and c.epoch_times_s]
    if timers:
        summary["epoch_time_s"] = statistics.median(timers[0].epoch_times_s)
    for meter in (c for c in callbacks if isinstance(c, ThroughputMeter)):
        summary.update(meter.totals())
        if summary.get("train/data_wait_share", 0) > DATA_WAIT_WARNING:
            log.warning("Training waited for data %.0f%% of the time: see the README's 'Is training waiting for "
                        "data?' for what to change", 100 * summary["train/data_wait_share"])
    best_ckpt = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
    if cfg.get("test", True):
        if not best_ckpt:
            log.warning("No best checkpoint was saved (fast_dev_run?); testing the current weights")
        trainer.test(module, datamodule=datamodule, ckpt_path=best_ckpt or None)
        summary.update(_scalars(trainer.callback_metrics))
        per_class = module.test_per_class.compute().tolist()
        summary["test/per_class_acc"] = dict(zip(module.class_names, per_class, strict=True))
        confusion = module.test_confusion.compute().cpu().numpy()  # metrics sync across ranks: all compute
        summary["test/confusion_matrix"] = confusion.tolist()
        if trainer.is_global_zero:
            plot_confusion_matrix(confusion, module.class_names, output_dir / "confusion_matrix.png")
    if videos.splits:
        summary.update(_data_honesty(videos, datamodule, monitor))
    if not trainer.is_global_zero:  # under DDP only rank 0 writes the run's files
        return summary, objects

    if getattr(getattr(getattr(module.net, "head", None), "pooling", None), "mode", None) == "attention":
        _plot_attention(module, datamodule, output_dir / "attention.png")
    metrics_csv = output_dir / "metrics.csv"
    if metrics_csv.is_file():
        plot_curves(metrics_csv, output_dir / "curves.png")
    last_ckpt = output_dir / "checkpoints" / "last.ckpt"
    summary.update({
        "class_names": module.class_names,
        "epochs_completed": trainer.current_epoch,
        "wall_time_s": round(time.perf_counter() - started, 2),
        "best_ckpt": str(Path(best_ckpt).resolve()) if best_ckpt else None,
        "last_ckpt": str(last_ckpt) if last_ckpt.is_file() else None,
        "output_dir": str(output_dir),
        "seed": seed,
    })
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    try:
        training_report(output_dir, summary, config_yaml(cfg), examples.examples)
    except Exception:  # the run's results are written: a report bug must not fail it
        log.exception("report.html could not be written")
    _report(summary, output_dir)
    return summary, objects


def _data_honesty(videos: VideoDataModule, datamodule: Any, monitor: BadVideoMonitor | None) -> dict[str, Any]:
    """What the metrics stand on: whether test is the validation set, and per split which videos were left out
    (at start-up, during feature extraction, or while decoding in validation/test) with the reason."""
    failed: list[dict[str, str]] = []
    for split in ("val", "test"):
        stages = [("index", videos.left_out.get(split, {}))]
        if isinstance(datamodule, FeatureDataModule):
            stages.append((f"{split} features", {f.path: f.reason for f in datamodule.failures.get(split, [])}))
        if monitor is not None:
            stages.append((split, monitor.failed.get(split, {})))
        seen: set[str] = set()
        for stage, rows in stages:
            for path, reason in rows.items():
                if path not in seen:
                    seen.add(path)
                    failed.append({"path": path, "reason": reason, "stage": stage, "split": split})
    counts = {f"{split}/videos_failed": sum(1 for f in failed if f["split"] == split) for split in ("val", "test")}
    return {"test_is_val": videos.test_is_val, **counts, "failed_videos": failed}


@torch.no_grad()
def _plot_attention(module: VideoClassifier, datamodule: Any, out_png: Path, clips: int = 8) -> None:
    """attention.png: the attention head's weights over time for the first validation clips."""
    batch = next((b for b in datamodule.val_dataloader() if b[0] is not None), None)
    if batch is None:
        return
    batch = datamodule.on_after_batch_transfer(batch, 0)  # the model's input (uint8 clips become float)
    module.eval()
    inputs, labels = batch[0][:clips], batch[1][:clips]
    predictions = module(inputs.to(module.device)).argmax(dim=-1).cpu()
    weights = module.net.head.attention_weights
    if weights is None or weights.dim() != 2:  # multi-clip inputs: no single weight row per clip
        return
    plot_attention(weights.cpu().numpy(), labels.tolist(), predictions.tolist(), module.class_names, out_png)


def _scalars(metrics: dict[str, Any]) -> dict[str, float]:
    return {key: round(float(value), 6) for key, value in metrics.items()}


def _report(summary: dict[str, Any], output_dir: Path) -> None:
    shown = {k: summary[k] for k in ("val/acc_best", "test/acc", "test/acc_top5", "test/mean_class_acc")
             if k in summary}
    log.info("Metrics: %s", ", ".join(f"{k}={v:.4f}" for k, v in shown.items()))
    log.info("Run folder: %s", output_dir)
    for name in ("report.html", "summary.json", "metrics.csv", "confusion_matrix.png", "curves.png"):
        if (output_dir / name).is_file():
            log.info("  %-20s %s", name, output_dir / name)
    if summary.get("best_ckpt"):
        log.info("  %-20s %s", "best checkpoint", summary["best_ckpt"])
