"""Opening a video: the backend registry, which backends load here, and `open_video`'s choice among them
("auto": the first installed backend that suits the file and opens it); `probe` reads the metadata."""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from stat import S_ISREG
from typing import TypeVar

import torch

from vidlstm.data.video.base import VideoReader
from vidlstm.data.video.deadlines import DEFAULT_TIMEOUT_S, _limited, _stuck_before
from vidlstm.data.video.decord import DecordReader
from vidlstm.data.video.errors import DecodeTimeout, FrameOutOfRange, VideoDecodeError, _one_line
from vidlstm.data.video.facts import StreamFacts, VideoInfo, put_bounded, stream_facts
from vidlstm.data.video.opencv import OpenCVReader
from vidlstm.data.video.pyav import PyAVReader
from vidlstm.data.video.torchcodec import TorchCodecReader

BACKENDS: dict[str, Callable[..., VideoReader]] = {
    "decord": DecordReader,
    "torchcodec": TorchCodecReader,
    "pyav": PyAVReader,
    "opencv": OpenCVReader,
}
# torchcodec first when installed: frame-exact and the fastest in scripts/benchmark.py data; decord leads a base
# install (torchcodec is an optional extra needing system FFmpeg).
AUTO_ORDER: tuple[str, ...] = ("torchcodec", "decord", "pyav", "opencv")
_MODULES = {"decord": "decord", "torchcodec": "torchcodec.decoders", "pyav": "av", "opencv": "cv2"}


def _readable_file_stat(path: Path) -> os.stat_result:
    try:
        stat = os.stat(path)
    except FileNotFoundError as err:
        raise VideoDecodeError(path, "no such file") from err
    except OSError as err:
        raise VideoDecodeError(path, f"cannot read the file ({_one_line(err)})") from err
    if not S_ISREG(stat.st_mode):
        raise VideoDecodeError(path, "not a regular file")
    if stat.st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")
    return stat


@functools.cache
def backend_available(name: str) -> bool:
    """Whether ``name``'s library imports here (torchcodec also needs FFmpeg's shared libraries)."""
    try:
        __import__(_MODULES[name])
    except Exception:  # ImportError, or RuntimeError/OSError when native libraries are missing
        return False
    return True


def available_backends() -> list[str]:
    return [name for name in AUTO_ORDER if backend_available(name)]


# Backends that can decode on a GPU (``open_video(device=...)``).
GPU_BACKENDS = ("torchcodec",)
T = TypeVar("T")


def open_video(path: str | os.PathLike, backend: str = "auto", order: Sequence[str] = AUTO_ORDER,
               timeout_s: float | None = DEFAULT_TIMEOUT_S, device: str = "cpu") -> VideoReader:
    """Open ``path`` with ``backend``, or with "auto": the first backend in ``order`` that is installed, suits
    the file (see `VideoReader.unsuitable_reason`: codecs it decodes wrongly, and for backends that map indices
    through the container's index, variable frame rate and hidden frames) and opens it. ``reader.backend`` says
    which one serves. A read that fails with that backend for a reason of its own (not a timeout, not a frame past
    the end) is retried with the next suitable backend, which then serves the file (see `AutoReader`).
    Probing, opening and each `get_frames` call are limited to ``timeout_s`` seconds (None: no limit).
    ``device`` other than "cpu" (e.g. "cuda:0") decodes with a `GPU_BACKENDS` backend on that device where one
    suits the file ("auto" then falls back to the CPU backends, whose frames stay on the CPU)."""
    path = Path(path)
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose from {['auto', *BACKENDS]}")
    if device != "cpu" and backend not in ("auto", *GPU_BACKENDS):
        raise ValueError(f"video backend {backend!r} decodes on the CPU only; GPU decoding: {GPU_BACKENDS}")
    facts = stream_facts(path, timeout_s, _readable_file_stat(path))
    if backend != "auto":
        if not backend_available(backend):
            raise VideoDecodeError(path, f"video backend {backend!r} is not installed or cannot load")
        return _open_with(backend, path, facts, timeout_s, device)
    gpu_first = [n for n in GPU_BACKENDS if n in order] if device != "cpu" else []
    tries = [(n, device) for n in gpu_first] + [(n, "cpu") for n in order if n not in gpu_first]
    return AutoReader(path, facts, [(n, d) for n, d in tries if backend_available(n)], timeout_s)


