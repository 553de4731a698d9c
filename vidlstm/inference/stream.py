"""Live inference: frames from a file, a camera or a network stream -> JSONL window predictions and action
segments as they happen (`vidlstm-stream`, `scripts/stream.py`).

A reader thread decodes the source (PyAV for files and URLs: anything FFmpeg opens, e.g. rtsp://, http://,
udp://; OpenCV for camera indices) into a bounded queue; the main thread takes the frames that have arrived
and runs the model on them. Each frame is decoded once, cropped and resized once, and encoded by the CNN at most
once (only frames some window samples are encoded; their features are kept until no open window needs them).

``state="window"``: a window of ``window_s`` seconds every ``stride_s`` seconds, its clip sampled as the
checkpoint's eval sampler samples a validation video, scored by the temporal head on the cached features. The
window spans, frame indices and numbers are those of `predict.py` window mode on the same file (a window is
scored when its last frame has arrived; the last, shorter windows when the source ends).
``state="carry"`` (unidirectional heads that classify their last step): every ``carry_step``-th frame goes
through the recurrent layer once, its state carried from frame to frame (O(1) work per frame); a line every
``stride_s`` seconds gives the prediction after the newest frame.

Time is the source's own: frame index / frame rate. When the model falls behind a live (or paced) source,
frames older than ``max_lag_s`` are dropped on purpose before any work is spent on them (counted, and each
window says how many of its frames were replaced by their nearest kept neighbour), so the lag stays bounded.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import torch

from vidlstm.inference.predictor import Predictor, window_span, windows
from vidlstm.inference.segments import SegmentTracker

log = logging.getLogger(__name__)

STATES = ("window", "carry")
NETWORK_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://", "rtp://")
_UNBOUNDED = sys.maxsize  # a frame count past any real one: the span of a window that has fully arrived


class SourceError(RuntimeError):
    """The source cannot be opened or read. ``fatal``: retrying would not help (not a video, no video stream);
    otherwise a network source is reconnected."""

    def __init__(self, source: str, reason: str, fatal: bool = False) -> None:
        self.source, self.reason, self.fatal = source, " ".join(str(reason).split()), fatal
        super().__init__(f"{source}: {self.reason}")


@dataclass
class Frame:
    """One decoded frame: its index in the stream, when it arrived (time.monotonic()) and uint8 (3, H, W) RGB."""

    index: int
    arrival: float
    image: torch.Tensor


# ---- sources ------------------------------------------------------------------------------------------------------

def is_network(source: str) -> bool:
    return source.lower().startswith(NETWORK_SCHEMES)


def is_camera(source: str) -> bool:
    return source.strip().isdigit()


class PyAVSource:
    """A file or URL opened with PyAV (FFmpeg). ``open_timeout_s`` bounds opening, ``read_timeout_s`` each read
    (a stalled network source raises instead of hanging); ``max_decode_errors`` consecutive undecodable packets
    end it as garbage."""

    def __init__(self, target: str, open_timeout_s: float = 10.0, read_timeout_s: float = 5.0,
                 max_decode_errors: int = 25, fps: float | None = None) -> None:
        import av

        self.target, self.max_decode_errors, self.read_timeout_s = target, max_decode_errors, read_timeout_s
        try:
            self.container = av.open(target, timeout=(open_timeout_s, read_timeout_s))
        except av.error.InvalidDataError as err:
            raise SourceError(target, f"not a video: FFmpeg cannot read it ({err})", fatal=True) from err
        except (av.error.FileNotFoundError, av.error.IsADirectoryError) as err:
            raise SourceError(target, f"no such file ({err})", fatal=not is_network(target)) from err
        except (av.error.FFmpegError, OSError) as err:
            raise SourceError(target, f"cannot open ({err})") from err
        streams = list(self.container.streams.video)
        if not streams:
            self.container.close()
            raise SourceError(target, "no video stream (audio only?)", fatal=True)
        self.stream = max(streams, key=lambda s: (s.codec_context.width or 0) * (s.codec_context.height or 0))
        self.stream.thread_type = "AUTO"
        rate = self.stream.average_rate or self.stream.guessed_rate or self.stream.base_rate
        self.fps = float(fps or (rate if rate else 0.0))
        if not self.fps > 0:
            self.container.close()
            raise SourceError(target, "the stream declares no frame rate; set fps=", fatal=True)

    def frames(self) -> Iterator[torch.Tensor]:
        import av

        from vidlstm.data.video.pyav import frame_rotation

        errors, last = 0, time.monotonic()
        try:
            for packet in self.container.demux(self.stream):
                try:
                    decoded = packet.decode()
                    errors = 0
                except av.error.InvalidDataError as err:
                    errors += 1
                    if errors > self.max_decode_errors:
                        raise SourceError(self.target, f"sends garbage: {errors} packets in a row do not decode "
                                                       f"({err})", fatal=True) from err
                    continue
                for frame in decoded:
                    image = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
                    turn = frame_rotation(frame, self.target) or 0
                    yield torch.rot90(image, k=turn // 90, dims=(1, 2)) if turn else image
                    last = time.monotonic()
        except (av.error.FFmpegError, OSError) as err:
            quiet = time.monotonic() - last
            if isinstance(err, av.error.ExitError) or quiet >= 0.9 * self.read_timeout_s:
                # FFmpeg's interrupt callback fired (the read outlived read_timeout_s); protocols report it
                # as an exit or as an I/O error
                raise SourceError(self.target, f"stalled: no data within read_timeout_s={self.read_timeout_s:g} "
                                               f"({err})") from err
            raise SourceError(self.target, f"read failed ({err})") from err

    def close(self) -> None:
        self.container.close()


class CameraSource:
    """A camera by device index, through OpenCV (V4L2 on Linux, AVFoundation on macOS, DirectShow/MSMF on
    Windows)."""

    def __init__(self, index: int, fps: float | None = None) -> None:
        import cv2

        self.target = f"camera {index}"
        self.capture = cv2.VideoCapture(index)
        if not self.capture.isOpened():
            raise SourceError(self.target, "cannot be opened (no such device, or it is busy)", fatal=True)
        self.fps = float(fps or self.capture.get(cv2.CAP_PROP_FPS) or 30.0)

    def frames(self) -> Iterator[torch.Tensor]:
        import cv2

        while True:
            ok, bgr = self.capture.read()
            if not ok:
                raise SourceError(self.target, "stopped delivering frames")
            yield torch.from_numpy(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)).permute(2, 0, 1)

    def close(self) -> None:
        self.capture.release()


def open_source(source: str, open_timeout_s: float = 10.0, read_timeout_s: float = 5.0,
                max_decode_errors: int = 25, fps: float | None = None) -> PyAVSource | CameraSource:
    """A camera index ("0"), a network URL or a file path, opened."""
    if is_camera(source):
        return CameraSource(int(source), fps)
    if not is_network(source) and not Path(source).is_file():
        raise SourceError(source, "no such file (give a video file, a camera index or a network URL)", fatal=True)
    return PyAVSource(source, open_timeout_s, read_timeout_s, max_decode_errors, fps)


@dataclass
class Reconnect:
    """Back-off for network sources: waits ``initial_s``, then ``factor`` times longer each time up to
    ``max_s``, for at most ``attempts`` tries in a row (None: forever); ``on_end``: also reconnect when the
    stream ends (live feeds that restart)."""

    attempts: int | None = 5
    initial_s: float = 0.5
    max_s: float = 10.0
    factor: float = 2.0
    on_end: bool = False

    def delay(self, failures: int) -> float | None:
        """The wait before reconnect try number ``failures + 1`` (failures since the last frame), or None when
        it is time to give up."""
        if self.attempts is not None and failures >= self.attempts:
            return None
        return min(self.initial_s * self.factor ** failures, self.max_s)


# ---- the reader thread ------------------------------------------------------------------------------------------

class FrameQueue:
    """Frames between the reader thread and the model. Bounded: with ``drop_oldest`` a full queue drops its
    oldest frame (counted) so the newest always gets in; otherwise the reader waits (a file read at full speed)."""

    def __init__(self, maxsize: int, drop_oldest: bool) -> None:
        self.items: deque[Frame] = deque()
        self.maxsize, self.drop_oldest = max(1, maxsize), drop_oldest
        self.cond = threading.Condition()
        self.dropped = 0
        self.closed = False
        self.stopping = False

    def put(self, frame: Frame) -> bool:
        """False once the consumer has asked to stop."""
        with self.cond:
            while not self.drop_oldest and len(self.items) >= self.maxsize and not self.stopping:
                self.cond.wait(0.1)
            if self.stopping:
                return False
            if len(self.items) >= self.maxsize:
                self.items.popleft()
                self.dropped += 1
            self.items.append(frame)
            self.cond.notify_all()
            return True

    def take(self, most: int, timeout: float) -> list[Frame]:
        """Up to ``most`` frames, waiting at most ``timeout`` seconds for the first one ([] on timeout or end)."""
        with self.cond:
            deadline = time.monotonic() + timeout
            while not self.items and not self.closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    return []
                self.cond.wait(left)
            taken = [self.items.popleft() for _ in range(min(most, len(self.items)))]
            self.cond.notify_all()
            return taken

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()


class Reader(threading.Thread):
    """Decodes the source into a `FrameQueue`, numbering frames in arrival order; paces a file at its frame rate
    when ``realtime``; reconnects network sources with back-off. ``end_reason`` says why it stopped and
    ``failed`` whether that was an error (stall, garbage, lost connection) rather than the stream's end."""

    def __init__(self, source: str, opener: Callable[[], PyAVSource | CameraSource],
                 first: PyAVSource | CameraSource, queue: FrameQueue, realtime: bool, reconnect: Reconnect) -> None:
        super().__init__(name="vidlstm-stream-reader", daemon=True)
        self.source, self.opener, self.current = source, opener, first
        self.queue, self.realtime, self.reconnect = queue, realtime, reconnect
        self.fps = first.fps
        self.count = 0  # frames decoded (indices handed out)
        self.reconnects = 0
        self.failures = 0  # reconnect tries since the last frame arrived
        self.reconnecting = False  # waiting to reconnect: the consumer does not count this as a stall
        self.end_reason, self.failed = "", False

    def run(self) -> None:
        network = is_network(self.source)
        try:
            while True:
                try:
                    self._pump(self.current)
                    if self.queue.stopping:
                        self.end_reason = "stopped"
                        return
                    if not (network and self.reconnect.on_end):
                        self.end_reason = "the stream ended"
                        return
                    error = SourceError(self.source, "the stream ended")
                except SourceError as err:
                    if err.fatal or not network:
                        self.end_reason, self.failed = err.reason, True
                        return
                    error = err
                finally:
                    with contextlib.suppress(Exception):
                        self.current.close()
                if not self._reopen(error):
                    return
        except Exception as err:  # anything unexpected still ends the run with a message, never a silent hang
            self.end_reason, self.failed = f"reader failed: {type(err).__name__}: {err}", True
        finally:
            self.queue.close()

    def _pump(self, source: PyAVSource | CameraSource) -> None:
        started = time.monotonic() - self.count / self.fps  # paced files continue where they were
        frames = source.frames()
        try:
            self._put_all(frames, started)
        finally:
            frames.close()  # release the decoder now (a suspended generator keeps its codec threads alive)

    def _put_all(self, frames: Iterator[torch.Tensor], started: float) -> None:
        for image in frames:
            arrival = time.monotonic()
            if self.realtime:
                due = started + self.count / self.fps
                if due > arrival:
                    time.sleep(due - arrival)
                arrival = max(time.monotonic(), due)
            if not self.queue.put(Frame(self.count, arrival, image)):
                return
            self.count += 1
            self.failures = 0

    def _reopen(self, error: SourceError) -> bool:
        self.reconnecting = True
        try:
            return self._reopen_with_backoff(error)
        finally:
            self.reconnecting = False

    def _reopen_with_backoff(self, error: SourceError) -> bool:
        while (delay := self.reconnect.delay(self.failures)) is not None:
            self.failures += 1
            log.warning("%s; reconnecting in %.1f s (try %d)", error, delay, self.failures)
            if self._sleep(delay):
                self.end_reason = "stopped"
                return False
            try:
                self.current = self.opener()
                self.reconnects += 1
                log.info("%s: reconnected", self.source)
                return True
            except SourceError as err:
                error = err
                if err.fatal:
                    break
        self.end_reason, self.failed = f"{error.reason} (gave up after {self.failures} reconnect tries)", True
        return False

    def _sleep(self, seconds: float) -> bool:
        """Sleep, waking early when the consumer stops; True if it did."""
        with self.queue.cond:
            self.queue.cond.wait_for(lambda: self.queue.stopping, timeout=seconds)
            return self.queue.stopping


