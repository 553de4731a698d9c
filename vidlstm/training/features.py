"""Feature-cache training: run a frozen encoder once over every sampled frame, train the head from disk.

`FeatureCache` stores one ``(T, D)`` array per video (``(N, T, D)`` for multi-clip test samplers) under a key
made of the video file (path, size, mtime, segment), the full description of the sampler, the transform and
the frame source (see `describe`), the encoder's weights fingerprint and the dtype, so a change to any of them
computes new features instead of reusing stale ones. A video that cannot be decoded gets a failure marker
(``<key>.failed.json``, with the reason) in place of its features; changing the file retries it.

`FeatureDataModule` follows Lightning's contract: extraction happens once, in ``prepare_data`` (rank 0), and
every rank reads the stored features in ``setup``. It serves them as batches shaped like the clip batches,
with features in place of frames.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import json
import logging
import os
import time
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vidlstm.data.datamodule import SeededShuffleSampler, SplitLoaders, unpadded_distributed_sampler
from vidlstm.data.dataset import ClipSample, Failure, VideoClipDataset, collate_clips
from vidlstm.data.index import SPLITS, VideoRecord
from vidlstm.data.probe import append_bad_videos
from vidlstm.data.video import VideoDecodeError
from vidlstm.utils.progress import progress

log = logging.getLogger(__name__)
FEATURE_DTYPES = ("float16", "float32")
CACHE_FORMAT = 7  # part of every key: bump it when what is stored under a key changes (3-7: see data.cache)
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}


def describe(obj: Any) -> Any:
    """Every setting of ``obj`` as plain JSON-ready data, the same in every process (no ids, no addresses).

    Scalars stay as they are; sequences and mappings are described item by item; enums, dtypes and functions
    by name; tensors and arrays as nested lists; any other object as ``{"__type__": module.qualname}`` plus
    each of its public attributes (``vars``, or ``__slots__``), recursively. A sampler thus gives all its
    arguments, and a `ClipTransform` its v2 pipeline: each transform with all its parameters (sizes,
    interpolation, antialias, mean/std, ...). Raises TypeError for an object without attributes to read.
    """
    if obj is None or (isinstance(obj, (bool, int, float, str)) and not isinstance(obj, enum.Enum)):
        return obj
    if isinstance(obj, enum.Enum):
        return f"{_qualified(type(obj))}.{obj.name}"
    if isinstance(obj, (torch.dtype, torch.device, torch.memory_format)):
        return str(obj)
    if isinstance(obj, (torch.Tensor, np.ndarray, np.generic)):
        return describe(obj.tolist())
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Mapping):
        return {str(key): describe(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [describe(item) for item in obj]
    if isinstance(obj, functools.partial):
        return {"__type__": "functools.partial", "func": describe(obj.func), "args": describe(obj.args),
                "keywords": describe(obj.keywords)}
    if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType, types.MethodType)):
        return _qualified(obj)
    if hasattr(obj, "__dict__"):
        names = list(vars(obj))
    elif hasattr(type(obj), "__slots__"):
        names = [n for cls in type(obj).__mro__ for n in getattr(cls, "__slots__", ()) if hasattr(obj, n)]
    else:
        raise TypeError(f"cannot describe a {_qualified(type(obj))}: it has no attributes to read")
    skipped = {"training"} if isinstance(obj, torch.nn.Module) else set()  # a module's mode, not a setting
    public = sorted(n for n in names if not n.startswith("_") and n not in skipped)
    return {"__type__": _qualified(type(obj)), **{name: describe(getattr(obj, name)) for name in public}}


def _qualified(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', getattr(obj, '__name__', '?'))}"


class FeatureCache:
    """Features of a frozen `FrameEncoder` on disk: ``<key>.npy`` per (video, sampler, transform, frame
    source, encoder weights, dtype), or ``<key>.failed.json`` for a video that could not be decoded.

    Args:
        root: folder of the cache (shared by runs; entries never collide, see the module docstring).
        encoder: the frozen encoder (its `trunk_features` are stored; the projection stays trainable).
        dtype: "float16" (half the disk and memory) or "float32".
        batch_size / num_workers: clips per encoder call and decoding workers while extracting.
    """

    def __init__(self, root: str | os.PathLike, encoder: torch.nn.Module, dtype: str = "float16",
                 batch_size: int = 8, num_workers: int = 0) -> None:
        if dtype not in FEATURE_DTYPES:
            raise ValueError(f"feature dtype must be one of {FEATURE_DTYPES}, got {dtype!r}")
        self.root = Path(root)
        self.encoder, self.dtype = encoder, dtype
        self.batch_size, self.num_workers = batch_size, num_workers

    def settings(self, dataset: VideoClipDataset) -> dict[str, Any]:
        """What the features of ``dataset``'s videos depend on besides the files themselves. The encoder's
        fingerprint is taken now, so weights loaded after the cache was made count."""
        frame_cache = dataset.frame_cache
        frames = {"backend": dataset.backend, "backend_order": list(dataset.backend_order),
                  "frame_cache_short_side": None if frame_cache is None else frame_cache.short_side}
        return {"format": CACHE_FORMAT, "sampler": describe(dataset.sampler),
                "transform": describe(dataset.transform), "frames": frames,
                "encoder": self.encoder.fingerprint(), "dtype": self.dtype}

    @staticmethod
    def key(record: VideoRecord, settings: Mapping[str, Any]) -> str:
        """The entry name of ``record``'s features under ``settings`` (see `settings`)."""
        try:
            stat = os.stat(record.path)
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:  # fails to decode and gets a marker; the file appearing later changes its key
            size = mtime = None
        video = [os.path.abspath(record.path), size, mtime, record.start_s, record.end_s]
        return hashlib.sha1(json.dumps([video, settings], sort_keys=True).encode()).hexdigest()

    def keys(self, dataset: VideoClipDataset) -> list[str]:
        """The key of every video of ``dataset``, in order."""
        settings = self.settings(dataset)
        return [self.key(record, settings) for record in dataset.records]

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def failure_path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.failed.json"

    def extract(self, dataset: VideoClipDataset, keys: Sequence[str], description: str,
                device: torch.device | None = None) -> int:
        """Store features (or a failure marker) for every video of ``dataset`` that has neither yet; returns
        how many videos were extracted. ``device``: where the encoder runs meanwhile (e.g. the run's GPU; it
        goes back where it was afterwards); None: where it is."""
        todo = [i for i, key in enumerate(keys) if not (self.path(key).is_file() or self.failure_path(key).is_file())]
        if todo:
            home = next(self.encoder.parameters()).device
            try:
                self.encoder.to(device or home)
                self._extract(dataset, keys, todo, description)
            finally:
                self.encoder.to(home)
        return len(todo)

    def read(self, dataset: VideoClipDataset, keys: Sequence[str]) -> tuple[list[Path], list[int], list[Failure]]:
        """(feature files, labels, failures) of ``dataset``'s videos from stored entries only: a video with a
        failure marker is left out and listed; one with neither entry raises FileNotFoundError."""
        files, labels, failures = [], [], []
        for record, key in zip(dataset.records, keys, strict=True):
            if self.path(key).is_file():
                files.append(self.path(key))
                labels.append(dataset.label_of(record))
            elif self.failure_path(key).is_file():
                failures.append(Failure(record.path, json.loads(self.failure_path(key).read_text())["reason"]))
            else:
                raise FileNotFoundError(f"{record.path}: features missing: run prepare_data first")
        return files, labels, failures

    @torch.no_grad()
    def _extract(self, dataset: VideoClipDataset, keys: Sequence[str], todo: list[int], description: str) -> None:
        loader = DataLoader(_Unreplaced(dataset, todo), batch_size=self.batch_size, num_workers=self.num_workers,
                            collate_fn=_collate_extracted)
        was_training = self.encoder.training
        self.encoder.eval()
        device = next(self.encoder.parameters()).device
        # Extraction must not shift the global RNG: the run that follows stays identical to one without it. Only
        # the device in use is forked (forking every GPU would open a context on each before DDP starts).
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), progress() as bar:
            task = bar.add_task(f"Features: {description}", total=len(todo))
            for indices, clips, failures in loader:
                for index, failure in failures:
                    self._write(self.failure_path(keys[index]),
                                json.dumps({"path": failure.path, "reason": failure.reason}).encode())
                if clips is not None:
                    frames = clips.flatten(0, -4).to(device)  # (..., 3, H, W) -> (B * [N *] T, 3, H, W)
                    features = self.encoder.trunk_features(frames).view(*clips.shape[:-3], -1)
                    for index, array in zip(indices, features, strict=True):
                        self._save(keys[index], array.float().cpu().numpy().astype(self.dtype))
                bar.advance(task, len(indices) + len(failures))
        self.encoder.train(was_training)

    def _save(self, key: str, array: np.ndarray) -> None:
        target = self.path(key)
        partial = self._partial(target)
        with open(partial, "wb") as handle:
            np.save(handle, array)
        os.replace(partial, target)

    def _write(self, target: Path, content: bytes) -> None:
        partial = self._partial(target)
        partial.write_bytes(content)
        os.replace(partial, target)

    @staticmethod
    def _partial(target: Path) -> Path:
        """A private temporary name next to ``target``: renamed over it once complete, so an interrupted
        extraction never leaves a truncated entry."""
        target.parent.mkdir(parents=True, exist_ok=True)
        return target.with_name(f"{target.name}.{os.getpid()}.partial")


