"""Callbacks specific to video training."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning as L

from vidlstm.data.probe import append_bad_videos

log = logging.getLogger(__name__)


class BadVideoMonitor(L.Callback):
    """Counts videos that failed to decode (and were replaced by others), lists them at the end of every
    stage in ``report_path`` (path, reason, stage, epoch; one row per video), and aborts the run with a
    clear message when a stage's failed share of clip loads exceeds the datamodule's ``max_bad_fraction``.
    """

    def __init__(self, report_path: str) -> None:
        self.report_path = Path(report_path)
        self.reported: dict[str, str] = {}
        # Per stage: validation runs inside the training epoch, so the two must not share counters.
        self.failures: dict[str, list[tuple[str, str]]] = {}
        self.loads: dict[str, int] = {}

    def _start(self, stage: str) -> None:
        self.failures[stage], self.loads[stage] = [], 0

    def _collect(self, stage: str, batch: Any) -> None:
        failures = getattr(batch, "failures", [])
        self.failures[stage].extend((f.path, f.reason) for f in failures)
        self.loads[stage] += len(batch[1]) + len(failures)

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start("train")

    def on_validation_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start("val")

    def on_test_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start("test")

    def on_train_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        self._collect("train", batch)

    def on_validation_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                                batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect("val", batch)

    def on_test_batch_end(self, trainer: L.Trainer, module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect("test", batch)

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._finish(trainer, "train")

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._finish(trainer, "val")

    def on_test_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._finish(trainer, "test")

    def _finish(self, trainer: L.Trainer, stage: str) -> None:
        failures, loads = self.failures.get(stage, []), self.loads.get(stage, 0)
        if not failures:
            return
        new = {path: reason for path, reason in failures if path not in self.reported}
        if new:
            self._append_report(new, stage, trainer.current_epoch)
            for path, reason in new.items():
                log.warning("Skipped undecodable video %s: %s", path, reason)
        fraction = len(failures) / max(loads, 1)
        log.warning("%s epoch %d: %d of %d clip loads failed (%.1f%%); list in %s", stage, trainer.current_epoch,
                    len(failures), loads, 100 * fraction, self.report_path)
        limit = getattr(trainer.datamodule, "max_bad_fraction", 1.0)
        if fraction > limit:
            raise RuntimeError(
                f"{len(failures)} of {loads} clip loads ({100 * fraction:.1f}%) failed in {stage} epoch "
                f"{trainer.current_epoch}, above data.max_bad_fraction={limit}; the videos and reasons are in "
                f"{self.report_path}"
            )

    def _append_report(self, rows: dict[str, str], stage: str, epoch: int) -> None:
        append_bad_videos(self.report_path, rows, stage, epoch)
        self.reported.update(rows)


class EpochTimer(L.Callback):
    """Wall time of each training epoch (validation included), in ``epoch_times_s``; train() reports the
    median as ``epoch_time_s``."""

    def __init__(self) -> None:
        self.epoch_times_s: list[float] = []
        self._started: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._started = time.perf_counter()

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._started is not None and not trainer.sanity_checking:
            self.epoch_times_s.append(round(time.perf_counter() - self._started, 4))
            self._started = None

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if self._started is not None and not trainer.enable_validation:
            self.epoch_times_s.append(round(time.perf_counter() - self._started, 4))
            self._started = None