# ---- the model side ----------------------------------------------------------------------------------------------

class _Engine:
    """What both states share: the network, the split transform, autocast on GPUs, window lines."""

    chunk = 8  # frames per CNN call; between calls, frames that became older than max_lag_s are dropped

    def __init__(self, predictor: Predictor, fps: float, window_s: float, stride_s: float,
                 max_lag_s: float | None = None) -> None:
        self.predictor, self.net, self.device = predictor, predictor.net, predictor.device
        self.max_lag_s = max_lag_s  # None: never drop (a file read at full speed)
        self.late = 0  # frames dropped here because they aged past max_lag_s while earlier ones were encoded
        self.fps, self.window_s, self.stride_s = fps, window_s, stride_s
        self.geometric, self.to_float = predictor.uint8_transform, predictor.to_float
        self.arrival: dict[int, float] = {}
        self.received = 0  # frames seen: the highest index + 1 (dropped ones included)
        self.encoded = 0  # frames that went through the CNN

    def autocast(self) -> contextlib.AbstractContextManager:
        return (torch.autocast("cuda", dtype=torch.float16) if self.device.type == "cuda"
                else contextlib.nullcontext())

    def fresh(self, indices: list[int]) -> list[int]:
        """``indices`` less the frames now older than ``max_lag_s`` (counted in ``late``)."""
        if self.max_lag_s is None:
            return indices
        now = time.monotonic()
        kept = [i for i in indices if now - self.arrival[i] <= self.max_lag_s]
        self.late += len(indices) - len(kept)
        return kept

    @torch.no_grad()
    def encode(self, images: list[torch.Tensor]) -> torch.Tensor:
        """uint8 (3, h, w) frames at the model's size -> (N, D) features, one CNN call."""
        batch = torch.cat([self.to_float(image[None]) for image in images]).to(self.device)
        with self.autocast():
            features = self.net.encoder.frame_features(batch)
        self.encoded += len(images)
        return features.float()

    def line(self, start_s: float, end_s: float, probs: torch.Tensor, newest: int, replaced: int
             ) -> dict[str, Any]:
        row = self.predictor.row("", probs, 0)
        return {"kind": "window", "start_s": start_s, "end_s": end_s, "label": row["label"], "score": row["score"],
                "topk_labels": row["topk_labels"], "topk_scores": row["topk_scores"],
                "lag_s": round(time.monotonic() - self.arrival.get(newest, time.monotonic()), 4),
                "dropped_frames": replaced, "_probs": probs}


