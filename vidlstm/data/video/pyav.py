"""The PyAV backend (`PyAVReader`): seeks to the keyframe at or before each wanted run of frames and decodes
forward, telling frames apart by presentation timestamp; and the display-rotation checks PyAV needs."""

from __future__ import annotations

import gc
import math
import os
import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
import torch

from vidlstm.data.video import timeline as tl
from vidlstm.data.video.base import VideoReader, _from_hwc
from vidlstm.data.video.errors import VideoDecodeError
from vidlstm.data.video.facts import StreamFacts

if TYPE_CHECKING:
    from av import VideoFrame
    from av.video.stream import VideoStream

# A forked child (a DataLoader worker, a probe pool process) never frees the objects it inherits: a decoder the
# parent had not freed yet (garbage in a reference cycle, waiting for a collection) has no threads in the child,
# and freeing it there (avcodec_free_context joins them) hung or crashed the child. Freezing leaves the inherited
# objects out of the child's collections (and their memory pages shared); what the child makes is collected.
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=gc.freeze)

_STEP_BACKS = 2  # seeks to an earlier keyframe after landing past the wanted frame, before starting from frame 0


class _Mismatch(Exception):
    """The timeline in use does not describe what the decoder delivers; the read is redone with a better one."""


class PyAVReader(VideoReader):
    """PyAV (FFmpeg): exact by pts on constant and variable frame rate; seeks to the keyframe at or before each
    wanted run of frames and decodes forward (a run far from the previous one gets its own seek).

    Frame ``i`` is the frame whose pts is the ``i``-th in display order (`timeline.Timeline`). When the packets
    do not describe the decoded frames (hidden frames the demuxer shows, undecodable packets), the timeline is
    rebuilt from one full decode; when frames carry no usable timestamps, frames are counted from the start.
    """

    backend = "pyav"
    opens_any_name = True

    def __init__(self, path: str | os.PathLike, facts: StreamFacts | None = None) -> None:
        super().__init__(path, facts)
        import av

        self._container = av.open(self.path)
        try:
            self._stream = self._container.streams[self.facts.stream_index]
            # Frame threads decode several frames at once and lose the ones in flight when a packet fails to
            # decode: on a file with such packets, slice threads only, so the reader sees the frames the probe counted.
            self._stream.thread_type = "SLICE" if self.facts.undecodable_packets else "AUTO"
            check_declared_rotation(self.path, self._container.format.name, self._stream, self.facts.rotation)
        except BaseException:
            self._container.close()
            raise
        rate = self._stream.average_rate or self._stream.guessed_rate
        self._fps = float(rate) if rate else 0.0
        # Every frame comes out at the stream's size from the header, as the other backends deliver it, also where
        # the size changes mid-stream (concatenated recordings, adaptive streams); None: taken from frame 0.
        context = self._stream.codec_context
        self._size = (int(context.height), int(context.width)) if context.height and context.width else None
        self.decoded_frames = 0  # frames taken out of the decoder by this reader (what seeking saves)
        self.seeks = 0  # seeks made by this reader
        self._key = tl.cache_key(self.path, self.facts.stream_index)
        self._timeline: tl.Timeline | str | None = None  # None: not read yet; str: why frames are counted instead
        self._frames: Iterator[VideoFrame] | None = None  # decoder output since the last seek
        # Where frames are counted: the decoder output since the rewind, and how many frames it has given (valid
        # while it is still `_frames`: anything that moves the container replaces or clears that)
        self._counting: Iterator[VideoFrame] | None = None
        self._counted = 0
        self._last_pts: int | None = None  # pts of the last frame taken from `_frames` (None: none since the seek)
        self._sought = 0  # keyframe index of the last seek

    @property
    def fps(self) -> float:
        return self._fps

    @property
    def coded_size(self) -> tuple[int, int]:
        if self._size is None:
            self._bounded(self._size_of_frame_0, "frame 0", "decoding frame 0 with pyav")
        return self._size

    def _size_of_frame_0(self) -> None:
        """Take the size from frame 0 where the header gives none."""
        if self._size is not None:
            return
        self._rewind()
        frame = next(self._frames, None)  # type: ignore[arg-type]
        self._frames = None  # the next read starts with a seek
        if frame is not None:
            self._size = (frame.height, frame.width)
            return
        raise VideoDecodeError(self.path, "no frame decodes")

    def _rgb(self, frame: VideoFrame) -> np.ndarray:
        """``frame`` as (H, W, 3) RGB at the stream's size (scaled there when the stream changed size)."""
        height, width = self._size
        if (frame.height, frame.width) == (height, width):
            return frame.to_ndarray(format="rgb24")
        return frame.to_ndarray(format="rgb24", width=width, height=height)

    @property
    def timeline(self) -> tl.Timeline | None:
        """The frame table seeking uses (read on first use), or None where frames are counted from the start."""
        if self._timeline is None:
            found = tl.cached(self._key)
            if found is None:
                found = tl.remember(self._key, tl.packet_timeline(self.path, self.facts.stream_index))
            if isinstance(found, tl.Timeline) and found.source == "packets" and len(found) != self.num_frames:
                found = self._rebuild(f"{len(found)} packets show a frame where {self.num_frames} are expected")
            self._timeline = found
        return self._timeline if isinstance(self._timeline, tl.Timeline) else None

    def _rebuild(self, why: str) -> tl.Timeline | str:
        """Replace a packet timeline that proved wrong by one read from a full decode (cached for the file)."""
        found = tl.decoded_timeline(self.path, self.facts.stream_index, self._stream.thread_type)
        self._timeline = tl.remember(self._key, found if isinstance(found, tl.Timeline) else f"{why}; {found}")
        return self._timeline

    def _decode_sorted_unique(self, indices: list[int]) -> torch.Tensor:
        self._size_of_frame_0()  # also when a later frame is asked for first
        try:
            while (timeline := self.timeline) is not None:
                try:
                    return _from_hwc(np.stack(self._decode_by_pts(indices, timeline)))
                except _Mismatch as err:
                    if timeline.source == "packets":
                        self._rebuild(str(err))
                    else:
                        self._timeline = tl.remember(self._key, str(err))
            return _from_hwc(np.stack(self._decode_counting(indices)))
        except BaseException:
            self._frames = None  # interrupted mid-decode (error or timeout): the next read starts with a seek
            raise

    def _seek(self, key: int, timeline: tl.Timeline) -> None:
        """Go to frame ``key``: a keyframe (a seek), or the stream's start (`_rewind`) where no keyframe comes
        before the wanted frame (streams that begin mid-GOP: FFmpeg cannot seek there)."""
        if timeline.is_key(key):
            self._container.seek(int(timeline.pts[key]), stream=self._stream, backward=True, any_frame=False)
            self._frames = tl.decode_passing_over_errors(self._container, self._stream)
        else:
            self._rewind()
        self._last_pts, self._sought = None, key
        self.seeks += 1

    def _rewind(self) -> None:
        """Decode from the stream's first packet on (`timeline.rewound`)."""
        self._container, self._stream = tl.rewound(self.path, self._container, self._stream)
        self._frames = tl.decode_passing_over_errors(self._container, self._stream)

    def _decode_by_pts(self, indices: list[int], timeline: tl.Timeline) -> list[np.ndarray]:
        """Frames at ``indices`` (sorted, unique), found by pts: each wanted frame is reached by decoding forward
        from where the decoder is, unless the keyframe before it lies beyond that point (then seek there)."""
        if indices[-1] >= len(timeline):
            raise VideoDecodeError(self.path, f"only {len(timeline)} frames decode; frame {indices[-1]} was "
                                              f"requested (the header promised {self.num_frames})")
        out = []
        for index in indices:
            target = int(timeline.pts[index])
            key = timeline.keyframe_before(index)
            last = None if self._last_pts is None else timeline.index_of(self._last_pts)
            # Decode on from the last frame when the keyframe before the wanted one is not beyond it.
            if self._frames is None or (last is None and self._sought > index) or (
                    last is not None and (last >= index or key > last + 1)):
                self._seek(key, timeline)
            out.append(self._decode_until(index, target, timeline))
        return out

    def _decode_until(self, index: int, target: int, timeline: tl.Timeline) -> np.ndarray:
        """Take frames from the decoder up to the one with pts ``target`` and return it as RGB."""
        step_backs = 0
        while True:
            frame = next(self._frames, None)  # type: ignore[arg-type]
            if frame is None:
                raise _Mismatch(f"the stream ended before frame {index} (pts {target})")
            self.decoded_frames += 1
            pts = frame.pts
            if pts is None:
                raise _Mismatch("decoded frames carry no timestamp")
            if self._last_pts is None:  # first frames after a seek
                if pts < int(timeline.pts[self._sought]) or frame.is_corrupt:
                    continue  # leading frames of an open GOP: their references precede the keyframe
                if timeline.is_key(self._sought) and not (frame.key_frame or tl.is_intra(frame)):
                    raise _Mismatch(f"a seek to frame {self._sought} started on a frame that is not a keyframe")
                if pts > target:  # the demuxer landed past the wanted frame: start from an earlier keyframe
                    if self._sought == 0:
                        raise _Mismatch(f"decoding from the start begins after frame {index}")
                    step_backs += 1
                    key = timeline.keyframe_before(self._sought - 1) if step_backs <= _STEP_BACKS else 0
                    self._seek(key, timeline)
                    continue
            elif pts <= self._last_pts:
                raise _Mismatch("decoded frames come out of timestamp order")
            self._last_pts = pts
            if pts == target:
                return self._rgb(frame)
            if pts > target or timeline.index_of(pts) is None:
                raise _Mismatch(f"frame {index} (pts {target}) is not among the decoded frames (got pts {pts})")

    def _decode_counting(self, indices: list[int]) -> list[np.ndarray]:
        """Frames at ``indices`` by counting decoded frames from the start (for streams without usable pts, or in
        which FFmpeg cannot seek), going on from the last read when it ended before the first wanted frame."""
        if self._frames is None or self._frames is not self._counting or self._counted > indices[0]:
            self._rewind()
            self._counting = self._frames
            self._counted = 0
            self.seeks += 1
        wanted, last, out = set(indices), indices[-1], []
        while self._counted <= last:
            frame = next(self._frames, None)
            if frame is None:
                self._frames = None
                raise VideoDecodeError(self.path, f"stream ended after {self._counted} decoded frames; frame "
                                                  f"{last} was requested (the header promised {self.num_frames})")
            self.decoded_frames += 1
            self._counted += 1
            if self._counted - 1 in wanted:
                out.append(self._rgb(frame))
        return out

    def close(self) -> None:
        self._frames = None
        if self._container is not None:
            self._container.close()
        # Let go of the decoder now, not when a garbage collection finds this reader: a reader caught in a reference
        # cycle (an exception's traceback) kept its decoder alive, a DataLoader worker forked meanwhile inherited
        # it without the decoder's threads, and freeing it there (avcodec_free_context joins them) crashed the
        # worker with a segmentation fault.
        self._container = self._stream = None


