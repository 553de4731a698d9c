"""Feature-cache training: run a frozen encoder once over every sampled frame, train the head from disk.

`FeatureCache` stores one ``(T, D)`` array per video (``(N, T, D)`` for multi-clip test samplers) under a key
made of the video file (path, size, mtime, segment), the sampler, the transform and the encoder's weights
fingerprint, so a change to any of them computes new features instead of reusing stale ones.
`FeatureDataModule` serves them as batches shaped like the clip batches, with features in place of frames.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vidlstm.data.datamodule import SplitLoaders, unpadded_distributed_sampler
from vidlstm.data.dataset import ClipSample, Failure, VideoClipDataset, collate_clips
from vidlstm.data.index import VideoRecord
from vidlstm.data.video import VideoDecodeError
from vidlstm.utils.progress import progress

log = logging.getLogger(__name__)
FEATURE_DTYPES = ("float16", "float32")


class FeatureCache:
    """Features of a frozen `FrameEncoder` on disk, one ``<key>.npy`` per (video, sampler, transform, encoder).

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
        self.fingerprint = encoder.fingerprint()

    def key(self, record: VideoRecord, sampler: Callable, transform: Callable) -> str:
        stat = os.stat(record.path)
        parts = [os.path.abspath(record.path), stat.st_size, stat.st_mtime_ns, record.start_s, record.end_s,
                 repr(sampler), repr(transform), self.fingerprint, self.dtype]
        return hashlib.sha1(json.dumps(parts, default=str).encode()).hexdigest()

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def build(self, dataset: VideoClipDataset, description: str) -> tuple[list[Path], list[int], list[Failure]]:
        """Features for every video of ``dataset`` (computing the missing ones): (files, labels, failures).
        Videos that fail to decode are reported and left out, never replaced by another video."""
        keys = [self.key(r, dataset.sampler, dataset.transform) for r in dataset.records]
        missing = [i for i, key in enumerate(keys) if not self.path(key).is_file()]
        failures: list[Failure] = []
        if missing:
            failures = self._extract(dataset, keys, missing, description)
        failed = {f.path for f in failures}
        kept = [i for i, r in enumerate(dataset.records) if r.path not in failed]
        return ([self.path(keys[i]) for i in kept], [dataset.label_of(dataset.records[i]) for i in kept],
                failures)

    @torch.no_grad()
    def _extract(self, dataset: VideoClipDataset, keys: list[str], todo: list[int],
                 description: str) -> list[Failure]:
        loader = DataLoader(_Unreplaced(dataset, todo), batch_size=self.batch_size, num_workers=self.num_workers,
                            collate_fn=_collate_extracted)
        was_training = self.encoder.training
        self.encoder.eval()
        failures: list[Failure] = []
        # Extraction must not shift the global RNG: the run that follows stays identical to one without it.
        with torch.random.fork_rng(), progress() as bar:
            task = bar.add_task(f"Features: {description}", total=len(todo))
            for indices, clips, batch_failures in loader:
                failures.extend(batch_failures)
                if clips is not None:
                    frames = clips.flatten(0, -4)  # (..., 3, H, W) -> (B * [N *] T, 3, H, W)
                    features = self.encoder.trunk_features(frames).view(*clips.shape[:-3], -1)
                    for index, array in zip(indices, features, strict=True):
                        self._save(keys[index], array.float().numpy().astype(self.dtype))
                bar.advance(task, len(indices) + len(batch_failures))
        self.encoder.train(was_training)
        return failures

    def _save(self, key: str, array: np.ndarray) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.partial")
        with open(partial, "wb") as handle:
            np.save(handle, array)
        os.replace(partial, target)  # atomic: an interrupted extraction never leaves a truncated entry


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


def _collate_extracted(items: list) -> tuple[list[int], torch.Tensor | None, list[Failure]]:
    good = [(i, clip) for i, clip, failure in items if failure is None]
    failures = [failure for _, _, failure in items if failure is not None]
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

    def __getitem__(self, index: int) -> ClipSample:
        return ClipSample(self.features[index].float(), self.labels[index], [])


class FeatureDataModule(SplitLoaders, L.LightningDataModule):
    """Serves a `VideoDataModule`'s splits as cached encoder features. Every split uses the evaluation
    transform; training uses the evaluation sampler too (the frozen encoder sees each video once), and testing
    the test sampler. Built eagerly by `prepare` so extraction time is reported on its own."""

    def __init__(self, videos: Any, cache: FeatureCache) -> None:
        super().__init__()
        self.videos, self.cache = videos, cache
        self.class_names = videos.class_names
        self.max_bad_fraction = videos.max_bad_fraction
        self.datasets: dict[str, FeatureDataset] = {}
        self.failures: dict[str, list[Failure]] = {}

    def prepare(self) -> None:
        for split in ("train", "val", "test"):
            sampler = self.videos.test_sampler if split == "test" else self.videos.eval_sampler
            clips = VideoClipDataset(self.videos.splits[split], self.class_names, sampler,
                                     self.videos.eval_transform, self.videos.backend, 0,
                                     self.videos.decode_timeout_s, self.videos.frame_cache,
                                     self.videos.backend_order)
            files, labels, failures = self.cache.build(clips, f"{split} ({len(clips)} videos)")
            self.datasets[split], self.failures[split] = FeatureDataset(files, labels), failures
            for failure in failures:
                log.warning("Left out of %s features: %s: %s", split, failure.path, failure.reason)

    def setup(self, stage: str | None = None) -> None:
        if not self.datasets:
            self.prepare()

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        batch = self.videos.batch_size if train else self.videos.eval_batch_size
        dataset = self.datasets[split]
        return DataLoader(dataset, batch_size=batch, shuffle=train, drop_last=train and len(dataset) > batch,
                          sampler=None if train else unpadded_distributed_sampler(dataset), collate_fn=collate_clips)

    def state_dict(self) -> dict[str, Any]:
        return self.videos.state_dict()