class WindowEngine(_Engine):
    """``state="window"``: windows as `predict.py` window mode makes them, scored from cached frame features."""

    def __init__(self, predictor: Predictor, fps: float, window_s: float, stride_s: float,
                 max_lag_s: float | None = None) -> None:
        super().__init__(predictor, fps, window_s, stride_s, max_lag_s)
        if window_s * fps < 1:
            raise ValueError(f"window={window_s} s holds no frame at {fps:g} frames/s")
        self.small: dict[int, torch.Tensor] = {}  # frames of the open windows, resized and cropped (uint8)
        self.features: dict[int, torch.Tensor] = {}
        self.planned: dict[int, tuple[int, int, list[int]]] = {}  # window -> (first, stop, clip frame indices)
        self.needed: set[int] = set()
        self.plan_next = 0  # next window to plan
        self.next = 0  # next window to score
        self.skipped = 0  # windows none of whose frames were kept

    def push(self, frames: list[Frame]) -> list[dict[str, Any]]:
        for frame in frames:
            self.small[frame.index] = self.geometric(frame.image[None])[0]
            self.arrival[frame.index] = frame.arrival
            self.received = max(self.received, frame.index + 1)
        self._plan()
        todo = sorted(i for i in (f.index for f in frames) if i in self.needed)
        for start in range(0, len(todo), self.chunk):
            chunk = todo[start: start + self.chunk]
            kept = self.fresh(chunk)
            for i in set(chunk) - set(kept):
                del self.small[i]  # dropped: a window that samples it takes its nearest kept neighbour
            self._encode(kept)
        events = []
        while self.next * self.stride_s + self.window_s <= self.received / self.fps:  # window fully arrived
            first, stop, indices = self.planned.pop(self.next)
            start = self.next * self.stride_s
            events += self._score(round(start, 3), round(start + self.window_s, 3), first, stop, indices)
            self.next += 1
            self._forget()
        return events

    def finish(self) -> list[dict[str, Any]]:
        """The windows left when the source ends: those of `predict.py` window mode on the frames received."""
        if self.received == 0:
            return []
        events = []
        for w in windows(self.received, self.fps, self.window_s, self.stride_s)[self.next:]:
            indices = self.predictor.window_indices(w.first, w.stop)
            events += self._score(w.start_s, w.end_s, w.first, w.stop, indices)
        self.next = _UNBOUNDED
        return events

    def _plan(self) -> None:
        """Clip indices of every window whose first frame has arrived (spans of fully arrived windows)."""
        while True:
            first, stop, _ = window_span(self.plan_next * self.stride_s, self.window_s, _UNBOUNDED, self.fps)
            if first >= self.received:
                return
            indices = self.predictor.window_indices(first, stop)
            self.planned[self.plan_next] = (first, stop, indices)
            self.needed.update(i for i in indices if i not in self.features)
            self.plan_next += 1

    def _encode(self, indices: list[int]) -> None:
        indices = [i for i in indices if i not in self.features and i in self.small]
        if indices:
            for i, feature in zip(indices, self.encode([self.small[i] for i in indices]), strict=True):
                self.features[i] = feature
                self.needed.discard(i)

    def _score(self, start_s: float, end_s: float, first: int, stop: int, indices: list[int]
               ) -> list[dict[str, Any]]:
        # Clip frames still unencoded (the last windows of a source, sampled only once its length is known),
        # unless they have aged past max_lag_s; a frame that was dropped takes the nearest encoded one's place.
        self._encode(self.fresh(sorted({i for i in indices if i not in self.features and i in self.small})))
        encoded = [i for i in range(first, stop) if i in self.features]
        if not encoded:
            self.skipped += 1
            return []
        chosen = [i if i in self.features else min(encoded, key=lambda k: (abs(k - i), k)) for i in indices]
        with torch.no_grad(), self.autocast():
            logits = self.net.head(torch.stack([self.features[i] for i in chosen])[None])
        probs = logits.float().softmax(-1)[0].cpu()
        replaced = sum(a != b for a, b in zip(indices, chosen, strict=True))
        return [self.line(start_s, end_s, probs, max(encoded), replaced)]

    def _forget(self) -> None:
        """Drop frames and features no window still to be scored can use."""
        if self.next in self.planned:
            keep_from = self.planned[self.next][0]
        else:
            keep_from = window_span(self.next * self.stride_s, self.window_s, _UNBOUNDED, self.fps)[0]
        keep_from = min(keep_from, self.received - 1)  # the last frame: a window past the end still gets it
        for store in (self.small, self.features, self.arrival):
            for i in [i for i in store if i < keep_from]:
                del store[i]
        self.needed = {i for i in self.needed if i >= keep_from}