# ---- display rotation -------------------------------------------------------------------------------------------

def frame_rotation(frame: VideoFrame, path: str | os.PathLike) -> int | None:
    """Degrees counter-clockwise that ``frame`` must turn to stand upright, from `VideoFrame.rotation` where this
    PyAV has it (13+), else from the frame's display-matrix side data; None when this PyAV exposes neither.
    Raises `VideoDecodeError` for a turn that is not a multiple of 90 degrees."""
    angle = float(frame.rotation or 0) if hasattr(frame, "rotation") else _side_data_rotation(frame)
    return None if angle is None else _quarter_turn(angle, path, "the frame's display matrix")


def _side_data_rotation(frame: VideoFrame) -> float | None:
    side_data = getattr(frame, "side_data", None)
    if side_data is None:
        return None
    for entry in side_data:
        if "DISPLAYMATRIX" in str(getattr(entry, "type", "")).upper():
            raw = bytes(entry)
            if len(raw) < 36:
                return None
            a, b, _, c, d = np.frombuffer(raw[:20], dtype=np.int32).tolist()  # native order, 16.16 fixed point
            return _matrix_angle(a, b, c, d)
    return 0.0  # side data readable and no display matrix: shown as decoded


def _matrix_angle(a: int, b: int, c: int, d: int) -> float | None:
    """Counter-clockwise turn of a display matrix's 2x2 part, read as FFmpeg's av_display_rotation_get does."""
    scale_0, scale_1 = math.hypot(a, c), math.hypot(b, d)
    if not scale_0 or not scale_1:
        return None
    return -math.degrees(math.atan2(b / scale_1, a / scale_0))


