"""Map-style dataset of clips: record -> reader -> sampled frames -> transformed clip."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from multiprocessing.reduction import ForkingPickler
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, get_worker_info

from vidlstm.data.batch_memory import DEFAULT_SLOTS, reduce_for_main_process, stack_batch
from vidlstm.data.cache import FrameCache
from vidlstm.data.index import VideoRecord, segment_frames
from vidlstm.data.video import AUTO_ORDER, VideoDecodeError, open_video


class Failure(NamedTuple):
    path: str
    reason: str


class ClipSample(NamedTuple):
    clip: torch.Tensor | None  # float (T, 3, H, W), (N, T, 3, H, W) for a multi-clip sampler; None: it failed
    label: int  # -1 if unlabelled
    failures: list[Failure]  # videos that failed (replaced by another in training, left out otherwise)


class ClipBatch(NamedTuple):
    clips: torch.Tensor | None  # (B, T, 3, H, W), or (B, N, T, 3, H, W) with N clips per video; None: all failed
    labels: torch.Tensor  # (B,) int64, only the videos that decoded
    failures: list[Failure]


def _reduce_between_processes(batch: ClipBatch) -> tuple:
    """How a ClipBatch crosses multiprocessing queues (registered with ForkingPickler; plain pickle and copies
    are unchanged). Labels go as a list: as a tensor, each batch would cost a shared-memory file and a second
    file-descriptor hand-over (a socket connection with authentication) for a few bytes. Clips stacked into a
    worker's reused shared-memory slot cross as (slot, shape, dtype): see `batch_memory`."""
    return _rebuild_batch, (reduce_for_main_process(batch.clips), batch.labels.tolist(), batch.failures)


ForkingPickler.register(ClipBatch, _reduce_between_processes)


def _rebuild_batch(clips: torch.Tensor | None, labels: list[int], failures: list[Failure]) -> ClipBatch:
    return ClipBatch(clips, torch.tensor(labels, dtype=torch.long), failures)


def collate_clips(samples: list[ClipSample], batch_memory_slots: int = DEFAULT_SLOTS) -> ClipBatch:
    """Stack the clips and labels of the videos that decoded; gather every failure so it reaches the main
    process. A batch whose videos all failed has ``clips=None`` and no labels. In a DataLoader worker the clips
    are stacked into one of ``batch_memory_slots`` reused shared-memory buffers (see `batch_memory`)."""
    decoded = [s for s in samples if s.clip is not None]
    failures = [f for s in samples for f in s.failures]
    clips = stack_batch([s.clip for s in decoded], batch_memory_slots) if decoded else None
    return ClipBatch(clips, torch.tensor([s.label for s in decoded], dtype=torch.long), failures)