def carry_problem(net: torch.nn.Module) -> str | None:
    """Why ``state=carry`` cannot run this network's head (None: it can)."""
    head = net.head
    recurrent = getattr(head, "recurrent", None)
    if recurrent is None:
        return "the head has no recurrent layer (nothing to carry)"
    if recurrent.num_directions != 1:
        return "the head is bidirectional: its backward direction needs the whole clip"
    if recurrent.reverse:
        return "the head reads clips backwards (reverse=true)"
    if head.pooling.mode != "last":
        return f"the head pools over the whole clip ({head.pooling.mode!r} pooling)"
    return None


class CarryEngine(_Engine):
    """``state="carry"``: every ``step``-th frame steps the recurrent layer once, its state carried; a line every
    ``stride_s`` seconds (the interval since the previous line) with the prediction after the newest frame:
    the head applied to all frames fed so far, as `TemporalHead` classifies its last step."""

    def __init__(self, predictor: Predictor, fps: float, window_s: float, stride_s: float, step: int | None = None,
                 max_lag_s: float | None = None) -> None:
        super().__init__(predictor, fps, window_s, stride_s, max_lag_s)
        problem = carry_problem(self.net)
        if problem:
            raise ValueError(f"state=carry cannot run this checkpoint: {problem}; use state=window")
        # Frames one clip of the training length would use from a window_s window.
        self.step = step or max(1, round(window_s * fps / predictor.num_frames))
        self.state: Any = None
        self.feature_sum: torch.Tensor | None = None
        self.fed = 0
        self.logits: torch.Tensor | None = None
        self.last_fed = -1
        self.emitted = 0  # lines written: line m covers [m * stride, (m + 1) * stride)

    def push(self, frames: list[Frame]) -> list[dict[str, Any]]:
        for frame in frames:
            self.arrival[frame.index] = frame.arrival
        fed = [f for f in frames if f.index % self.step == 0]
        feature_of: dict[int, torch.Tensor] = {}
        for start in range(0, len(fed), self.chunk):
            part = fed[start: start + self.chunk]
            keep = set(self.fresh([f.index for f in part]))
            chunk = [f for f in part if f.index in keep]
            if chunk:
                features = self.encode([self.geometric(f.image[None])[0] for f in chunk])
                feature_of.update({f.index: features[n] for n, f in enumerate(chunk)})
        events = []
        for frame in frames:
            self.received = max(self.received, frame.index + 1)
            if frame.index in feature_of:
                self._step(feature_of[frame.index])
                self.last_fed = frame.index
            while self.logits is not None and (self.emitted + 1) * self.stride_s <= self.received / self.fps:
                events.append(self._emit(self.emitted * self.stride_s, (self.emitted + 1) * self.stride_s))
        for i in [i for i in self.arrival if i < self.received - 1]:
            del self.arrival[i]
        return events

    def finish(self) -> list[dict[str, Any]]:
        end = self.received / self.fps
        if self.logits is None or end <= self.emitted * self.stride_s:
            return []
        return [self._emit(self.emitted * self.stride_s, end)]

    @torch.no_grad()
    def _step(self, feature: torch.Tensor) -> None:
        head = self.net.head
        with self.autocast():
            out, self.state = head.recurrent(feature[None, None], state=self.state)
            summary = out[:, -1]
            if getattr(head, "mean_path", False):
                self.feature_sum = feature if self.feature_sum is None else self.feature_sum + feature
                summary = torch.cat([summary, (self.feature_sum / (self.fed + 1))[None]], dim=-1)
            self.logits = head.classifier(summary)[0].float()
        self.fed += 1

    def _emit(self, start: float, end: float) -> dict[str, Any]:
        self.emitted += 1
        return self.line(round(start, 3), round(end, 3), self.logits.softmax(-1).cpu(), self.received - 1, 0)


