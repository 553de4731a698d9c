"""Callbacks specific to video training."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from vidlstm.data.probe import append_bad_videos

log = logging.getLogger(__name__)


class BadVideoMonitor(L.Callback):
    """Counts videos that failed to decode (replaced by others in training, left out in validation and test),
    lists them at the end of every stage in ``report_path`` (path, reason, stage, epoch; one row per video),
    and aborts the run with a clear message when a stage's failed share of clip loads exceeds the
    datamodule's ``max_bad_fraction``.

    Under DDP the counts and failures of all ranks are gathered at each stage's end: rank 0 alone writes the
    report, and every rank takes the same abort decision with the same message, so none is left waiting.
    ``failed[stage]`` holds {path: reason} of every video that failed in that stage during the run.
    """

    def __init__(self, report_path: str) -> None:
        self.report_path = Path(report_path)
        self.reported: dict[str, str] = {}
        self.failed: dict[str, dict[str, str]] = {}
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

    @staticmethod
    def _gather(trainer: L.Trainer, failures: list[tuple[str, str]], loads: int) -> tuple[list[tuple[str, str]], int]:
        """Every rank's failures and load count, on every rank."""
        if trainer.world_size == 1 or not torch.distributed.is_initialized():
            return failures, loads
        parts: list[Any] = [None] * trainer.world_size
        torch.distributed.all_gather_object(parts, (failures, loads))
        return [f for part, _ in parts for f in part], sum(n for _, n in parts)

    def _finish(self, trainer: L.Trainer, stage: str) -> None:
        failures, loads = self._gather(trainer, self.failures.get(stage, []), self.loads.get(stage, 0))
        if not failures:
            return
        self.failed.setdefault(stage, {}).update(failures)
        new = {path: reason for path, reason in failures if path not in self.reported}
        if new:
            self.reported.update(new)
            if trainer.is_global_zero:
                append_bad_videos(self.report_path, new, stage, trainer.current_epoch)
                for path, reason in new.items():
                    log.warning("%s video %s: %s", "Replaced undecodable" if stage == "train" else
                                "Left out undecodable", path, reason)
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


class ResumableModelCheckpoint(ModelCheckpoint):
    """`ModelCheckpoint` that remembers the best checkpoint across a resume into a new run folder.

    Lightning restores the best score only when the folder is unchanged; a resumed vidlstm run writes to a new
    folder, so the plain callback would forget the earlier epochs and call the first resumed epoch the best.
    Here the earlier run's best checkpoint is copied into the new folder and its score restored, so the finished
    run's ``best.ckpt`` is the best of all epochs, exactly as in an uninterrupted run.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        old_dir, old_best = state_dict.get("dirpath"), state_dict.get("best_model_path") or ""
        if old_dir == self.dirpath or not old_best or self.dirpath is None:
            super().load_state_dict(state_dict)
            return
        if not Path(old_best).is_file():
            raise FileNotFoundError(f"{old_best}: best checkpoint of the run being resumed is gone; resuming "
                                    "without it would forget the best epochs (restore it, or start a new run)")
        new_best = str(Path(self.dirpath) / Path(old_best).name)
        if rank_zero_only.rank == 0:
            Path(self.dirpath).mkdir(parents=True, exist_ok=True)
            partial = f"{new_best}.{os.getpid()}.partial"
            shutil.copyfile(old_best, partial)
            os.replace(partial, new_best)
        score = state_dict["best_model_score"]
        self.best_model_score, self.best_model_path = score, new_best
        self.best_k_models = {new_best: score} if score is not None else {}
        self.kth_best_model_path, self.kth_value = new_best, score if score is not None else self.kth_value


class NetworkBuilder(L.Callback):
    """Builds the module's network (`VideoClassifier.setup`) in the first callback ``setup`` hook, once the
    datamodule knows its classes: Lightning runs callbacks' ``setup`` before the module's, and a callback that
    copies the model there (EMA weight averaging) must see the whole network. `train` puts it first."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        pl_module.setup(stage)


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