class VideoClipDataset(Dataset):
    """Returns `ClipSample`s.

    A video that cannot be decoded is reported in ``failures``. With ``replace_failures`` (training) it is
    replaced by another randomly chosen video, and after ``max_retries`` failures in a row the error is raised;
    without it (validation, test, evaluation) the sample has ``clip=None`` and is left out of its batch, so
    every metric counts each decodable video exactly once and never a stand-in.

    Indexed by an int, or by ``(index, seed)`` (see `SeededShuffleSampler`): the sample's frame choice and
    augmentation then draw from a generator seeded with ``seed`` instead of the worker's global one.

    Readers are opened inside ``__getitem__`` (so inside DataLoader workers) and closed straight after: no
    decoder state is ever shared across forked processes. ``decode_device`` "cuda[:n]" decodes with torchcodec's
    GPU decoder where it suits the file (others are decoded on the CPU and moved there) and transforms on the GPU;
    that runs in the main process only (``num_workers=0``).
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        class_names: Sequence[str],
        sampler: Callable[[int], list[int]],
        transform: Callable[[torch.Tensor], torch.Tensor],
        backend: str = "auto",
        max_retries: int = 10,
        timeout_s: float | None = 60.0,
        frame_cache: FrameCache | None = None,
        backend_order: Sequence[str] = AUTO_ORDER,
        replace_failures: bool = False,
        decode_device: str = "cpu",
    ) -> None:
        self.records = list(records)
        self.class_to_idx = {name: i for i, name in enumerate(class_names)}
        self.sampler = sampler
        self.transform = transform
        self.backend = backend
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.frame_cache = frame_cache
        self.backend_order = tuple(backend_order)
        self.replace_failures = replace_failures
        self.decode_device = decode_device

    def __len__(self) -> int:
        return len(self.records)

    def label_of(self, record: VideoRecord) -> int:
        return -1 if record.label is None else self.class_to_idx[record.label]

    def _sample(self, num_frames: int) -> tuple[list[list[int]], bool]:
        """The sampler's clip(s) as a list of index lists, and whether it gave several clips."""
        sampled = self.sampler(num_frames)
        multi = isinstance(sampled[0], list)
        return (sampled if multi else [sampled]), multi

    def _frames(self, record: VideoRecord) -> tuple[list[list[int]], bool, torch.Tensor]:
        """(clips' indices, several clips?, all their frames concatenated, decoded once)."""
        if self.frame_cache is not None:
            cached = self.frame_cache.frames(record, self.backend, self.timeout_s)
            clips, multi = self._sample(len(cached))
            # NCHW (faster transforms), laid out by numpy: torch's strided uint8 copy is slower and multithreaded
            picked = cached[[i for clip in clips for i in clip]]
            frames = torch.from_numpy(np.ascontiguousarray(picked.transpose(0, 3, 1, 2)))
            return clips, multi, self._on_decode_device(frames)
        if self.decode_device != "cpu" and get_worker_info() is not None:
            raise RuntimeError(f"decoding on {self.decode_device} runs in the main process only (CUDA does not work "
                               "in forked DataLoader workers): set data.num_workers=0")
        with open_video(record.path, self.backend, self.backend_order, self.timeout_s, self.decode_device) as reader:
            first, stop = segment_frames(record, reader.num_frames, reader.fps)
            clips, multi = self._sample(stop - first)
            frames = reader.get_frames([first + i for clip in clips for i in clip])
            return clips, multi, self._on_decode_device(frames)  # files the GPU decoder refuses come from the CPU

    def _on_decode_device(self, frames: torch.Tensor) -> torch.Tensor:
        return frames if self.decode_device == "cpu" else frames.to(self.decode_device)

    def load_clip(self, record: VideoRecord) -> torch.Tensor:
        clips, multi, frames = self._frames(record)
        if not multi:
            return self.transform(frames)
        return torch.stack([self.transform(part) for part in frames.split([len(c) for c in clips])])

    def __getitem__(self, item: int | tuple[int, int]) -> ClipSample:
        if isinstance(item, int):
            return self._sample_at(item)
        index, seed = item
        with torch.random.fork_rng(devices=[]):
            # The CPU generator only (all that sampling and transforms draw from): torch.manual_seed also seeds
            # every accelerator, recording stack traces for lazy CUDA initialisation, ~3 ms per clip.
            torch.default_generator.manual_seed(seed)
            return self._sample_at(index)

    def _sample_at(self, index: int) -> ClipSample:
        failures: list[Failure] = []
        while True:
            record = self.records[index]
            try:
                return ClipSample(self.load_clip(record), self.label_of(record), failures)
            except VideoDecodeError as err:
                failures.append(Failure(err.path, err.reason))
                if not self.replace_failures:
                    return ClipSample(None, self.label_of(record), failures)
                if len(failures) > self.max_retries:
                    raise VideoDecodeError(err.path, f"{len(failures)} videos in a row failed to decode "
                                                     f"(data broken?); last: {err.reason}") from err
                index = int(torch.randint(len(self.records), ()).item())