# ---- the run -----------------------------------------------------------------------------------------------------

@dataclass
class StreamResult:
    """What a run did: frames, drops, windows, segments, lag, why it ended."""

    source: str
    fps: float
    frames: int = 0
    encoded: int = 0
    dropped: int = 0
    windows: int = 0
    windows_skipped: int = 0
    segments: int = 0
    reconnects: int = 0
    seconds: float = 0.0
    lags: list[float] = field(default_factory=list)
    end_reason: str = ""
    failed: bool = False

    def summary(self) -> dict[str, Any]:
        lags = sorted(self.lags)
        pick = (lambda q: round(lags[min(len(lags) - 1, int(q * len(lags)))], 4)) if lags else (lambda q: None)
        media_s = self.frames / self.fps if self.fps else 0.0
        return {"source": self.source, "fps": round(self.fps, 3), "frames": self.frames, "encoded": self.encoded,
                "dropped": self.dropped, "windows": self.windows, "windows_skipped": self.windows_skipped,
                "segments": self.segments, "reconnects": self.reconnects, "seconds": round(self.seconds, 3),
                "frames_per_s": round(self.frames / self.seconds, 2) if self.seconds else None,
                "realtime_factor": round(media_s / self.seconds, 3) if self.seconds else None,
                "lag_p50_s": pick(0.5), "lag_p95_s": pick(0.95), "end_reason": self.end_reason,
                "failed": self.failed}


