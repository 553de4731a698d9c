"""Prediction on several GPUs or machines with Lightning's ``trainer.predict``: each rank writes its own shard
(flushed per batch, resumable like a single-process run) and rank 0 merges the shards into the output file,
which has the same format as `vidlstm.inference.batch.predict_folder`'s."""

from __future__ import annotations

import csv
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from torch.utils.data import DataLoader, Dataset

from vidlstm.inference.batch import PredictionWriter, Unit, gather_inputs, video_unit
from vidlstm.inference.predictor import Predictor
from vidlstm.utils.textfiles import open_paths

log = logging.getLogger(__name__)


class _VideoUnits(Dataset):
    """Map-style: video i -> its `Unit` (all clips, or the error), so Lightning can shard it across ranks."""

    def __init__(self, predictor: Predictor, paths: Sequence[str]) -> None:
        self.predictor, self.paths = predictor, list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, video: int) -> Unit:
        return video_unit(self.predictor, self.paths, video)


class _PredictModule(L.LightningModule):
    def __init__(self, predictor: Predictor, paths: Sequence[str]) -> None:
        super().__init__()
        self.predictor, self.paths = predictor, list(paths)
        self.net = predictor.net

    def predict_step(self, units: list[Unit], batch_idx: int) -> list[dict[str, Any]]:
        good = [u for u in units if u.clips is not None]
        rows = []
        if good:
            self.predictor.device = self.device  # Lightning moved the net; keep the predictor in step
            probs = self.predictor.probabilities(torch.stack([u.clips for u in good]))
            rows += [self.predictor.row(self.paths[u.video], p, u.num_frames) for u, p in zip(good, probs,
                                                                                            strict=True)]
        rows += [self.predictor.error_row(self.paths[u.video], u.error) for u in units if u.clips is None]
        return rows


class ShardWriter(BasePredictionWriter):
    """Rows of rank r go to ``<output>.rank<r>`` as each batch finishes; at the end rank 0 appends every
    shard's rows that are not yet in ``output`` and removes the shards."""

    def __init__(self, output: str | os.PathLike) -> None:
        super().__init__(write_interval="batch")
        self.output = Path(output)
        self.writer: PredictionWriter | None = None

    def shard(self, rank: int) -> Path:
        return self.output.with_name(f"{self.output.name}.rank{rank}{self.output.suffix}")

    def setup(self, trainer: L.Trainer, module: L.LightningModule, stage: str) -> None:
        self.writer = PredictionWriter(self.shard(trainer.global_rank), windowed=False)

    def write_on_batch_end(self, trainer: L.Trainer, module: L.LightningModule, prediction: Any,
                           batch_indices: Any, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self.writer.write(prediction)

    def on_predict_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.writer.close()
        trainer.strategy.barrier()
        if trainer.is_global_zero:
            merge_shards(self.output, [self.shard(r) for r in range(trainer.world_size)])
        trainer.strategy.barrier()


def merge_shards(output: Path, shards: Sequence[Path]) -> None:
    """Append the rows of ``shards`` whose videos are not in ``output`` yet, then delete the shards."""
    merged = PredictionWriter(output, windowed=False)
    try:
        for shard in shards:
            if not shard.is_file():
                continue
            rows = _read_rows(shard, merged.format)
            merged.write([r for r in rows if r["path"] not in merged.done])
            merged.done.update(r["path"] for r in rows)
            shard.unlink()
    finally:
        merged.close()


def _read_rows(path: Path, fmt: str) -> list[dict[str, Any]]:
    with open_paths(path) as handle:
        if fmt == "jsonl":
            return [json.loads(line) for line in handle if line.strip()]
        return list(csv.DictReader(handle))


def predict_distributed(predictor: Predictor, source: str | os.PathLike, output: str | os.PathLike,
                        batch_size: int, num_workers: int, accelerator: str, devices: int | str, num_nodes: int,
                        strategy: str, resume: bool = True) -> dict[str, Any]:
    """`predict_folder` on several devices / nodes (video-level rows; window mode runs on one device)."""
    output = Path(output)
    paths = gather_inputs(source)
    if not resume and output.exists() and int(os.environ.get("LOCAL_RANK", "0")) == 0 \
            and int(os.environ.get("NODE_RANK", "0")) == 0:
        output.unlink()
    finished: set[str] = set()
    for path in [output, *output.parent.glob(f"{output.name}.rank*{output.suffix}")]:  # shards of a killed run
        existing = PredictionWriter(path, windowed=False)
        existing.close()
        finished |= existing.done
    todo = [p for p in paths if p not in finished]
    loader = DataLoader(_VideoUnits(predictor, todo), batch_size=batch_size, num_workers=num_workers,
                        collate_fn=list)
    writer = ShardWriter(output)
    trainer = L.Trainer(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                        callbacks=[writer], logger=False, enable_checkpointing=False, enable_model_summary=False,
                        precision="16-mixed" if accelerator == "gpu" else "32-true")
    trainer.predict(_PredictModule(predictor, todo), dataloaders=loader, return_predictions=False)
    return {"videos": len(paths), "skipped": len(paths) - len(todo), "output": str(output),
            "world_size": trainer.world_size}
