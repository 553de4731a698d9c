"""LightningDataModule over video sources: indexes splits, builds datasets and DataLoaders."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence, Sized
from typing import Any, Protocol

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from vidlstm.data.cache import FrameCache
from vidlstm.data.dataset import VideoClipDataset, collate_clips
from vidlstm.data.index import SPLITS, VideoRecord, stable_split
from vidlstm.data.probe import append_bad_videos, probe_records
from vidlstm.data.video import AUTO_ORDER

log = logging.getLogger(__name__)


def natural_key(name: str) -> tuple:
    """Sort "2" before "10" (numeric labels from list files) and names alphabetically."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part)


class VideoSource(Protocol):
    def records(self) -> list[VideoRecord]: ...


class UnpaddedDistributedSampler(DistributedSampler):
    """Every index exactly once across ranks (rank r takes r, r + W, ...): no padding, so distributed
    validation and test metrics count each video once. Ranks may get one batch more or less, which is fine
    for evaluation (no gradient synchronisation)."""

    def __init__(self, dataset: Sized) -> None:
        super().__init__(dataset, shuffle=False, drop_last=False)  # type: ignore[arg-type]
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, len(self.dataset), self.num_replicas))  # type: ignore[arg-type]


def unpadded_distributed_sampler(dataset: Sized) -> UnpaddedDistributedSampler | None:
    """An `UnpaddedDistributedSampler` under multi-process training (Lightning keeps a loader's own
    DistributedSampler instead of its padding one), else None."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        return UnpaddedDistributedSampler(dataset)
    return None


class SplitLoaders:
    """Lightning's train/val/test loader hooks, all served by the class's ``_loader(split)``."""

    _loader: Callable[[str], DataLoader]

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")


class Preparer(Protocol):
    def prepare(self) -> Any: ...


class VideoDataModule(SplitLoaders, L.LightningDataModule):
    """Clips of ``num_frames`` frames at ``image_size`` pixels, batched as (B, T, 3, H, W).

    Args:
        train: source of training videos. Class names are the sorted labels found here.
        val / test: sources for validation and test; when None, they are carved out of ``train`` by a stable
            hash of each file (``val_fraction`` / ``test_fraction``), so splits never change between runs.
        train_sampler / eval_sampler: factories ``(num_frames) -> sampler`` (Hydra partials).
        test_sampler: factory for test clips (e.g. a `MultiClipSampler`); None: ``eval_sampler``.
        train_transform / eval_transform: factories ``(size) -> transform`` (Hydra partials).
        backend: video decoder ("auto" picks per file, see `vidlstm.data.video.open_video`).
        backend_order: the order "auto" tries backends in.
        max_bad_fraction: a stage aborts when more than this share of its clip loads failed (undecodable
            videos are replaced by others and reported; see `vidlstm.training.callbacks.BadVideoMonitor`).
        max_retries: replacements tried in a row for one sample before giving up.
        decode_timeout_s: a video whose probing, opening or decoding takes longer fails (and is replaced).
        frame_cache: folder for a `FrameCache` (None: decode every epoch); ``frame_cache_size`` is its short
            side in pixels (default ``image_size``).
        feature_cache: train the head from cached features of a frozen encoder (see
            `vidlstm.data.features`); ``feature_cache_dir`` holds them as ``feature_dtype``.
        probe: open every video once at setup (in parallel, cached in ``probe_cache`` by path + size + mtime)
            and leave unreadable ones out of the index, listing them in ``quarantine_report``.
        probe_workers: processes used for probing.
        prepare: optional object whose ``prepare()`` creates the data (the synthetic demo renders its videos).
        root: the dataset's root folder, recorded in the run summary.
        params: dataset settings the sources share through config interpolation (split files, split number),
            kept here for the record.
    """

    def __init__(
        self,
        train: VideoSource,
        train_sampler: Callable[..., Callable[[int], list[int]]],
        eval_sampler: Callable[..., Callable[[int], list[int]]],
        train_transform: Callable[..., Callable],
        eval_transform: Callable[..., Callable],
        test_sampler: Callable[..., Callable] | None = None,
        val: VideoSource | None = None,
        test: VideoSource | None = None,
        val_fraction: float = 0.1,
        test_fraction: float = 0.1,
        num_frames: int = 16,
        image_size: int = 112,
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        pin_memory: bool = False,
        persistent_workers: bool = True,
        backend: str = "auto",
        backend_order: Sequence[str] = AUTO_ORDER,
        max_bad_fraction: float = 0.05,
        max_retries: int = 10,
        decode_timeout_s: float | None = 60.0,
        frame_cache: str | None = None,
        frame_cache_size: int | None = None,
        feature_cache: bool = False,
        feature_cache_dir: str | None = None,
        feature_dtype: str = "float16",
        probe: bool = True,
        probe_cache: str | None = None,
        probe_workers: int = 2,
        quarantine_report: str | None = None,
        prepare: Preparer | None = None,
        root: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.sources = {"train": train, "val": val, "test": test}
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.num_frames, self.image_size = num_frames, image_size
        self.train_sampler, self.eval_sampler = train_sampler(num_frames), eval_sampler(num_frames)
        self.test_sampler = test_sampler(num_frames) if test_sampler else self.eval_sampler
        self.train_transform, self.eval_transform = train_transform(image_size), eval_transform(image_size)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.backend, self.backend_order = backend, tuple(backend_order)
        self.max_bad_fraction, self.max_retries = max_bad_fraction, max_retries
        self.decode_timeout_s = decode_timeout_s
        self.frame_cache = FrameCache(frame_cache, frame_cache_size or image_size) if frame_cache else None
        if feature_cache and not feature_cache_dir:
            raise ValueError("feature_cache=true needs feature_cache_dir (where the features are stored)")
        self.feature_cache, self.feature_cache_dir, self.feature_dtype = feature_cache, feature_cache_dir, feature_dtype
        self.probe, self.probe_cache, self.probe_workers = probe, probe_cache, probe_workers
        self.quarantine_report = quarantine_report
        self.quarantined: dict[str, str] = {}
        self.preparer = prepare
        self.root = root
        self.params = dict(params or {})
        self.splits: dict[str, list[VideoRecord]] = {}
        self.class_names: list[str] = []

    def prepare_data(self) -> None:
        if self.preparer is not None:
            self.preparer.prepare()

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        # A split without its own source is carved out of the training source.
        fractions = [self.val_fraction if self.sources["val"] is None else 0.0,
                     self.test_fraction if self.sources["test"] is None else 0.0]
        splits: dict[str, list[VideoRecord]] = {split: [] for split in SPLITS}
        for record in self.sources["train"].records():
            splits[stable_split(record.path, *fractions)].append(record)
        for split in ("val", "test"):
            if self.sources[split] is not None:
                splits[split] = self.sources[split].records()
        if self.probe:
            splits = self._quarantine(splits)
        self.class_names = sorted({r.label for r in splits["train"]}, key=natural_key)
        for split in ("val", "test"):
            unknown = sorted({r.label for r in splits[split]} - set(self.class_names))
            if unknown:
                raise ValueError(f"{split} split has classes absent from training data: {unknown[:10]}")
        for split in SPLITS:
            if not splits[split]:
                raise ValueError(f"the {split} split is empty; add videos or change val/test fractions")
        self.splits = splits

    def _quarantine(self, splits: dict[str, list[VideoRecord]]) -> dict[str, list[VideoRecord]]:
        everything = [r for split in SPLITS for r in splits[split]]
        _, self.quarantined = probe_records(everything, self.probe_cache, self.probe_workers)
        if self.quarantined:
            log.warning("%d unreadable videos left out of the index%s", len(self.quarantined),
                        f"; list in {self.quarantine_report}" if self.quarantine_report else "")
            if self.quarantine_report:
                append_bad_videos(self.quarantine_report, self.quarantined, "index", None)
        return {split: [r for r in records if r.path not in self.quarantined] for split, records in splits.items()}

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self, split: str = "train") -> dict[str, int]:
        counts = Counter(r.label for r in self.splits[split])
        return {name: counts.get(name, 0) for name in self.class_names}

    def dataset(self, split: str) -> VideoClipDataset:
        train = split == "train"
        sampler = {"train": self.train_sampler, "test": self.test_sampler}.get(split, self.eval_sampler)
        return VideoClipDataset(
            self.splits[split],
            self.class_names,
            sampler,
            self.train_transform if train else self.eval_transform,
            self.backend,
            self.max_retries,
            self.decode_timeout_s,
            self.frame_cache,
            self.backend_order,
        )

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        dataset = self.dataset(split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train,
            sampler=None if train else unpadded_distributed_sampler(dataset),
            drop_last=train and len(self.splits[split]) > self.batch_size,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers,
            collate_fn=collate_clips,
        )

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints so a model maps its outputs back to class names."""
        return {"class_names": list(self.class_names), "num_frames": self.num_frames,
                "image_size": self.image_size}
