"""Frame cache: decode each video once at training resolution into an on-disk uint8 array, so later epochs
read frames instead of decoding them.

One ``.npy`` file per video (and segment) under ``root``, named by a hash of the source path, size, mtime,
segment and cached resolution: a changed source or resolution gets a new entry. Files are read through
memory maps, so a clip touches only its own frames.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from vidlstm.data.index import VideoRecord, segment_frames
from vidlstm.data.video import VideoDecodeError, open_video
from vidlstm.data.video.deadlines import abandoned_threads
from vidlstm.utils.pool import Lost, imap_killable
from vidlstm.utils.progress import progress

# Part of every key. 2: files that decord/torchcodec decoded wrongly before (AVI, MPEG-TS, ...) are decoded again
# 3: and MPEG-TS files whose timestamps wrap past 2^33, which PyAV read from the wrap on, and intra-refresh H.264
# 4: and raw H.263 (torchcodec), MP4 without a sync-sample table (decord)
# 5: and streams that start without a keyframe (torchcodec and decord off by the frames dropped, PyAV off the end)
# 6: and open GOPs (decord)
CACHE_FORMAT = 6


def _default_keep_open() -> int:
    try:
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    except (ImportError, OSError, ValueError):  # no resource module (Windows): a conservative count
        return 256
    return 4096 if soft == resource.RLIM_INFINITY else max(64, min(4096, soft // 4))


class FrameCache:
    """Args:
    root: folder for the cached arrays.
    short_side: frames are resized so their shorter side has this many pixels (aspect kept).
    chunk: frames decoded per step while building (bounds memory for long videos).
    keep_open: memory maps kept open per process (least recently used are closed); None: as many as a quarter
        of the process's open-file limit allows, at most 4096 (each map holds a file descriptor). Fewer maps
        than a split's videos means re-opening (and re-parsing) every file every epoch.
    """

    def __init__(self, root: str | os.PathLike, short_side: int, chunk: int = 64, keep_open: int | None = None
                 ) -> None:
        self.root, self.short_side, self.chunk = Path(root), short_side, chunk
        self.keep_open = keep_open if keep_open is not None else _default_keep_open()
        self._open: OrderedDict[Path, np.ndarray] = OrderedDict()

    def __getstate__(self) -> dict:  # DataLoader workers start with no open maps of their own
        return {**self.__dict__, "_open": OrderedDict()}

    def entry(self, record: VideoRecord) -> Path:
        stat = os.stat(record.path)
        key = "|".join(map(str, (CACHE_FORMAT, os.path.abspath(record.path), stat.st_size, stat.st_mtime_ns,
                                 record.start_s, record.end_s, self.short_side)))
        digest = hashlib.sha1(key.encode()).hexdigest()
        return self.root / digest[:2] / f"{digest}.npy"

    def frames(self, record: VideoRecord, backend: str = "auto", timeout_s: float | None = 60.0) -> np.ndarray:
        """All frames of the record (its segment, if any) as a read-only (N, H, W, 3) uint8 memory map."""
        path = self.entry(record)
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        if not path.is_file():
            self._build(record, path, backend, timeout_s)
        frames = self._open[path] = np.load(path, mmap_mode="r")
        if len(self._open) > self.keep_open:
            self._open.popitem(last=False)
        return frames

    def fill(self, records: Sequence[VideoRecord], backend: str = "auto", timeout_s: float | None = 60.0,
             workers: int = 2) -> dict[str, str]:
        """Build the entries of ``records`` not cached yet, in ``workers`` processes (a video stuck past
        ``timeout_s`` is abandoned with its process), with a progress bar, so the first epoch reads frames
        like every later one. Returns {path: reason} of the videos that could not be cached; they get no entry,
        and the dataset reports them when it tries to read them, as it would without this step."""
        todo = [r for r in records if not self.entry(r).is_file()]
        failed: dict[str, str] = {}
        if not todo:
            return failed
        build = functools.partial(_build_entry, self, backend=backend, timeout_s=timeout_s)
        with progress() as bar:
            task = bar.add_task(f"Decoding {len(todo)} videos into the frame cache {self.root}", total=len(todo))
            results = (imap_killable(build, todo, workers, timeout_s, retire_if=abandoned_threads) if workers > 0
                       else map(build, todo))
            for record, result in zip(todo, results, strict=True):
                reason = f"caching {result.reason}" if isinstance(result, Lost) else result
                if reason:
                    failed[record.path] = reason
                bar.advance(task)
        return failed

    def _build(self, record: VideoRecord, path: Path, backend: str, timeout_s: float | None) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.npy")
        with open_video(record.path, backend, timeout_s=timeout_s) as reader:
            first, stop = segment_frames(record, reader.num_frames, reader.fps)
            height, width = self._size(reader.height, reader.width)
            out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8, shape=(stop - first, height, width, 3))
            for start in range(first, stop, self.chunk):
                frames = reader.get_frames(range(start, min(start + self.chunk, stop)))
                out[start - first : start - first + len(frames)] = self._resize(frames, height, width)
            out.flush()
            del out
        partial.replace(path)  # atomic: an interrupted build leaves no half entry

    def _size(self, height: int, width: int) -> tuple[int, int]:
        scale = self.short_side / min(height, width)
        return max(1, round(height * scale)), max(1, round(width * scale))

    @staticmethod
    def _resize(frames: torch.Tensor, height: int, width: int) -> np.ndarray:
        if frames.shape[-2:] != (height, width):
            frames = F.interpolate(frames.float(), size=(height, width), mode="bilinear", antialias=True,
                                   align_corners=False).round().clamp(0, 255).to(torch.uint8)
        return frames.permute(0, 2, 3, 1).numpy()


def _build_entry(cache: FrameCache, record: VideoRecord, backend: str, timeout_s: float | None) -> str:
    """Build ``record``'s entry (in a pool worker); "" when it worked, else why not."""
    # One thread, as in a DataLoader worker: an OpenMP pool inherited through fork (the parent ran torch ops)
    # would deadlock the resize.
    torch.set_num_threads(1)
    try:
        cache._build(record, cache.entry(record), backend, timeout_s)
    except (VideoDecodeError, OSError) as err:
        return getattr(err, "reason", None) or str(err)
    return ""