def _quarter_turn(angle: float, path: str | os.PathLike, where: str) -> int:
    turned = round(angle) % 360
    if turned % 90:
        raise VideoDecodeError(path, f"{where} turns the picture by {angle:g} degrees; only quarter turns are "
                                     "supported")
    return turned


def declared_rotation(path: str | os.PathLike, format_name: str, stream: VideoStream) -> int | None:
    """The display rotation the container itself declares for ``stream`` (degrees counter-clockwise): an
    MP4/MOV-family track header matrix, read from the file, or an older FFmpeg's ``rotate`` tag; None when
    neither is there."""
    if "mp4" in format_name or "mov" in format_name:
        try:
            with open(path, "rb") as f:
                matrices = _mp4_track_matrices(f, os.fstat(f.fileno()).st_size)
        except OSError:
            matrices = []
        matrix = matrices[stream.index] if stream.index < len(matrices) else None
        angle = None if matrix is None else _matrix_angle(*matrix)
        if angle is not None:
            return _quarter_turn(angle, path, "the MP4 track header matrix")
    tag = stream.metadata.get("rotate")
    try:
        return None if tag is None else _quarter_turn(-float(tag), path, "the stream's rotate tag")  # clockwise
    except ValueError:
        return None


def check_declared_rotation(path: str, format_name: str, stream: VideoStream, reported: int) -> None:
    """Refuse a file whose container declares a display rotation other than ``reported`` (what PyAV's frames
    said, see `frame_rotation`): a PyAV or FFmpeg too old to pass the rotation on would otherwise give sideways
    frames silently."""
    declared = declared_rotation(path, format_name, stream)
    if declared is not None and declared != reported:
        import av

        raise VideoDecodeError(path, f"the file declares a {declared} degree display rotation but PyAV "
                                     f"{av.__version__} reports {reported}: frames would come out turned wrong "
                                     "(PyAV 13+ with FFmpeg 7+ reads it)")