class EventWriter:
    """JSONL lines to a file (replaced at start) or stdout (``-``), flushed line by line."""

    def __init__(self, output: str | os.PathLike | None) -> None:
        self.to_stdout = output in (None, "-", "")
        self.broken = False  # the reader of stdout went away (e.g. `| head`): nothing more is written
        if self.to_stdout:
            self.handle: IO[str] = sys.stdout
        else:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            self.handle = open(output, "w")  # noqa: SIM115 - closed by close()

    def write(self, event: dict[str, Any]) -> None:
        if self.broken:
            return
        try:
            self.handle.write(json.dumps({k: v for k, v in event.items() if not k.startswith("_")}) + "\n")
            self.handle.flush()
        except BrokenPipeError:
            self.broken = True
            with contextlib.suppress(OSError):  # no flush-time error at exit either
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.handle.fileno())

    def close(self) -> None:
        if not self.to_stdout:
            self.handle.close()


def stream(predictor: Predictor, source: str, output: str | os.PathLike | None = None, window_s: float = 2.0,
           stride_s: float | None = 1.0, state: str = "window", carry_step: int | None = None,
           realtime: bool = False, max_lag_s: float = 1.0, batch_frames: int = 16, stall_timeout_s: float = 10.0,
           open_timeout_s: float = 10.0, read_timeout_s: float = 5.0, max_decode_errors: int = 25,
           fps: float | None = None, reconnect: Reconnect | None = None, segments: dict[str, Any] | None = None,
           max_seconds: float | None = None, log_every_s: float = 10.0, threads: int | None = None,
           on_event: Callable[[dict[str, Any]], None] | None = None) -> StreamResult:
    """Run the model on ``source`` until it ends (or ``max_seconds`` of wall time), writing window and segment
    lines to ``output`` as they happen; returns what happened. A source that cannot be opened raises
    `SourceError`; one that stalls or sends garbage mid-way ends the run with ``failed`` set and the segments so
    far written. Frames are dropped (counted) only for live sources and ``realtime`` files, when older than
    ``max_lag_s``; a file read at full speed is never dropped from (its reader waits instead). On a CPU the
    model gets ``threads`` intra-op threads (None: all cores but one, which the decoding thread needs; more
    threads than free cores make every CNN call wait on the others)."""
    if state not in STATES:
        raise ValueError(f"state must be one of {STATES}, got {state!r}")
    stride_s = stride_s or window_s
    reconnect = reconnect or Reconnect()

    def opener() -> PyAVSource | CameraSource:
        return open_source(source, open_timeout_s, read_timeout_s, max_decode_errors, fps)

    first = _first_open(source, opener, reconnect)
    live = is_network(source) or is_camera(source)
    drop = live or realtime
    lag_limit = max_lag_s if drop else None
    engine: WindowEngine | CarryEngine = (
        WindowEngine(predictor, first.fps, window_s, stride_s, lag_limit) if state == "window"
        else CarryEngine(predictor, first.fps, window_s, stride_s, carry_step, lag_limit))
    queue = FrameQueue(max(2, math.ceil(max_lag_s * first.fps)) if drop else 4 * batch_frames, drop_oldest=drop)
    reader = Reader(source, opener, first, queue, realtime and not live, reconnect)
    tracker = SegmentTracker(predictor.class_names, **(segments or {}))
    writer = EventWriter(output)
    result = StreamResult(source, first.fps)
    log.info("Streaming %s (%.3g frames/s, %s, state=%s, window %gs every %gs) -> %s", source, first.fps,
             "live" if live else "paced file" if realtime else "file", state, window_s, stride_s,
             "stdout" if writer.to_stdout else output)

    def emit(event: dict[str, Any]) -> None:
        writer.write(event)
        if on_event is not None:
            on_event(event)

    started = last_log = time.monotonic()
    late = 0
    previous_threads = torch.get_num_threads()
    if predictor.device.type == "cpu":
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) - 1))
    reader.start()
    try:
        while True:
            frames = queue.take(batch_frames, stall_timeout_s)
            if not frames:
                if queue.closed and not queue.items:
                    break
                if reader.reconnecting:
                    continue
                result.end_reason, result.failed = f"stalled: no frame for {stall_timeout_s:g} s", True
                break
            if drop:
                now = time.monotonic()
                fresh = [f for f in frames if now - f.arrival <= max_lag_s]
                late += len(frames) - len(fresh)
                frames = fresh
            for event in engine.push(frames) if frames else []:
                result.windows += 1
                result.lags.append(event["lag_s"])
                emit(event)
                for segment in tracker.update(event["start_s"], event["end_s"], event["_probs"]):
                    result.segments += 1
                    emit(segment)
            if writer.broken:
                result.end_reason = "the output was closed"
                break
            if max_seconds is not None and time.monotonic() - started >= max_seconds:
                result.end_reason = f"stopped after max_seconds={max_seconds:g}"
                break
            if time.monotonic() - last_log >= log_every_s:
                last_log = time.monotonic()
                _log_progress(result, reader, engine, queue.dropped + late + engine.late, last_log - started)
    except KeyboardInterrupt:
        result.end_reason = "interrupted"
    finally:
        queue.stop()
        reader.join(timeout=2.0)
        try:
            for event in engine.finish():
                result.windows += 1
                emit(event)
                for segment in tracker.update(event["start_s"], event["end_s"], event["_probs"]):
                    result.segments += 1
                    emit(segment)
            for segment in tracker.finish():
                result.segments += 1
                emit(segment)
        finally:
            writer.close()  # the reader thread closes its own source (never closed under a running read)
            torch.set_num_threads(previous_threads)
    result.seconds = time.monotonic() - started
    result.frames, result.encoded = reader.count, engine.encoded
    result.dropped, result.reconnects = queue.dropped + late + engine.late, reader.reconnects
    result.windows_skipped = getattr(engine, "skipped", 0)
    if not result.end_reason:
        result.end_reason, result.failed = reader.end_reason or "the stream ended", reader.failed
    if result.frames == 0 and not result.failed:
        result.end_reason, result.failed = f"{result.end_reason}; no frame was decoded", True
    return result


def _first_open(source: str, opener: Callable[[], PyAVSource | CameraSource], reconnect: Reconnect
                ) -> PyAVSource | CameraSource:
    """Open the source; a network source that is not up yet is retried with the reconnect back-off."""
    failures = 0
    while True:
        try:
            return opener()
        except SourceError as err:
            delay = reconnect.delay(failures) if is_network(source) and not err.fatal else None
            if delay is None:
                raise
            failures += 1
            log.warning("%s; retrying in %.1f s (try %d)", err, delay, failures)
            time.sleep(delay)


def _log_progress(result: StreamResult, reader: Reader, engine: _Engine, dropped: int, elapsed: float) -> None:
    lags = result.lags[-200:]
    log.info("%d frames (%.1f/s, %d encoded), %d dropped, %d windows, %d segments, lag p50 %s s",
             reader.count, reader.count / max(elapsed, 1e-9), engine.encoded, dropped, result.windows,
             result.segments, f"{statistics.median(lags):.3f}" if lags else "n/a")