class _Unreplaced(Dataset):
    """The clips of chosen records; a failing video yields its failure instead of a stand-in video."""

    def __init__(self, dataset: VideoClipDataset, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None, Failure | None]:
        index = self.indices[i]
        try:
            return index, self.dataset.load_clip(self.dataset.records[index]), None
        except VideoDecodeError as err:
            return index, None, Failure(err.path, err.reason)


def _collate_extracted(items: list) -> tuple[list[int], torch.Tensor | None, list[tuple[int, Failure]]]:
    good = [(i, clip) for i, clip, failure in items if failure is None]
    failures = [(i, failure) for i, _, failure in items if failure is not None]
    clips = torch.stack([clip for _, clip in good]) if good else None
    return [i for i, _ in good], clips, failures


class FeatureDataset(Dataset):
    """Cached features as `ClipSample`s: float32 (T, D), or (N, T, D) for multi-clip test samplers. All
    arrays are read into memory once, in their stored dtype (16 frames x 512 float16 values = 16 KiB a video),
    so epochs never touch the disk."""

    def __init__(self, files: Sequence[Path], labels: Sequence[int]) -> None:
        self.files, self.labels = list(files), list(labels)
        self.features = [torch.from_numpy(np.load(path)) for path in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, item: int | tuple[int, int]) -> ClipSample:
        index = item if isinstance(item, int) else item[0]  # (index, seed) from SeededShuffleSampler: no randomness
        return ClipSample(self.features[index].float(), self.labels[index], [])


