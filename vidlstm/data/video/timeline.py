"""Where each frame of a video stream sits: its presentation timestamp (pts) and the keyframes a decoder can start
from, so the PyAV and OpenCV readers seek to the keyframe at or before a wanted frame instead of decoding from
frame 0. Read by demuxing packets (no decoding), cached per file in each process.

Frame ``i`` is the ``i``-th distinct packet pts in display order. Packets that show no picture are left out:
FFmpeg's discard-flagged packets (edit lists) and VP8/VP9 hidden (alt-ref) frames. Where that still disagrees
with what the decoder delivers, `decoded_timeline` builds the same table from one full decode.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING

import numpy as np

from vidlstm.data.video.bitstream import keyframe_is_intra, nal_length_size

if TYPE_CHECKING:
    from collections.abc import Iterator

    from av.container import InputContainer
    from av.video.frame import VideoFrame
    from av.video.stream import VideoStream


@dataclass(frozen=True)
class Timeline:
    """``pts[i]``: presentation timestamp of frame ``i`` (strictly increasing); ``keys``: sorted indices of the
    frames a decoder can start from; ``source``: "packets" (demuxed) or "decoded" (one full decode)."""

    pts: np.ndarray
    keys: np.ndarray
    time_base: Fraction
    start_time: int
    source: str

    def __len__(self) -> int:
        return len(self.pts)

    def keyframe_before(self, index: int) -> int:
        """Index of the last keyframe at or before frame ``index``; 0 (the stream's start) when there is none."""
        at = int(np.searchsorted(self.keys, index, side="right")) - 1
        return int(self.keys[at]) if at >= 0 else 0

    def is_key(self, index: int) -> bool:
        """Whether frame ``index`` is a keyframe a decoder can start from."""
        at = int(np.searchsorted(self.keys, index))
        return at < len(self.keys) and int(self.keys[at]) == index

    def index_of(self, pts: int) -> int | None:
        """The frame whose timestamp is ``pts``, or None when no frame has it."""
        at = int(np.searchsorted(self.pts, pts))
        return at if at < len(self.pts) and int(self.pts[at]) == pts else None

    def constant_rate(self, fps: float) -> bool:
        """Whether frame ``i`` lies at ``i / fps`` after frame 0 (to the nearest frame), i.e. a frame number
        computed from a timestamp at this rate is exact."""
        if fps <= 0 or len(self.pts) < 2:
            return fps > 0
        seconds = (self.pts - self.pts[0]).astype(np.float64) * float(self.time_base)
        return bool(np.array_equal(np.rint(seconds * fps).astype(np.int64), np.arange(len(self.pts))))


def _timeline(pts: list[int], keys: list[int], time_base: Fraction, start_time: int, source: str
              ) -> Timeline | str:
    """A `Timeline` from unordered frame timestamps and keyframe timestamps, or why they cannot make one."""
    if not pts:
        return "the stream has no frames with timestamps"
    order = np.sort(np.asarray(pts, np.int64))
    if len(order) > 1 and not (np.diff(order) > 0).all():
        return "several frames share one timestamp"
    key_pts = np.asarray(sorted(set(keys)), np.int64)
    key_index = np.searchsorted(order, key_pts)
    return Timeline(order, key_index.astype(np.int64), time_base, start_time, source)


# Codecs whose streams may carry frames that are decoded but never shown, in packets of their own. (AV1 hides
# frames too, but inside the temporal unit of a shown one: each packet shows exactly one frame.)
CODECS_HIDING_FRAMES = frozenset({"vp8", "vp9"})


def shows_frame(codec: str, data: memoryview) -> bool:
    """Whether a packet of ``codec`` puts a picture on screen. VP8 and VP9 may carry hidden (alt-ref) frames in
    packets of their own, which decode to nothing; other codecs show one frame per packet."""
    if not len(data):
        return False
    if codec == "vp8":
        return bool(data[0] >> 4 & 1)  # frame tag: bit 4 is show_frame (RFC 6386, 9.1)
    if codec == "vp9":
        return any(_vp9_frame_shows(frame) for frame in _vp9_frames(data))
    return True


def _vp9_frames(data: memoryview) -> list[memoryview]:
    """The frames of a VP9 packet: one, or several bundled in a superframe (VP9 bitstream spec, annex B)."""
    marker = data[-1]
    if marker & 0xE0 == 0xC0:
        count, size_bytes = (marker & 7) + 1, (marker >> 3 & 3) + 1
        index_size = 2 + size_bytes * count
        if len(data) >= index_size and data[-index_size] == marker:
            frames, offset, at = [], 0, len(data) - index_size + 1
            for _ in range(count):
                size = int.from_bytes(bytes(data[at: at + size_bytes]), "little")
                frames.append(data[offset: offset + size])
                offset, at = offset + size, at + size_bytes
            return frames
    return [data]


def _vp9_frame_shows(frame: memoryview) -> bool:
    """Read show_existing_frame / show_frame from a VP9 uncompressed header (all within its first byte)."""
    if not len(frame):
        return False
    bits = frame[0]
    profile = (bits >> 5 & 1) | (bits >> 4 & 1) << 1  # after the 2-bit frame marker: profile low, high bit
    position = 5 if profile == 3 else 4  # bit offset (from the top) of show_existing_frame; profile 3 adds one
    if bits >> (7 - position) & 1:
        return True  # show_existing_frame: shows a frame decoded earlier
    return bool(bits >> (7 - position - 2) & 1)  # skip frame_type, read show_frame


def codec_name(stream: VideoStream) -> str:
    """The codec's own name ("av1"), not the name of the decoder PyAV picked for it ("libdav1d", "libaom-av1"
    or "av1" depending on the FFmpeg build)."""
    return stream.codec_context.codec.canonical_name


def is_intra(frame: VideoFrame) -> bool:
    """Whether ``frame`` is an I picture (PyAV gives the picture type as an int or an enum item)."""
    kind = frame.pict_type
    try:
        return int(kind) == 1  # AV_PICTURE_TYPE_I
    except (TypeError, ValueError):
        return str(getattr(kind, "name", kind)) == "I"


def rewound(path: str, container: InputContainer, stream: VideoStream) -> tuple[InputContainer, VideoStream]:
    """``container`` (of ``path``) back at the first packet of ``stream``: the file opened anew, the old container
    closed. Returns the (container, stream) to read on. A seek to the start is not exact everywhere: FFmpeg cannot
    seek in raw H.264, HEVC and MPEG-4 streams (no index); in MPEG-TS whose timestamps wrap past 2^33 mid-file
    FFmpeg makes the ones before the wrap negative and a seek to 0 lands at the wrap; where the first packets are
    not keyframes (a recording begun mid-GOP, a cut by stream copy) a seek to 0 fails or lands at the end."""
    import av

    index, threads = stream.index, stream.thread_type  # read before the close: the stream lives in the container
    container.close()
    container = av.open(path)
    stream = container.streams[index]
    stream.thread_type = threads
    return container, stream


def _seeks_to(path: str, stream_index: int, pts: int) -> bool:
    """Whether FFmpeg seeks in a freshly opened ``path`` to the keyframe at ``pts`` (False for raw streams
    without an index: FFmpeg answers EPERM, also at a keyframe)."""
    import av

    with av.open(path) as container:
        try:
            container.seek(pts, stream=container.streams[stream_index])
        except av.error.PermissionError:
            return False
    return True


def _seekable(found: Timeline | str, path: str, stream_index: int) -> Timeline | str:
    """``found``, or `UNSEEKABLE` where FFmpeg cannot seek to its first keyframe (checked in a fresh container: once
    a container has read a raw stream, FFmpeg seeks in what it has seen, but a reader's container has not)."""
    if isinstance(found, Timeline) and len(found.keys) and not _seeks_to(path, stream_index,
                                                                       int(found.pts[found.keys[0]])):
        return UNSEEKABLE
    return found


UNSEEKABLE = "the container cannot seek (a raw stream without an index)"  # why frames are counted instead


def packet_timeline(path: str, stream_index: int) -> Timeline | str:
    """Demux stream ``stream_index`` of ``path`` once (no decoding, a container of its own) and tabulate its
    frames, or say why its packets cannot be trusted."""
    import av

    with av.open(path) as container:
        stream = container.streams[stream_index]
        codec = codec_name(stream)
        check_shown = codec in CODECS_HIDING_FRAMES
        length_size = nal_length_size(codec, stream.codec_context.extradata)
        pts: list[int] = []
        keys: list[int] = []
        for packet in container.demux(stream):
            if not packet.size or packet.is_discard:
                continue
            if packet.pts is None:
                return "some packets carry no timestamp"
            if check_shown and not shows_frame(codec, memoryview(packet)):
                continue
            pts.append(int(packet.pts))
            # Seek targets: keyframes whose picture decodes alone. Intra-refresh recovery points are not: FFmpeg
            # holds frames back after one until it judges them whole, but on a 600-frame x264 file
            # (recovery_frame_cnt 18, exact_match_flag 1) a start at one of its 19 recovery points gave 30 wrong
            # frames that FFmpeg passed.
            if packet.is_keyframe and keyframe_is_intra(codec, memoryview(packet), length_size):
                keys.append(int(packet.pts))
        found = _timeline(pts, keys, stream.time_base, int(stream.start_time or 0), "packets")
    return _seekable(found, path, stream_index)


def decode_passing_over_errors(container: InputContainer, stream: VideoStream, failures: list[str] | None = None
                               ) -> Iterator[VideoFrame]:
    """The frames of ``stream`` from where the container is: a packet that fails to decode (a truncated or damaged
    one) yields no frame and is passed over (its error appended to ``failures``), and at the end the decoder is
    flushed of the frames it holds back for reordering. (PyAV's ``container.decode`` stops at the first bad packet
    and loses those.) Every PyAV read and the probe's frame count decode this way, so they agree on which frames a
    damaged file has, provided the decoder does not decode frames in parallel threads (frames in flight in other
    threads are lost at an error: see `PyAVReader`)."""
    import av

    context = stream.codec_context
    for packet in container.demux(stream):
        if not packet.size:  # an empty packet would put the decoder into draining; the flush comes at the end
            continue
        try:
            frames = context.decode(packet)
        except av.error.FFmpegError as err:
            if failures is not None:
                failures.append(str(err))
            continue
        yield from frames
    try:
        yield from context.decode(None)
    except av.error.FFmpegError:
        return


def decoded_timeline(path: str, stream_index: int, thread_type: str) -> Timeline | str:
    """Decode stream ``stream_index`` of ``path`` once from the start (a container of its own, the reader's
    ``thread_type``) and tabulate the frames the decoder really delivers (their pts, and which are keyframes), or
    say why they cannot be told apart by timestamp."""
    import av

    pts: list[int] = []
    keys: list[int] = []
    with av.open(path) as container:
        stream = container.streams[stream_index]
        stream.thread_type = thread_type
        for frame in decode_passing_over_errors(container, stream):
            if frame.pts is None:
                return "decoded frames carry no timestamp"
            if pts and frame.pts <= pts[-1]:
                return "decoded frames come out of timestamp order"
            pts.append(int(frame.pts))
            if frame.key_frame:
                keys.append(int(frame.pts))
        found = _timeline(pts, keys, stream.time_base, int(stream.start_time or 0), "decoded")
    return _seekable(found, path, stream_index)


_CACHE: OrderedDict[tuple, Timeline | str] = OrderedDict()
_CACHE_FRAMES = 4_000_000  # timestamps kept per process (~64 MB at most); least recently used files go first


def cache_key(path: str | os.PathLike, stream_index: int) -> tuple:
    """Identifies one stream of one version of a file (a rewritten file gets a new key)."""
    stat = os.stat(path)
    return (os.fspath(path), stat.st_size, stat.st_mtime_ns, stream_index)


def cached(key: tuple) -> Timeline | str | None:
    """The timeline (or the reason there is none) recorded for ``key``, or None when not yet known."""
    found = _CACHE.get(key)
    if found is not None:
        _CACHE.move_to_end(key)
    return found


def remember(key: tuple, timeline: Timeline | str) -> Timeline | str:
    """Record ``timeline`` for ``key`` (replacing an earlier entry), evicting the least recently used files."""
    _CACHE.pop(key, None)
    _CACHE[key] = timeline
    total = sum(len(t) for t in _CACHE.values() if isinstance(t, Timeline))
    while total > _CACHE_FRAMES and len(_CACHE) > 1:
        _, dropped = _CACHE.popitem(last=False)
        total -= len(dropped) if isinstance(dropped, Timeline) else 0
    return timeline
