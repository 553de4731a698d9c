"""The `VideoReader` interface every backend implements, and helpers the backends share.

`get_frames(indices)` gives exactly the requested frames as a ``torch.uint8`` tensor of shape ``(T, 3, H, W)``
(RGB, in the order asked, repeats allowed). Every failure to read a file surfaces as `VideoDecodeError`
carrying the path and a one-line reason.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import ClassVar, TypeVar

import numpy as np
import torch

from vidlstm.data.video.deadlines import DEFAULT_TIMEOUT_S, _limited, _stuck_before
from vidlstm.data.video.errors import FrameOutOfRange, VideoDecodeError, _one_line
from vidlstm.data.video.facts import MP4_FAMILY, StreamFacts, VideoInfo, stream_facts

T = TypeVar("T")

# Backends that turn a frame index into a packet or timestamp from the container's index instead of counting
# decoded frames in order. They refuse streams where packets and frames do not line up one to one at a steady rate
# (measured by tests/test_video_exact.py): frames sharing a timestamp (each wrong on 3 to 4 reads in 5), packets that
# show no picture (VP8 alt-ref frames: torchcodec wrong on every read, decord counts them as frames and repeats
# the last one past the real end), and any variable frame rate (decord was off by one on 9 of 500 repeated reads
# of a 25/50 fps .mkv in issue 12).
# They also trust the container to give every frame its presentation time, which only containers with a frame
# table do (`StreamFacts.indexes_frames`); elsewhere they serve intra-only streams alone. Measured on H.264 with
# B-frames (tests/test_video_exact.py): in AVI (no presentation times) torchcodec and decord were wrong on 52 of
# 60 reads, in fragmented MP4 and FLV on 13-17 of 60, in MPEG-TS decord on every read while torchcodec failed;
# decord was wrong on 36 of 60 reads of WMV2 in ASF.
# They seek to the packets flagged as keyframes: H.264 with intra refresh flags recovery points (P pictures) so,
# and both were wrong on 5 of 30 reads of such a file in MP4 and in Matroska.
INDEX_MAPPING_BACKENDS = frozenset({"decord", "torchcodec"})


class VideoReader(ABC):
    """Random access to the frames of one video file. Use as a context manager or call `close()`.

    Frames come out in display orientation: backends that do not apply rotation metadata themselves
    (``applies_rotation = False``) are rotated here.
    """

    backend: ClassVar[str]
    applies_rotation: ClassVar[bool] = False
    # Decodes a batch in one native call (GIL released): limited by `call_with_deadline`, not by a signal.
    native: ClassVar[bool] = False
    # Opens file names that are not UTF-8 (bytes from Latin-1 systems, which Python hands over as lone surrogates):
    # only PyAV does; torchcodec and decord refuse the string, OpenCV crashes the process (segmentation fault).
    opens_any_name: ClassVar[bool] = False
    # Codecs this backend decodes wrongly (measured by tests/test_video_backends.py): `auto` skips it there.
    UNRELIABLE_CODECS: ClassVar[frozenset[str]] = frozenset()
    # Codecs the FFmpeg this backend bundles has no decoder for (tests/test_video_exact.py shows each still fails).
    MISSING_DECODERS: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def unsuitable_reason(cls, facts: StreamFacts) -> str | None:
        """Why this backend must not serve a file with these facts, or None."""
        if facts.codec in cls.MISSING_DECODERS:
            return f"{cls.backend} cannot decode {facts.codec} (the FFmpeg it bundles has no decoder for it)"
        if facts.codec in cls.UNRELIABLE_CODECS:
            return f"{cls.backend} decodes {facts.codec} wrongly (wrong or missing frames on random access)"
        if cls.backend in INDEX_MAPPING_BACKENDS:
            if facts.variable_frame_rate:
                return (f"{cls.backend} decodes variable-frame-rate streams wrongly (neighbouring frames on random "
                        "access)")
            if facts.leading_non_keyframes:
                return (f"{cls.backend} decodes streams that start without a keyframe wrongly "
                        f"({facts.leading_non_keyframes} packet(s) before the first: a recording begun mid-GOP, or a "
                        "cut by stream copy)")
            if facts.hidden_frames:
                return (f"{cls.backend} decodes streams with hidden frames wrongly ({facts.num_packets} packets, "
                        f"{facts.num_frames} frames)")
            if facts.false_keyframes:
                return (f"{cls.backend} decodes streams with false keyframe flags wrongly ({facts.false_keyframes} "
                        "packets flagged as keyframes hold P/B pictures: intra refresh, or every packet flagged)")
            if not (facts.indexes_frames or facts.intra_only):
                return (f"{cls.backend} decodes {_container_name(facts)} streams with inter-coded frames wrongly (no "
                        "frame table with presentation times to map frame numbers through)")
        return None

    timeout_s: float | None = DEFAULT_TIMEOUT_S  # limit for one get_frames call (see `time_limit`)

    def __init__(self, path: str | os.PathLike, facts: StreamFacts | None = None) -> None:
        self.path = str(path)
        if not self.opens_any_name and not _utf8(self.path):
            raise VideoDecodeError(self.path, f"{self.backend} cannot open a file whose name is not UTF-8 (PyAV can)")
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
        if bad:  # never handed to a backend: some repeat the last frame silently
            raise FrameOutOfRange(self.path, f"frame {bad[0]} requested, the video has {self.num_frames} frames "
                                             f"(outside [0, {self.num_frames}))")
        unique = sorted(set(wanted))
        decoded = self._bounded(lambda: self._decode_sorted_unique(unique), "frames",
                                f"decoding {len(unique)} frames with {self.backend}")
        if decoded.shape[0] != len(unique) or decoded.dim() != 4 or decoded.shape[1] != 3:
            raise VideoDecodeError(
                self.path, f"{self.backend} returned shape {tuple(decoded.shape)} for {len(unique)} frames"
            )
        if self.facts.rotation and not self.applies_rotation:
            decoded = torch.rot90(decoded, k=self.facts.rotation // 90, dims=(2, 3))
        position = {frame: row for row, frame in enumerate(unique)}
        return _in_order(decoded, None if wanted == unique else [position[i] for i in wanted])

    def _bounded(self, call: Callable[[], T], what: str, doing: str) -> T:
        """``call()``, a decode in the backend's library, under the reader's time limit; whatever the library
        raises becomes a `VideoDecodeError` ("<backend> failed to decode <what>: ...")."""
        if _stuck_before(self.path, self.backend):
            raise VideoDecodeError(self.path, f"{self.backend} is still stuck in an earlier call on this file")
        try:
            return _limited(type(self), call, self.timeout_s, self.path, doing)
        except VideoDecodeError:
            raise
        except Exception as err:  # decoder libraries raise many unrelated types
            raise VideoDecodeError(self.path, f"{self.backend} failed to decode {what}: {_one_line(err)}") from err

    def info(self) -> VideoInfo:
        return VideoInfo(self.path, self.num_frames, self.fps, self.height, self.width, self.backend)

    def close(self) -> None:  # noqa: B027 - optional for backends that hold no OS resources
        pass

    def __enter__(self) -> VideoReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_CONTAINER_NAMES = {MP4_FAMILY: "fragmented MP4", "mpegts": "MPEG-TS", "mpeg": "MPEG-PS", "asf": "ASF/WMV"}


def _container_name(facts: StreamFacts) -> str:
    return _CONTAINER_NAMES.get(facts.container) or facts.container.split(",")[0].upper() or "unknown-container"


def _utf8(path: str) -> bool:
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _from_hwc(frames: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2)


def _in_order(decoded: torch.Tensor, rows: list[int] | None) -> torch.Tensor:
    """``decoded`` (N, 3, H, W) as a contiguous tensor of its ``rows`` (None: all, in order). Decoders hand over
    (N, H, W, 3) memory seen as (N, 3, H, W); numpy picks the rows and lays the pixels out as (N, 3, H, W) in one
    pass, 3-4x faster than torch's strided uint8 copy (which is also multithreaded)."""
    hwc = decoded.permute(0, 2, 3, 1)
    if decoded.device.type == "cpu" and hwc.is_contiguous():
        frames = hwc.numpy()
        if rows is not None:
            frames = frames[rows]
        return torch.from_numpy(np.ascontiguousarray(frames.transpose(0, 3, 1, 2)))
    if rows is not None:
        decoded = decoded.index_select(0, torch.as_tensor(rows, device=decoded.device))
    return decoded.contiguous()
