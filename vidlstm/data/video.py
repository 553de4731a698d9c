"""Video readers: one interface over several decoding backends.

`open_video(path)` returns a `VideoReader` whose `get_frames(indices)` gives exactly the requested frames as a
``torch.uint8`` tensor of shape ``(T, 3, H, W)`` (RGB, in the order asked, repeats allowed). Every failure to
read a file surfaces as `VideoDecodeError` carrying the path and a one-line reason.
"""

from __future__ import annotations

import contextlib
import functools
import os
import queue
import signal
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from stat import S_ISREG
from typing import ClassVar, TypeVar

import numpy as np
import torch

DEFAULT_TIMEOUT_S = 60.0
T = TypeVar("T")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")


class VideoDecodeError(RuntimeError):
    """A video could not be read. ``path`` and ``reason`` are kept for reports."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split()) or "unknown decoding error"
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self) -> tuple:  # keep (path, reason) when crossing DataLoader worker processes
        return (VideoDecodeError, (self.path, self.reason))


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


@contextlib.contextmanager
def time_limit(seconds: float | None, path: str | os.PathLike, what: str):
    """Raise `VideoDecodeError` if the block runs longer than ``seconds``.

    Uses SIGALRM, so it applies in a process's main thread on POSIX (where DataLoader workers and probing
    processes run their work); elsewhere the block runs unlimited. A signal interrupts Python code between
    operations, which stops decoders that loop in Python (PyAV, OpenCV) mid-file. Native decoders use
    `call_with_deadline` instead.
    """
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not seconds or not usable:
        yield
        return

    def on_alarm(signum: int, frame: object) -> None:
        raise VideoDecodeError(path, _timeout_reason(what, seconds))

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class DecodeStuck(VideoDecodeError):
    """A native decoder call outlived its deadline; its thread was abandoned (threads cannot be killed)."""


def call_with_deadline(call: Callable[[], T], seconds: float | None, path: str | os.PathLike, what: str) -> T:
    """Return ``call()``, or raise `DecodeStuck` once it has run ``seconds`` without returning.

    The call runs in a helper thread while this one waits, so the deadline holds inside native code that a
    signal cannot interrupt (one decord/torchcodec batch looping forever on a file whose index lies, decord
    #373). Both libraries release the GIL while decoding, so waiting costs the caller nothing. A stuck call
    keeps its thread until the process exits; callers must stop using that reader (see `VideoReader`).
    """
    if not seconds:
        return call()
    return _deadline_runner().run(call, seconds, path, what)


class _DeadlineRunner:
    """A reusable daemon thread that runs calls for one caller thread (a new thread per clip costs ~0.4 ms)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.stuck = False
        self.pid = os.getpid()
        threading.Thread(target=self._serve, name="vidlstm-decode", daemon=True).start()

    def _serve(self) -> None:
        while True:
            call, outcome, finished = self._jobs.get()
            try:
                outcome["value"] = call()
            except BaseException as err:  # handed to the waiting thread
                outcome["error"] = err
            finally:
                finished.set()

    def run(self, call: Callable[[], T], seconds: float, path: str | os.PathLike, what: str) -> T:
        outcome: dict[str, object] = {}
        finished = threading.Event()
        self._jobs.put((call, outcome, finished))
        if not finished.wait(seconds):
            self.stuck = True  # this thread is lost to its call; the next caller gets a fresh runner
            raise DecodeStuck(path, _timeout_reason(what, seconds) + "; the decoder thread was abandoned")
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["value"]  # type: ignore[return-value]


_RUNNERS = threading.local()  # one runner per calling thread, so concurrent callers never queue behind each other


def _deadline_runner() -> _DeadlineRunner:
    runner = getattr(_RUNNERS, "runner", None)
    # Fresh after a stuck call, and in a forked child (threads do not survive fork).
    if runner is None or runner.stuck or runner.pid != os.getpid():
        runner = _RUNNERS.runner = _DeadlineRunner()
    return runner


def _timeout_reason(what: str, seconds: float) -> str:
    return f"{what} took longer than {seconds:g} s (timeout)"


# (path, backend) pairs whose native call got stuck in this process: `open_video` never uses them again.
_STUCK: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class StreamFacts:
    """What a cheap PyAV look at a file tells: which stream to decode and how to show it."""

    stream_index: int  # absolute index of the chosen video stream (the largest; cover art is ignored)
    codec: str
    num_frames: int  # frames really present: the header's count, capped by the packets found
    rotation: int  # degrees counter-clockwise to turn decoded frames upright (0, 90, 180, 270)
    num_video_streams: int


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__


_FACTS: dict[tuple[str, int, int], StreamFacts] = {}  # per process; a changed file has a new key
_FACTS_LIMIT = 65536  # oldest entries are dropped beyond this


def stream_facts(path: str | os.PathLike, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                 stat: os.stat_result | None = None) -> StreamFacts:
    """Probe ``path`` with PyAV (demux + decode one frame). Cached per (path, size, mtime) in each process,
    so the time limit is armed only for files not seen before."""
    stat = stat or os.stat(path)
    key = (str(path), stat.st_size, stat.st_mtime_ns)
    if key not in _FACTS:
        with time_limit(timeout_s, path, "probing"):
            facts = _probe_stream(key[0])
        if len(_FACTS) >= _FACTS_LIMIT:
            del _FACTS[next(iter(_FACTS))]
        _FACTS[key] = facts
    return _FACTS[key]


def _probe_stream(path: str) -> StreamFacts:
    import av

    try:
        container = av.open(path)
    except Exception as err:
        raise VideoDecodeError(path, f"not a readable media file ({_one_line(err)})") from err
    with container:
        videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not videos:
            raise VideoDecodeError(path, "no video stream (audio-only or cover art only)")
        stream = max(videos, key=lambda s: (s.codec_context.width * s.codec_context.height, -s.index))
        codec = stream.codec_context.name
        num_frames = int(stream.frames or 0)
        try:
            first = next(container.decode(stream), None)
        except Exception as err:
            raise VideoDecodeError(path, f"first frame does not decode ({_one_line(err)})") from err
        if first is None:
            raise VideoDecodeError(path, "video stream has no decodable frames")
        rotation = round(getattr(first, "rotation", 0) or 0) % 360
        # Headers can be missing (WebM/MKV) or promise frames a truncated file lacks: count the packets that
        # are really there (demuxing only, no decoding) and never claim more than that.
        container.seek(0, stream=stream)
        packets = sum(1 for packet in container.demux(stream) if packet.size)
        num_frames = min(num_frames, packets) if num_frames > 0 else packets
        # Read everything from PyAV objects before the container closes (they point into its memory).
        return StreamFacts(int(stream.index), codec, num_frames, rotation, len(videos))


class VideoReader(ABC):
    """Random access to the frames of one video file. Use as a context manager or call `close()`.

    Frames come out in display orientation: backends that do not apply rotation metadata themselves
    (``applies_rotation = False``) are rotated here.
    """

    backend: ClassVar[str]
    applies_rotation: ClassVar[bool] = False
    # Decodes a batch in one native call (GIL released): limited by `call_with_deadline`, not by a signal.
    native: ClassVar[bool] = False
    # Codecs this backend decodes wrongly (measured by tests/test_video_backends.py): `auto` skips it there.
    UNRELIABLE_CODECS: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def unsuitable_reason(cls, facts: StreamFacts) -> str | None:
        """Why this backend must not serve a file with these facts, or None."""
        if facts.codec in cls.UNRELIABLE_CODECS:
            return f"{cls.backend} decodes {facts.codec} wrongly (wrong or missing frames on random access)"
        return None

    timeout_s: float | None = DEFAULT_TIMEOUT_S  # limit for one get_frames call (see `time_limit`)

    def __init__(self, path: str | os.PathLike, facts: StreamFacts | None = None) -> None:
        self.path = str(path)
        self.facts = facts or stream_facts(path)
        reason = self.unsuitable_reason(self.facts)
        if reason:
            raise VideoDecodeError(self.path, reason)

    @property
    def num_frames(self) -> int:
        return self.facts.num_frames

    @property
    @abstractmethod
    def fps(self) -> float: ...

    @property
    @abstractmethod
    def coded_size(self) -> tuple[int, int]:
        """(height, width) of the decoded frames before rotation."""

    @property
    def height(self) -> int:
        h, w = self.coded_size
        return w if self.facts.rotation in (90, 270) else h

    @property
    def width(self) -> int:
        h, w = self.coded_size
        return h if self.facts.rotation in (90, 270) else w

    @abstractmethod
    def _decode_sorted_unique(self, indices: list[int]) -> torch.Tensor:
        """Decode sorted, unique, in-range indices -> uint8 (N, 3, H, W) RGB."""

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """Frames at ``indices`` as uint8 ``(T, 3, H, W)``, in the given order (repeats allowed)."""
        wanted = [int(i) for i in indices]
        if not wanted:
            raise ValueError(f"{self.path}: get_frames needs at least one index")
        bad = [i for i in wanted if not 0 <= i < self.num_frames]
        if bad:
            raise IndexError(f"{self.path}: frame indices {bad[:5]} outside [0, {self.num_frames})")
        unique = sorted(set(wanted))
        if (self.path, self.backend) in _STUCK:
            raise VideoDecodeError(self.path, f"{self.backend} is still stuck in an earlier call on this file")
        try:
            decoded = _limited(type(self), lambda: self._decode_sorted_unique(unique), self.timeout_s, self.path,
                               f"decoding {len(unique)} frames with {self.backend}")
        except VideoDecodeError:
            raise
        except Exception as err:  # decoder libraries raise many unrelated types
            raise VideoDecodeError(self.path, f"{self.backend} failed to decode frames: {_one_line(err)}") from err
        if decoded.shape[0] != len(unique) or decoded.dim() != 4 or decoded.shape[1] != 3:
            raise VideoDecodeError(
                self.path, f"{self.backend} returned shape {tuple(decoded.shape)} for {len(unique)} frames"
            )
        if self.facts.rotation and not self.applies_rotation:
            decoded = torch.rot90(decoded, k=self.facts.rotation // 90, dims=(2, 3))
        position = {frame: row for row, frame in enumerate(unique)}
        order = torch.as_tensor([position[i] for i in wanted])
        return decoded.index_select(0, order).contiguous()

    def info(self) -> VideoInfo:
        return VideoInfo(self.path, self.num_frames, self.fps, self.height, self.width, self.backend)

    def close(self) -> None:  # noqa: B027 - optional for backends that hold no OS resources
        pass

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _from_hwc(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


class DecordReader(VideoReader):
    """decord: fast seek-based random access (the default). Refuses files it decodes wrongly."""

    backend = "decord"
    native = True
    UNRELIABLE_CODECS = frozenset({"mpeg4"})  # MPEG-4 Part 2 with B-frames: wrong frames on random access

    @classmethod
    def unsuitable_reason(cls, facts: StreamFacts) -> str | None:
        if facts.rotation:
            return "decord mis-decodes rotated videos (malformed frames)"
        if facts.num_video_streams > 1:
            return "decord cannot choose among several video streams"
        return super().unsuitable_reason(facts)

    def __init__(self, path: str | os.PathLike, facts: StreamFacts | None = None, num_threads: int = 1) -> None:
        super().__init__(path, facts)
        import decord

        self._vr = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=num_threads)
        if len(self._vr) != self.facts.num_frames:
            # decord hangs or returns wrong frames when its frame index disagrees with the file (issue #373).
            raise VideoDecodeError(self.path, f"decord counts {len(self._vr)} frames where the container holds "
                                              f"{self.facts.num_frames}")
        self._size: tuple[int, int] | None = None

    @property
    def fps(self) -> float:
        return float(self._vr.get_avg_fps())

    @property
    def coded_size(self) -> tuple[int, int]:
        if self._size is None:
            self._size = tuple(self._vr[0].shape[:2])
            self._vr.seek(0)
        return self._size

    def _decode_sorted_unique(self, indices: list[int]) -> torch.Tensor:
        if indices[-1] >= len(self._vr):
            raise VideoDecodeError(self.path, f"decord sees {len(self._vr)} frames, frame {indices[-1]} requested")
        return _from_hwc(self._vr.get_batch(indices).asnumpy())

    def close(self) -> None:
        self._vr = None


class TorchCodecReader(VideoReader):
    """torchcodec (optional extra; needs FFmpeg shared libraries): exact seeking, applies rotation itself."""

    backend = "torchcodec"
    applies_rotation = True
    native = True
    UNRELIABLE_CODECS = frozenset({"mpeg4"})  # MPEG-4 Part 2 with B-frames: runs out of frames in exact mode

    def __init__(self, path: str | os.PathLike, facts: StreamFacts | None = None) -> None:
        super().__init__(path, facts)
        from torchcodec.decoders import VideoDecoder

        self._decoder = VideoDecoder(self.path, stream_index=self.facts.stream_index, seek_mode="exact")
        self._meta = self._decoder.metadata

    @property
    def fps(self) -> float:
        return float(self._meta.average_fps or 0.0)

    @property
    def coded_size(self) -> tuple[int, int]:
        h, w = int(self._meta.height), int(self._meta.width)
        return (w, h) if self.facts.rotation in (90, 270) else (h, w)

    def _decode_sorted_unique(self, indices: list[int]) -> torch.Tensor:
        return self._decoder.get_frames_at(indices).data


class PyAVReader(VideoReader):
    """PyAV (FFmpeg): decodes sequentially from the start; robust, slower for sparse access in long files."""

    backend = "pyav"

    def __init__(self, path: str | os.PathLike, facts: StreamFacts | None = None) -> None:
        super().__init__(path, facts)
        import av

        self._container = av.open(self.path)
        self._stream = self._container.streams[self.facts.stream_index]
        self._stream.thread_type = "AUTO"
        rate = self._stream.average_rate or self._stream.guessed_rate
        self._fps = float(rate) if rate else 0.0

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def coded_size(self) -> tuple[int, int]:
        return int(self._stream.codec_context.height), int(self._stream.codec_context.width)

    def _decode_sorted_unique(self, indices: list[int]) -> torch.Tensor:
        wanted, last, out, position = set(indices), indices[-1], [], -1
        self._container.seek(0, stream=self._stream)
        for position, frame in enumerate(self._container.decode(self._stream)):
            if position in wanted:
                out.append(frame.to_ndarray(format="rgb24"))
            if position >= last:
                break
        if len(out) != len(indices):
            raise VideoDecodeError(self.path, f"stream ended after {position + 1} decoded frames; "
                                              f"frame {last} was requested (the header promised {self.num_frames})")
        return _from_hwc(np.stack(out))

    def close(self) -> None:
        self._container.close()


class OpenCVReader(VideoReader):
    """OpenCV (bundled FFmpeg): sequential grab/retrieve from the start; applies rotation itself."""

    backend = "opencv"
    applies_rotation = True

    @classmethod
    def unsuitable_reason(cls, facts: StreamFacts) -> str | None:
        if facts.num_video_streams > 1:
            return "OpenCV cannot choose among several video streams"
        return super().unsuitable_reason(facts)

    def __init__(self, path: str | os.PathLike, facts: StreamFacts | None = None) -> None:
        super().__init__(path, facts)
        import cv2

        self._cv2 = cv2
        self._cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            raise VideoDecodeError(self.path, "OpenCV could not open the file")

    @property
    def fps(self) -> float:
        return float(self._cap.get(self._cv2.CAP_PROP_FPS))

    @property
    def coded_size(self) -> tuple[int, int]:
        h = int(self._cap.get(self._cv2.CAP_PROP_FRAME_HEIGHT))
        w = int(self._cap.get(self._cv2.CAP_PROP_FRAME_WIDTH))
        return (w, h) if self.facts.rotation in (90, 270) else (h, w)

    def _decode_sorted_unique(self, indices: list[int]) -> torch.Tensor:
        cap, cv2 = self._cap, self._cv2
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        wanted, out = set(indices), []
        for position in range(indices[-1] + 1):
            if not cap.grab():
                raise VideoDecodeError(self.path, f"OpenCV ran out of frames at {position}; "
                                                  f"frame {indices[-1]} was requested")
            if position in wanted:
                ok, image = cap.retrieve()
                if not ok:
                    raise VideoDecodeError(self.path, f"OpenCV could not decode frame {position}")
                out.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        return _from_hwc(np.stack(out))

    def close(self) -> None:
        self._cap.release()


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


def open_video(path: str | os.PathLike, backend: str = "auto", order: Sequence[str] = AUTO_ORDER,
               timeout_s: float | None = DEFAULT_TIMEOUT_S) -> VideoReader:
    """Open ``path`` with ``backend``, or with "auto": the first backend in ``order`` that is installed, suits
    the file (see `VideoReader.unsuitable_reason`) and opens it. ``reader.backend`` says which one served.
    Probing, opening and each `get_frames` call are limited to ``timeout_s`` seconds (None: no limit)."""
    path = Path(path)
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"unknown video backend {backend!r}; choose from {['auto', *BACKENDS]}")
    facts = stream_facts(path, timeout_s, _readable_file_stat(path))
    if backend != "auto":
        if not backend_available(backend):
            raise VideoDecodeError(path, f"video backend {backend!r} is not installed or cannot load")
        return _open_with(backend, path, facts, timeout_s)
    reasons = []
    for name in (n for n in order if backend_available(n)):
        if (str(path), name) in _STUCK:
            reasons.append(f"{name}: got stuck on this file earlier in this process")
            continue
        try:
            return _open_with(name, path, facts, timeout_s)
        except VideoDecodeError as err:
            reasons.append(f"{name}: {err.reason}")
    raise VideoDecodeError(path, "; ".join(reasons) or "no video backend installed")


def _open_with(name: str, path: Path, facts: StreamFacts, timeout_s: float | None) -> VideoReader:
    try:
        reader = _limited(BACKENDS[name], lambda: BACKENDS[name](str(path), facts), timeout_s, path,
                          f"opening with {name}")
    except VideoDecodeError:
        raise
    except Exception as err:  # each library has its own exception types
        raise VideoDecodeError(path, _one_line(err)) from err
    reader.timeout_s = timeout_s
    return reader


def _limited(reader_type: type, call: Callable[[], T], seconds: float | None, path: str | os.PathLike,
             what: str) -> T:
    """``call()`` under the time limit that suits ``reader_type``; a stuck native call marks (path, backend)."""
    if not getattr(reader_type, "native", False):
        with time_limit(seconds, path, what):
            return call()
    try:
        return call_with_deadline(call, seconds, path, what)
    except DecodeStuck:
        _STUCK.add((os.fspath(path), reader_type.backend))
        raise


def probe(path: str | os.PathLike, backend: str = "auto") -> VideoInfo:
    """Read a video's metadata; raises `VideoDecodeError` with the reason if it cannot be opened."""
    with open_video(path, backend) as reader:
        return reader.info()