def _mp4_boxes(f: BinaryIO, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """(type, payload start, box end) of the ISO-BMFF boxes between ``start`` and ``end``."""
    at = start
    while at + 8 <= end:
        f.seek(at)
        header = f.read(16)
        if len(header) < 8:
            return
        size, kind = struct.unpack(">I4s", header[:8])
        payload = at + 8
        if size == 1 and len(header) == 16:
            size, payload = struct.unpack(">Q", header[8:])[0], at + 16
        elif size == 0:
            size = end - at
        if size < payload - at or at + size > end:
            return
        yield kind, payload, at + size
        at += size


def mp4_track_boxes(f: BinaryIO, file_size: int, path: tuple[bytes, ...] = ()
                    ) -> list[dict[bytes, tuple[int, int]]]:
    """For each track in track order (FFmpeg's stream order): {type: (payload start, end)} of the boxes inside
    the box that ``path`` leads to from the track (e.g. (b"mdia", b"minf", b"stbl") for the sample tables; the
    first box of each type); empty when there is no moov box."""
    moov = next(((s, e) for kind, s, e in _mp4_boxes(f, 0, file_size) if kind == b"moov"), None)
    if moov is None:
        return []
    tracks = []
    for kind, start, end in _mp4_boxes(f, *moov):
        if kind != b"trak":
            continue
        for step in path:  # a missing step leaves (0, 0): no boxes
            start, end = next(((s, e) for kind, s, e in _mp4_boxes(f, start, end) if kind == step), (0, 0))
        children: dict[bytes, tuple[int, int]] = {}
        for child, child_start, child_end in _mp4_boxes(f, start, end):
            children.setdefault(child, (child_start, child_end))
        tracks.append(children)
    return tracks


def _mp4_track_matrices(f: BinaryIO, file_size: int) -> list[tuple[int, int, int, int] | None]:
    """The (a, b, c, d) of each track header matrix in track order (FFmpeg's stream order), None for a track
    without a readable header; empty when there is no moov box."""
    matrices: list[tuple[int, int, int, int] | None] = []
    for boxes in mp4_track_boxes(f, file_size):
        matrix = None
        if b"tkhd" in boxes:
            child_start, child_end = boxes[b"tkhd"]
            f.seek(child_start)
            body = f.read(min(child_end - child_start, 96))
            at = 4 + (32 if body[:1] == b"\x01" else 20) + 16  # version+flags, times+ids, layer..volume
            if len(body) >= at + 20:
                a, b, _, c, d = struct.unpack(">5i", body[at: at + 20])
                matrix = (a, b, c, d)
        matrices.append(matrix)
    return matrices