class ThroughputMeter(L.Callback):
    """Whether training waits for data: clips/s and the share of training time spent waiting for the next batch.

    The wait is the time from the end of one training step (or the epoch's start) to the start of the next, in
    which the loop fetches the batch from the DataLoader; the rest is the step itself (on CUDA the device is
    synchronised at each step's end, as Lightning's ThroughputMonitor does, so queued kernels count as step time,
    not as waiting). Both show in the progress bar (``train/clips_per_s``, ``train/data_wait`` over the last
    ``window`` steps; clips/s of all ranks together under DDP, estimated as this rank's times the world size)
    and are logged per epoch; ``totals()`` gives the whole run's numbers (summed over ranks), which train() puts
    in summary.json. (Lightning's `Throughput` does not fit: it refuses a step whose clips all failed to decode.)
    """

    def __init__(self, window: int = 10) -> None:
        if window < 2:
            raise ValueError(f"ThroughputMeter: window must be >= 2, got {window}")
        self.window = window
        self.clips = 0
        self.wait_s = 0.0
        self.step_s = 0.0
        self._recent: deque[tuple[float, float, int]] = deque(maxlen=window)  # (wait, step, clips) of the last steps
        self._last_end: float | None = None
        self._step_started = 0.0
        self._epoch = (0, 0.0, 0.0)  # clips, wait, step at the epoch's start
        self._wait = 0.0
        self._totals: dict[str, float] = {}

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._last_end = time.perf_counter()
        self._epoch = (self.clips, self.wait_s, self.step_s)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        now = time.perf_counter()
        self._wait = now - self._last_end if self._last_end is not None else 0.0
        self._step_started = now

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.strategy.root_device.type == "cuda":
            torch.cuda.synchronize(trainer.strategy.root_device)
        now = time.perf_counter()
        step = now - self._step_started
        self._last_end = now
        clips = _clips_in(batch)
        self.clips += clips
        self.wait_s += self._wait
        self.step_s += step
        self._recent.append((self._wait, step, clips))
        waited = sum(w for w, _, _ in self._recent)
        total = waited + sum(s for _, s, _ in self._recent)
        if total > 0:
            rate = sum(c for _, _, c in self._recent) / total
            pl_module.log("train/clips_per_s", rate * trainer.world_size, prog_bar=True, on_step=True,
                          on_epoch=False, rank_zero_only=True)
            pl_module.log("train/data_wait", waited / total, prog_bar=True, on_step=True, on_epoch=False,
                          rank_zero_only=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        clips, wait_s, step_s = (self.clips - self._epoch[0], self.wait_s - self._epoch[1],
                                 self.step_s - self._epoch[2])
        if clips and wait_s + step_s > 0:
            pl_module.log("train/epoch_clips_per_s", clips / (wait_s + step_s) * trainer.world_size,
                          on_epoch=True, rank_zero_only=True)
            pl_module.log("train/epoch_data_wait", wait_s / (wait_s + step_s), on_epoch=True, rank_zero_only=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        local = torch.tensor([float(self.clips), self.wait_s, self.step_s], device=trainer.strategy.root_device)
        clips, wait_s, step_s = trainer.strategy.reduce(local, reduce_op="sum").tolist()  # every rank calls this
        busy = (wait_s + step_s) / trainer.world_size  # each rank's training time, on average
        self._totals = {} if not clips or busy <= 0 else {
            "train/clips_per_s": round(clips / busy, 2),  # all ranks together
            "train/data_wait_share": round(wait_s / (wait_s + step_s), 4),
        }

    def totals(self) -> dict[str, float]:
        """The run's numbers over all ranks (empty before training ended): clips/s of training, waiting included,
        and the share of training time spent waiting for data."""
        return dict(self._totals)


def _clips_in(batch: Any) -> int:
    """Clips (videos that decoded, or cached feature sequences) in a training batch."""
    labels = getattr(batch, "labels", None)
    if labels is None and isinstance(batch, tuple | list) and len(batch) > 1:
        labels = batch[1]
    return int(labels.shape[0]) if isinstance(labels, torch.Tensor) and labels.dim() else 0