class AutoReader(VideoReader):
    """The reader ``open_video(backend="auto")`` returns: it reads through the first backend of ``tries`` that
    suits the file and opens it (``backend`` names it). When a read (or the size lookup, which decodes frame 0 in
    decord) fails with that backend for a reason of its own (the library raises, returns the wrong shape, or got
    stuck on this file before), the next backend of ``tries`` that opens takes over and the call is retried, so a
    file one library chokes on is not lost while another decodes it; later readers of this process skip the
    failed backend for that file. Backends decode the same frame for an index (each is frame-exact where it is
    allowed), so switching mid-file changes no frame. A timeout and a frame past the end are raised as they are,
    and the retries of one call share its time limit. When every backend has failed, the error lists each one's
    reason."""

    def __init__(self, path: Path, facts: StreamFacts, tries: Sequence[tuple[str, str]],
                 timeout_s: float | None) -> None:
        self.path, self.facts, self._timeout_s = str(path), facts, timeout_s
        self._tries = list(tries)
        self.failures: list[str] = []  # "backend: reason" of each backend that could not open or read the file
        self._exhausted: VideoDecodeError | None = None
        self._reader = self._next_reader(timeout_s, retrying=False)

    def _next_reader(self, timeout_s: float | None, retrying: bool = True) -> VideoReader:
        """Open the next backend of ``tries`` that suits the file (within ``timeout_s``). A timeout while opening
        ends a retry: the call's time is spent."""
        while self._tries:
            name, on = self._tries.pop(0)
            label = name if on == "cpu" else f"{name} on {on}"
            if _stuck_before(self.path, name) or (self.path, name) in _FAILED_READS:
                self.failures.append(f"{label}: failed or got stuck on this file earlier in this process")
                continue
            try:
                return _open_with(name, Path(self.path), self.facts, timeout_s, on)
            except DecodeTimeout as err:
                self.failures.append(f"{label}: {err.reason}")
                if retrying:
                    break
            except VideoDecodeError as err:
                self.failures.append(f"{label}: {err.reason}")
        self._exhausted = VideoDecodeError(self.path, "; ".join(self.failures) or "no video backend installed")
        raise self._exhausted

    def _with_fallback(self, call: Callable[[VideoReader], T]) -> T:
        """``call(reader)``, moving on to the next backend while it fails for a reason of the backend's own."""
        if self._exhausted is not None:
            raise self._exhausted
        started = time.monotonic()
        try:
            while True:
                try:
                    return call(self._reader)
                except (FrameOutOfRange, DecodeTimeout):
                    raise
                except VideoDecodeError as err:
                    self.failures.append(f"{self._reader.backend}: {err.reason}")
                    put_bounded(_FAILED_READS, (self.path, self._reader.backend), None, _FAILED_READS_LIMIT)
                    self._reader.close()
                    left = None if not self._timeout_s else self._timeout_s - (time.monotonic() - started)
                    if left is not None and left <= 0:
                        self._exhausted = DecodeTimeout(self.path, "; ".join(self.failures) + "; no time left "
                                                        f"to try another backend (limit {self._timeout_s:g} s)")
                        raise self._exhausted from err
                    self._reader = self._next_reader(left)
                    self._reader.timeout_s = left  # the retry gets what is left of this call's limit
        finally:
            if self._exhausted is None:
                self._reader.timeout_s = self._timeout_s

    @property
    def backend(self) -> str:  # type: ignore[override]
        return self._reader.backend

    @property
    def timeout_s(self) -> float | None:  # type: ignore[override]
        return self._timeout_s

    @timeout_s.setter
    def timeout_s(self, seconds: float | None) -> None:
        self._timeout_s = self._reader.timeout_s = seconds

    @property
    def fps(self) -> float:
        return self._reader.fps

    @property
    def coded_size(self) -> tuple[int, int]:
        return self._with_fallback(lambda reader: reader.coded_size)

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        return self._with_fallback(lambda reader: reader.get_frames(indices))

    def _decode_sorted_unique(self, indices: list[int]) -> torch.Tensor:
        return self._reader._decode_sorted_unique(indices)

    def close(self) -> None:
        self._reader.close()

    def __getattr__(self, name: str) -> object:
        """Attributes of the serving backend's reader (e.g. PyAV's ``seeks``)."""
        reader = self.__dict__.get("_reader")
        if reader is None:
            raise AttributeError(name)
        return getattr(reader, name)


# (path, backend) pairs whose read failed in this process for a reason of the backend's own: `AutoReader` starts
# with the next backend there. Bounded: the oldest pairs are forgotten.
_FAILED_READS: dict[tuple[str, str], None] = {}
_FAILED_READS_LIMIT = 65536


def _open_with(name: str, path: Path, facts: StreamFacts, timeout_s: float | None, device: str = "cpu"
               ) -> VideoReader:
    options = {"device": device} if device != "cpu" else {}
    try:
        reader = _limited(BACKENDS[name], lambda: BACKENDS[name](str(path), facts, **options), timeout_s, path,
                          f"opening with {name}")
    except VideoDecodeError:
        raise
    except Exception as err:  # each library has its own exception types
        raise VideoDecodeError(path, _one_line(err)) from err
    reader.timeout_s = timeout_s
    return reader


def probe(path: str | os.PathLike, backend: str = "auto", timeout_s: float | None = DEFAULT_TIMEOUT_S) -> VideoInfo:
    """Read a video's metadata; raises `VideoDecodeError` with the reason if it cannot be opened. ``num_frames``
    is the number of frames that decode (see `facts`); counting them takes at most half of ``timeout_s``."""
    with open_video(path, backend, timeout_s=timeout_s) as reader:
        return reader.info()
