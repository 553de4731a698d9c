"""LightningDataModule over video sources: indexes splits, builds datasets and DataLoaders."""

from __future__ import annotations

import functools
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterator, Sequence, Sized
from typing import Any, Protocol

import lightning as L
import torch
from torch.utils.data import DataLoader, DistributedSampler

from vidlstm.data.batch_memory import DEFAULT_SLOTS
from vidlstm.data.cache import FrameCache
from vidlstm.data.dataset import VideoClipDataset, collate_clips
from vidlstm.data.index import SPLITS, VideoRecord, carve_splits
from vidlstm.data.probe import append_bad_videos, probe_records
from vidlstm.data.transforms import identity, uint8_and_float
from vidlstm.data.video import AUTO_ORDER, backend_available
from vidlstm.data.video.auto import GPU_BACKENDS
from vidlstm.utils.seeding import derived_seed

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


def _world() -> tuple[int, int]:
    """(world size, rank) of the running process group, (1, 0) outside one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size(), torch.distributed.get_rank()
    return 1, 0


class SeededShuffleSampler(DistributedSampler):
    """Training order from ``(seed, epoch)`` alone, split across ranks like `DistributedSampler` (Lightning
    keeps it and calls ``set_epoch``). Yields ``(index, sample seed)`` so each clip's frame choice and
    augmentation depend on the run's seed, the epoch and the video only: the same with any worker count, and
    the same after resuming from a checkpoint as in an uninterrupted run."""

    def __init__(self, dataset: Sized, seed: int) -> None:
        world, rank = _world()
        super().__init__(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[tuple[int, int]]:  # type: ignore[override]
        for index in super().__iter__():
            yield index, derived_seed(self.seed, "sample", self.epoch, index)


def unpadded_distributed_sampler(dataset: Sized) -> UnpaddedDistributedSampler | None:
    """An `UnpaddedDistributedSampler` under multi-process training (Lightning keeps a loader's own
    DistributedSampler instead of its padding one), else None."""
    return UnpaddedDistributedSampler(dataset) if _world()[0] > 1 else None


def loader_speed(pin_memory: bool | str, prefetch_factor: int | str, num_workers: int, trainer: Any
                 ) -> dict[str, Any]:
    """DataLoader settings that change speed only: ``pin_memory`` and ``prefetch_factor`` as given, or, for
    "auto", what suits the device the ``trainer`` (None: not known) runs on: page-locked memory (so the copy to
    the GPU is asynchronous: Lightning moves batches with ``non_blocking=True``) and 4 batches prefetched per
    worker on CUDA; neither costs anything on a CPU, where they are off / 2 (PyTorch's default)."""
    for name, value in (("pin_memory", pin_memory), ("prefetch_factor", prefetch_factor)):
        if isinstance(value, str) and value != "auto":
            raise ValueError(f"data.{name}: expected {'true/false' if name == 'pin_memory' else 'an int'} or "
                             f"'auto', got {value!r}")
    on_gpu = trainer is not None and trainer.strategy.root_device.type == "cuda"
    settings: dict[str, Any] = {"pin_memory": on_gpu if pin_memory == "auto" else bool(pin_memory)}
    if num_workers > 0:
        settings["prefetch_factor"] = (4 if on_gpu else 2) if prefetch_factor == "auto" else int(prefetch_factor)
    return settings


def _check_decode_device(decode_device: str, backend: str, num_workers: int) -> None:
    """Refuse GPU decoding settings that cannot work, with the setting to change."""
    if decode_device not in ("cpu", "cuda"):
        raise ValueError(f"data.decode_device: expected 'cpu' or 'cuda', got {decode_device!r}")
    if decode_device == "cpu":
        return
    if num_workers:
        raise ValueError("data.decode_device=cuda decodes in the main process (CUDA does not work in forked "
                         f"DataLoader workers): set data.num_workers=0 (got {num_workers})")
    if backend not in ("auto", *GPU_BACKENDS):
        raise ValueError(f"data.decode_device=cuda needs data.backend=auto or one of {GPU_BACKENDS}, got {backend!r}")
    if not backend_available("torchcodec"):
        raise ValueError("data.decode_device=cuda decodes with torchcodec, which is not installed or cannot load "
                         "here (pip install -e '.[torchcodec]' and system FFmpeg)")


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
            hash of each video's group (``val_fraction`` / ``test_fraction``), so splits never change between
            runs and clips of one group (UCF101 ``_gNN_``, an HMDB51 source video, ``group_pattern``) never
            sit in two splits.
        group_pattern: regex whose first group (or whole match) in a file name is its group, for layouts whose
            sources do not know their groups; None: each video is its own group unless its source says.
        train_sampler / eval_sampler: factories ``(num_frames) -> sampler`` (Hydra partials).
        test_sampler: factory for test clips (e.g. a `MultiClipSampler`); None: ``eval_sampler``.
        train_transform / eval_transform: factories ``(size) -> transform`` (Hydra partials).
        backend: video decoder ("auto" picks per file, see `vidlstm.data.video.open_video`).
        backend_order: the order "auto" tries backends in.
        max_bad_fraction: a stage aborts when more than this share of its clip loads failed (undecodable
            videos are reported; in training they are replaced by others, in validation and test they are left
            out, never replaced; see `vidlstm.training.callbacks.BadVideoMonitor`).
        max_retries: replacements tried in a row for one training sample before giving up.
        num_workers / persistent_workers: DataLoader worker processes, kept alive between epochs.
        batch_memory_slots: shared-memory buffers each worker reuses for its batches (a batch crosses to the
            main process without a new file and file-descriptor hand-over; one still held is never
            overwritten); 0: a fresh shared-memory file per batch, PyTorch's default (see `batch_memory`).
        decode_device: "cpu", or "cuda": decode with torchcodec's GPU decoder (NVDEC) on the training GPU and
            transform there, in the main process (``num_workers=0``); pays for high-resolution video, where CPU
            decoding cannot keep up. Files torchcodec refuses are decoded on the CPU and moved to the GPU.
        pin_memory / prefetch_factor: True/False and batches per worker, or "auto": on for CUDA and 4 batches,
            off and 2 on a CPU (see `loader_speed`).
        normalize_on_device: the loader hands over uint8 clips (the transform's steps before its float
            conversion) and the conversion and normalisation run on the training device after the batch is moved
            there (`on_after_batch_transfer`): a quarter of the bytes through worker shared memory, pinned memory
            and the host-to-GPU copy, and no float pass in the workers. False: the loader returns float clips.
        decode_timeout_s: a video whose probing, opening or decoding takes longer fails.
        frame_cache: folder for a `FrameCache` (None: decode every epoch), filled in ``prepare_data`` by
            ``probe_workers`` processes; ``frame_cache_size`` is its short side in pixels (default ``image_size``).
        feature_cache: train the head from cached features of a frozen encoder (see
            `vidlstm.training.features`); ``feature_cache_dir`` holds them as ``feature_dtype``.
        probe: open every video once at setup (in parallel, cached in ``probe_cache`` by path + size + mtime)
            and leave unreadable ones out of the index, listing them in ``quarantine_report``.
        probe_workers: processes used for probing.
        prepare: optional object whose ``prepare()`` creates the data (the synthetic demo renders its videos).
        prepare_data_per_node: False: rendering, probing and the quarantine report happen once, on global rank
            0 (a shared file system); True: on local rank 0 of every node (node-local data).
        seed: seeds the training order and every training clip's sampling and augmentation (see
            `SeededShuffleSampler`).
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
        pin_memory: bool | str = "auto",
        prefetch_factor: int | str = "auto",
        normalize_on_device: bool = True,
        persistent_workers: bool = True,
        batch_memory_slots: int = DEFAULT_SLOTS,
        backend: str = "auto",
        backend_order: Sequence[str] = AUTO_ORDER,
        decode_device: str = "cpu",
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
        prepare_data_per_node: bool = False,
        group_pattern: str | None = None,
        seed: int = 0,
        root: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.sources = {"train": train, "val": val, "test": test}
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.group_pattern, self.seed = group_pattern, seed
        self.prepare_data_per_node = prepare_data_per_node
        self.num_frames, self.image_size = num_frames, image_size
        self.train_sampler, self.eval_sampler = train_sampler(num_frames), eval_sampler(num_frames)
        self.test_sampler = test_sampler(num_frames) if test_sampler else self.eval_sampler
        self.train_transform, self.eval_transform = train_transform(image_size), eval_transform(image_size)
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.pin_memory, self.prefetch_factor = num_workers, pin_memory, prefetch_factor
        loader_speed(pin_memory, prefetch_factor, num_workers, None)  # a bad value fails here, not at fit time
        self.normalize_on_device = normalize_on_device
        # {train?: (loader part, device part)}, split once: the device part runs on every batch
        self._parts = {train: uint8_and_float(t) if normalize_on_device else (t, identity)
                       for train, t in ((True, self.train_transform), (False, self.eval_transform))}
        self.persistent_workers = persistent_workers and num_workers > 0
        self.batch_memory_slots = batch_memory_slots
        self.backend, self.backend_order = backend, tuple(backend_order)
        self.decode_device = decode_device
        _check_decode_device(decode_device, backend, num_workers)
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
        self.test_is_val = False
        self.left_out: dict[str, dict[str, str]] = {split: {} for split in SPLITS}  # {path: reason} per split
        self._prepared = False

    def prepare_data(self) -> None:
        """Work done once (Lightning calls it on rank 0 only, then holds the other ranks at a barrier): create
        the data, probe every video into the probe cache, and list the unreadable ones in the quarantine
        report."""
        if self._prepared:  # Lightning calls it again for trainer.test: report each video once
            return
        if self.preparer is not None:
            self.preparer.prepare()
        splits = self._index() if self.probe or self.frame_cache is not None else {}
        if self.probe:
            self._probe(splits, report=True)
        if self.frame_cache is not None:
            readable = [r for records in splits.values() for r in records if r.path not in self.quarantined]
            self.frame_cache.fill(readable, self.backend, self.decode_timeout_s, self.probe_workers)
        self._prepared = True

    def _index(self) -> dict[str, list[VideoRecord]]:
        """Every split's records; a split without its own source is carved out of the training source."""
        fractions = [self.val_fraction if self.sources["val"] is None else 0.0,
                     self.test_fraction if self.sources["test"] is None else 0.0]
        splits = carve_splits(self.sources["train"].records(), *fractions, group_pattern=self.group_pattern)
        for split in ("val", "test"):
            if self.sources[split] is not None:
                splits[split] = self.sources[split].records()
        return splits

    def setup(self, stage: str | None = None) -> None:
        """Every rank: index the splits and leave out the videos probing found unreadable (read from the probe
        cache that `prepare_data` filled; nothing is written here)."""
        trainer = self.trainer
        if self.probe and self.probe_cache is None and trainer is not None and trainer.world_size > 1:
            raise ValueError("data.probe_cache=null with several processes: each would probe on its own and could "
                             "leave out different videos; set data.probe_cache to a path on a shared file system")
        if self.splits:
            return
        splits = self._index()
        if self.probe:
            if not self._prepared:  # another rank (or no prepare_data): the probe cache rank 0 filled answers
                self._probe(splits, report=False)
            self.left_out = {split: {r.path: self.quarantined[r.path] for r in records if r.path in self.quarantined}
                             for split, records in splits.items()}
            splits = {split: [r for r in records if r.path not in self.quarantined]
                      for split, records in splits.items()}
        self.class_names = sorted({r.label for r in splits["train"]}, key=natural_key)
        for split in ("val", "test"):
            unknown = sorted({r.label for r in splits[split]} - set(self.class_names))
            if unknown:
                raise ValueError(f"{split} split has classes absent from training data: {unknown[:10]}")
        for split in SPLITS:
            if not splits[split]:
                raise ValueError(f"the {split} split is empty; add videos or change val/test fractions")
        self.test_is_val = {r.path for r in splits["test"]} == {r.path for r in splits["val"]}
        if self.test_is_val:
            log.warning("The test split is the validation split: test metrics are not independent of model "
                        "selection (summary.json says test_is_val: true)")
        self.splits = splits

    def _probe(self, splits: dict[str, list[VideoRecord]], report: bool) -> None:
        """Fill ``quarantined`` ({path: reason}); with ``report``, log and list them in the quarantine report."""
        everything = [r for split in SPLITS for r in splits[split]]
        _, self.quarantined = probe_records(everything, self.probe_cache, self.probe_workers,
                                            timeout_s=self.decode_timeout_s)
        if report and self.quarantined:
            log.warning("%d unreadable videos left out of the index%s", len(self.quarantined),
                        f"; list in {self.quarantine_report}" if self.quarantine_report else "")
            if self.quarantine_report:
                append_bad_videos(self.quarantine_report, self.quarantined, "index", None)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_counts(self, split: str = "train") -> dict[str, int]:
        counts = Counter(r.label for r in self.splits[split])
        return {name: counts.get(name, 0) for name in self.class_names}

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """uint8 clips (``normalize_on_device``) become the model's float input, on the device they now sit on."""
        clips = getattr(batch, "clips", None)
        if isinstance(clips, torch.Tensor) and clips.dtype == torch.uint8:
            training = self.trainer is not None and self.trainer.training
            batch = batch._replace(clips=self._parts[training][1](clips))
        return batch

    def dataset(self, split: str) -> VideoClipDataset:
        """The split's clips as the loader hands them over (uint8 with ``normalize_on_device``)."""
        train = split == "train"
        sampler = {"train": self.train_sampler, "test": self.test_sampler}.get(split, self.eval_sampler)
        return VideoClipDataset(
            self.splits[split],
            self.class_names,
            sampler,
            self._parts[train][0],
            self.backend,
            self.max_retries,
            self.decode_timeout_s,
            self.frame_cache,
            self.backend_order,
            replace_failures=train,
            decode_device=self._decode_device(),
        )

    def _decode_device(self) -> str:
        """"cpu", or for decode_device=cuda the GPU this process trains on."""
        if self.decode_device == "cpu":
            return "cpu"
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        if device is None or device.type != "cuda":
            raise ValueError(f"data.decode_device=cuda needs training on a GPU (trainer=gpu); this run is on "
                             f"{device or 'no trainer'}")
        return str(device)

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        dataset = self.dataset(split)
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            sampler=SeededShuffleSampler(dataset, self.seed) if train else unpadded_distributed_sampler(dataset),
            drop_last=train and len(self.splits[split]) > self.batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.persistent_workers,
            collate_fn=functools.partial(collate_clips, batch_memory_slots=self.batch_memory_slots),
            **loader_speed(self.pin_memory if self.decode_device == "cpu" else False, self.prefetch_factor,
                           self.num_workers, self.trainer),  # frames decoded on the GPU are already there
        )

    def state_dict(self) -> dict[str, Any]:
        """Saved in checkpoints so a model maps its outputs back to class names."""
        return {"class_names": list(self.class_names), "num_frames": self.num_frames,
                "image_size": self.image_size}
