"""Video readers: one interface over several decoding backends.

`open_video(path)` returns a `VideoReader` whose `get_frames(indices)` gives exactly the requested frames as a
``torch.uint8`` tensor of shape ``(T, 3, H, W)`` (RGB, in the order asked, repeats allowed). Every failure to
read a file surfaces as `VideoDecodeError` carrying the path and a one-line reason.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")


class VideoDecodeError(RuntimeError):
    """A video could not be read. ``path`` and ``reason`` are kept for reports."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split()) or "unknown decoding error"
        super().__init__(f"{self.path}: {self.reason}")


@dataclass(frozen=True)
class VideoInfo:
    path: str
    num_frames: int
    fps: float
    height: int
    width: int
    backend: str

    @property
    def duration_s(self) -> float:
        return self.num_frames / self.fps if self.fps > 0 else 0.0


class VideoReader(ABC):
    """Random access to the frames of one video file. Use as a context manager or call `close()`."""

    backend: ClassVar[str]

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = str(path)

    @property
    @abstractmethod
    def num_frames(self) -> int: ...

    @property
    @abstractmethod
    def fps(self) -> float: ...

    @property
    @abstractmethod
    def height(self) -> int: ...

    @property
    @abstractmethod
    def width(self) -> int: ...

    @abstractmethod
    def _decode_sorted_unique(self, indices: list[int]) -> np.ndarray:
        """Decode sorted, unique, in-range indices -> uint8 array (N, H, W, 3) RGB."""

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at ``indices`` as uint8 ``(T, 3, H, W)``, in the given order (repeats allowed)."""
        wanted = [int(i) for i in indices]
        if not wanted:
            raise ValueError(f"{self.path}: get_frames needs at least one index")
        bad = [i for i in wanted if not 0 <= i < self.num_frames]
        if bad:
            raise IndexError(f"{self.path}: frame indices {bad[:5]} outside [0, {self.num_frames})")
        unique = sorted(set(wanted))
        try:
            decoded = self._decode_sorted_unique(unique)
        except VideoDecodeError:
            raise
        except Exception as err:  # decoder libraries raise many unrelated types
            raise VideoDecodeError(self.path, f"{self.backend} failed to decode frames: {err}") from err
        if decoded.shape[0] != len(unique):
            raise VideoDecodeError(
                self.path, f"{self.backend} returned {decoded.shape[0]} frames for {len(unique)} indices"
            )
        position = {frame: row for row, frame in enumerate(unique)}
        order = torch.as_tensor([position[i] for i in wanted])
        frames = torch.from_numpy(np.ascontiguousarray(decoded)).permute(0, 3, 1, 2)
        return frames.index_select(0, order).contiguous()

    def info(self) -> VideoInfo:
        return VideoInfo(self.path, self.num_frames, self.fps, self.height, self.width, self.backend)

    def close(self) -> None:  # noqa: B027 - optional for backends that hold no OS resources
        pass

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DecordReader(VideoReader):
    """decord: fast seek-based random access (the default backend)."""

    backend = "decord"

    def __init__(self, path: str | os.PathLike, num_threads: int = 1) -> None:
        super().__init__(path)
        import decord

        self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=num_threads)
        self._num_frames = len(self._vr)
        if self._num_frames <= 0:
            raise VideoDecodeError(self.path, "decord found no video frames")
        self._shape: tuple[int, int] | None = None

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def fps(self) -> float:
        return float(self._vr.get_avg_fps())

    def _frame_shape(self) -> tuple[int, int]:
        if self._shape is None:
            self._shape = tuple(self._vr[0].shape[:2])
            self._vr.seek(0)
        return self._shape

    @property
    def height(self) -> int:
        return self._frame_shape()[0]

    @property
    def width(self) -> int:
        return self._frame_shape()[1]

    def _decode_sorted_unique(self, indices: list[int]) -> np.ndarray:
        return self._vr.get_batch(indices).asnumpy()

    def close(self) -> None:
        self._vr = None


class PyAVReader(VideoReader):
    """PyAV (FFmpeg): decodes sequentially from the start; robust, slower for sparse access in long files."""

    backend = "pyav"

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        import av

        self._container = av.open(self.path)
        if not self._container.streams.video:
            self._container.close()
            raise VideoDecodeError(self.path, "file has no video stream")
        self._stream = self._container.streams.video[0]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self._fps = float(rate) if rate else 0.0
        frames = int(self._stream.frames or 0)
        if frames <= 0 and self._stream.duration and self._stream.time_base and self._fps:
            frames = int(round(float(self._stream.duration * self._stream.time_base) * self._fps))
        if frames <= 0:
            self._container.close()
            raise VideoDecodeError(self.path, "PyAV could not determine a frame count (empty video stream?)")
        self._num_frames = frames

    @property
    def num_frames(self) -> int:
        return self._num_frames

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def height(self) -> int:
        return int(self._stream.codec_context.height)

    @property
    def width(self) -> int:
        return int(self._stream.codec_context.width)

    def _decode_sorted_unique(self, indices: list[int]) -> np.ndarray:
        wanted = set(indices)
        last = indices[-1]
        out = []
        self._container.seek(0, stream=self._stream)
        for position, frame in enumerate(self._container.decode(self._stream)):
            if position in wanted:
                out.append(frame.to_ndarray(format="rgb24"))
            if position >= last:
                break
        if len(out) != len(indices):
            raise VideoDecodeError(
                self.path, f"stream ended after {position + 1} frames; frame {last} was requested"
            )
        return np.stack(out)

    def close(self) -> None:
        self._container.close()


BACKENDS: dict[str, Callable[[str], VideoReader]] = {"decord": DecordReader, "pyav": PyAVReader}
AUTO_ORDER: tuple[str, ...] = ("decord", "pyav")


def _check_readable_file(path: Path) -> None:
    if not path.exists():
        raise VideoDecodeError(path, "no such file")
    if not path.is_file():
        raise VideoDecodeError(path, "not a regular file")
    if path.stat().st_size == 0:
        raise VideoDecodeError(path, "empty file (0 bytes)")


def _backend_available(name: str) -> bool:
    module = {"decord": "decord", "pyav": "av"}[name]
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def open_video(path: str | os.PathLike, backend: str = "auto") -> VideoReader:
    """Open ``path`` with ``backend`` ("decord", "pyav" or "auto": the first of `AUTO_ORDER` that reads it)."""
    path = Path(path)
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose from {['auto', *BACKENDS]}")
    _check_readable_file(path)
    names = [n for n in AUTO_ORDER if _backend_available(n)] if backend == "auto" else [backend]
    reasons = []
    for name in names:
        try:
            return BACKENDS[name](str(path))
        except VideoDecodeError as err:
            reasons.append(f"{name}: {err.reason}")
        except Exception as err:  # each library has its own exception types
            reasons.append(f"{name}: {' '.join(str(err).split())[:200]}")
    raise VideoDecodeError(path, "; ".join(reasons) or "no video backend installed")


def probe(path: str | os.PathLike, backend: str = "auto") -> VideoInfo:
    """Read a video's metadata; raises `VideoDecodeError` with the reason if it cannot be opened."""
    with open_video(path, backend) as reader:
        return reader.info()