class FeatureDataModule(SplitLoaders, L.LightningDataModule):
    """Serves a `VideoDataModule`'s splits as cached encoder features. Every split uses the evaluation
    transform; training uses the evaluation sampler too (the frozen encoder sees each video once), and testing
    the test sampler.

    ``prepare_data`` (once, rank 0) prepares the videos and extracts every missing feature, writing a failure
    marker for each video that cannot be decoded and listing those in ``report`` (a bad-videos CSV, optional);
    ``setup`` (every rank) reads the stored entries only. ``extract_count`` counts the videos this process
    extracted, ``extraction_s`` the seconds its ``prepare_data`` spent on features (None where it did not run).
    """

    def __init__(self, videos: Any, cache: FeatureCache, report: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.videos, self.cache = videos, cache
        self.report = Path(report) if report else None
        self.prepare_data_per_node = getattr(videos, "prepare_data_per_node", False)
        self.datasets: dict[str, FeatureDataset] = {}
        self.failures: dict[str, list[Failure]] = {}
        self.extract_count = 0
        self.extraction_s: float | None = None

    @property
    def class_names(self) -> list[str]:
        return self.videos.class_names

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def max_bad_fraction(self) -> float:
        return self.videos.max_bad_fraction

    def class_counts(self, split: str = "train") -> dict[str, int]:
        """Videos per class of ``split``: those with features once `setup` has read them."""
        if split not in self.datasets:
            return self.videos.class_counts(split)
        labels = self.datasets[split].labels
        return {name: labels.count(i) for i, name in enumerate(self.class_names)}

    def _clips(self, split: str) -> VideoClipDataset:
        videos = self.videos
        sampler = videos.test_sampler if split == "test" else videos.eval_sampler
        return VideoClipDataset(videos.splits[split], self.class_names, sampler, videos.eval_transform,
                                videos.backend, 0, videos.decode_timeout_s, videos.frame_cache,
                                videos.backend_order)

    def prepare_data(self) -> None:
        """Prepare and index the videos, then extract every split's missing features. Runs once per instance
        (Lightning calls it again for each ``fit``/``test``): the bad-videos report gets each failure once."""
        if self.extraction_s is not None:
            return
        self.videos.prepare_data()
        self.videos.setup("fit")
        started = time.perf_counter()
        device = self.trainer.strategy.root_device if self.trainer is not None else None
        for split in SPLITS:
            clips = self._clips(split)
            keys = self.cache.keys(clips)
            self.extract_count += self.cache.extract(clips, keys, f"{split} ({len(clips)} videos)", device)
            failures = self.cache.read(clips, keys)[2]
            for failure in failures:
                log.warning("Left out of %s features: %s: %s", split, failure.path, failure.reason)
            if failures and self.report is not None:
                append_bad_videos(self.report, {f.path: f.reason for f in failures}, f"{split} features", None)
        self.extraction_s = round(time.perf_counter() - started, 2)
        log.info("Features: %d videos extracted by this process in %.1f s (cache %s)", self.extract_count,
                 self.extraction_s, self.cache.root)

    def setup(self, stage: str | None = None) -> None:
        """Index the videos and read the stored features of the stage's splits (all three for None); never
        extracts. Videos with a failure marker are left out and listed in ``failures``."""
        self.videos.trainer = self.trainer  # the video module checks its settings against this trainer's ranks
        self.videos.setup(stage)
        for split in STAGE_SPLITS.get(stage or "", SPLITS):
            if split not in self.datasets:
                clips = self._clips(split)
                files, labels, self.failures[split] = self.cache.read(clips, self.cache.keys(clips))
                self.datasets[split] = FeatureDataset(files, labels)

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        batch = self.videos.batch_size if train else self.videos.eval_batch_size
        dataset = self.datasets[split]
        sampler = SeededShuffleSampler(dataset, self.videos.seed) if train else unpadded_distributed_sampler(dataset)
        return DataLoader(dataset, batch_size=batch, drop_last=train and len(dataset) > batch, sampler=sampler,
                          collate_fn=collate_clips)

    def state_dict(self) -> dict[str, Any]:
        return self.videos.state_dict()
