"""What a video file is: its extension, the facts a PyAV look finds (cached per process), and the `VideoInfo`
that `probe` reports.

The frame count is the number of frames that decode. A header's count, or the packets, are trusted only where
they cannot differ from it; otherwise the frames are counted by decoding the stream once (no colour conversion):
when the header has no count (WebM/MKV) or disagrees with the packets, when the codec can hide frames in packets
of their own (VP8/VP9 alt-ref frames, which decode to no picture), and when the frame rate varies.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Any

import numpy as np

from vidlstm.data.video.bitstream import keyframe_is_intra, nal_length_size
from vidlstm.data.video.deadlines import DEFAULT_TIMEOUT_S, time_limit
from vidlstm.data.video.errors import VideoDecodeError, _one_line
from vidlstm.data.video.timeline import (
    CODECS_HIDING_FRAMES,
    codec_name,
    decode_passing_over_errors,
    is_intra,
    rewound,
    shows_frame,
)

# File endings read as videos when a folder is searched: the common containers, plus MPEG transport streams
# (recordings, camcorders' AVCHD .mts/.m2ts, HLS segments), DVD .vob, Ogg .ogv, DV, MXF, the older web and phone
# formats, and raw H.264/HEVC camera streams (.h264: Raspberry Pi, CCTV exports). Animated GIFs are left out (a
# folder of thumbnails is not a dataset); name them in `extensions`.
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp",
                    ".3g2", ".ts", ".mts", ".m2ts", ".m2v", ".vob", ".ogv", ".asf", ".f4v", ".divx", ".dv", ".mxf",
                    ".h264", ".264", ".h265", ".hevc")

MP4_FAMILY, MATROSKA = "mov,mp4,m4a,3gp,3g2,mj2", "matroska,webm"  # FFmpeg's names of these containers
# Share of the probe's time limit the frame count may take; past it the shown packets are counted instead.
COUNT_SHARE_OF_TIMEOUT = 0.5
# Frames decoded to check a stream whose every packet is flagged as a keyframe although its codec can code frames
# from others (raw H.263 streams are flagged so): one P picture among them shows the flags are false.
KEYFRAME_CHECK_FRAMES = 8


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


@dataclass(frozen=True)
class StreamFacts:
    """What a PyAV look at a file tells: which stream to decode, how many frames it has, how to show them."""

    stream_index: int  # absolute index of the chosen video stream (the largest; cover art is ignored)
    codec: str
    num_frames: int  # frames that decode (counted by decoding where the header or packets may differ from it)
    rotation: int  # degrees counter-clockwise to turn decoded frames upright (0, 90, 180, 270)
    num_video_streams: int
    num_packets: int = 0  # non-empty packets of the stream (0: not looked at)
    variable_frame_rate: bool = False  # frames unevenly spaced in time beyond rounding, or sharing a timestamp
    frames_counted: bool = False  # num_frames comes from decoding every frame
    container: str = ""  # FFmpeg's name of the container format, e.g. "matroska,webm" ("": not looked at)
    header_frames: int = 0  # the frame count the container's header declares (0: none, e.g. fragmented MP4)
    keyframe_packets: int = 0  # packets flagged as keyframes
    interlaced: bool = False  # the first frame is coded as two fields
    undecodable_packets: int = 0  # packets that failed to decode while counting (a damaged or truncated file)
    # packets flagged as keyframes that hold a P/B picture: intra-refresh recovery points, or (counted among the
    # first frames) a stream whose every packet is flagged although it is inter-coded (raw H.263, careless muxers)
    false_keyframes: int = 0
    no_sync_table: bool = False  # an MP4 track without a sync-sample table (stss): by the format every frame is a key
    # packets before the first keyframe (a recording begun mid-GOP, a cut by stream copy): they reference pictures
    # the file does not hold, and the decoder drops them or conceals what is missing
    leading_non_keyframes: int = 0
    # keyframes followed, in decoding order, by frames shown before them (open GOPs: x264 open-gop, MPEG-2 and
    # MPEG-4 Part 2 by default, HEVC CRA pictures with leading pictures): those frames reference the GOP before, so
    # a decoder started at the keyframe cannot make them
    open_gop_keyframes: int = 0
    # packets an MP4/MOV edit list hides, decoded as references and never shown: a cut by stream copy (`ffmpeg -ss T
    # -c copy`) keeps the packets from the keyframe before the cut; an edit that ends early hides the last ones
    edit_list_hidden: int = 0

    @property
    def intra_only(self) -> bool:
        """Every packet is a keyframe (MJPEG, ProRes, FFV1, ...): frames decode alone, in the order they are
        stored."""
        return self.num_packets > 0 and self.keyframe_packets == self.num_packets and not self.false_keyframes

    @property
    def indexes_frames(self) -> bool:
        """The container stores a table of every frame with its presentation time: MP4/MOV with its sample table
        (not fragmented MP4, whose header declares no frames or only those of its first fragment) and
        Matroska/WebM. Elsewhere (AVI, MPEG-TS, MPEG-PS, FLV, ASF, ...) frame times are reconstructed while
        demuxing."""
        if self.container == MP4_FAMILY:  # (num_packets 0: packets not looked at)
            return self.header_frames > 0 and self.num_packets <= self.header_frames
        return self.container == MATROSKA

    @property
    def hidden_frames(self) -> int:
        """Packets that put no picture on screen (VP8/VP9 alt-ref frames, or a packet that does not decode)."""
        return max(self.num_packets - self.num_frames, 0) if self.num_packets else 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StreamFacts:
        return cls(**data)


_FACTS: dict[tuple[str, int, int], StreamFacts] = {}  # per process; a changed file has a new key
_FACTS_LIMIT = 65536  # oldest entries are dropped beyond this
# Facts that cost a full decode, handed over by the probe cache (`remember_facts`): DataLoader workers forked
# after probing inherit them and never count again. Kept apart so that looking at many cheap files never evicts
# them; one small entry per video.
_COUNTED: dict[tuple[str, int, int], StreamFacts] = {}
_COUNTED_LIMIT = 1 << 22


def put_bounded(cache: dict, key: object, value: object, limit: int) -> None:
    """``cache[key] = value``, dropping the oldest entry first when ``cache`` holds ``limit`` entries."""
    if len(cache) >= limit and key not in cache:
        del cache[next(iter(cache))]
    cache[key] = value


def _key(path: str | os.PathLike, stat: os.stat_result) -> tuple[str, int, int]:
    return (str(path), stat.st_size, stat.st_mtime_ns)


def stream_facts(path: str | os.PathLike, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                 stat: os.stat_result | None = None) -> StreamFacts:
    """Probe ``path`` with PyAV (demux, decode the first frame, and count the frames where that is needed).
    Cached per (path, size, mtime) in each process, so the time limit is armed only for files not seen before.
    Counting takes at most `COUNT_SHARE_OF_TIMEOUT` of ``timeout_s``; a longer stream keeps its count of shown
    packets (``frames_counted`` False)."""
    stat = stat or os.stat(path)
    key = _key(path, stat)
    known = _FACTS.get(key) or _COUNTED.get(key)
    if known is None:
        budget = None if not timeout_s else timeout_s * COUNT_SHARE_OF_TIMEOUT
        with time_limit(timeout_s, path, "probing"):
            known = _probe_stream(key[0], budget)
        put_bounded(_FACTS, key, known, _FACTS_LIMIT)
    return known


def remember_facts(path: str | os.PathLike, size: int, mtime_ns: int, facts: StreamFacts) -> None:
    """Record facts found elsewhere (another process, the probe cache) for the file version (size, mtime_ns);
    facts that cost a full decode are kept for the life of the process."""
    key = (str(path), int(size), int(mtime_ns))
    if facts.frames_counted:
        put_bounded(_COUNTED, key, facts, _COUNTED_LIMIT)
    elif key not in _FACTS:
        put_bounded(_FACTS, key, facts, _FACTS_LIMIT)


def _probe_stream(path: str, count_budget_s: float | None) -> StreamFacts:
    import av

    try:
        container = av.open(path)
    except VideoDecodeError:  # the time limit
        raise
    except Exception as err:
        held = _what_else(path)
        raise VideoDecodeError(path, f"not a readable media file{f': it is {held}' if held else ''} "
                                     f"({_one_line(err)})") from err
    try:
        videos = [s for s in container.streams.video if not s.disposition & av.stream.Disposition.attached_pic]
        if not videos:
            if container.streams.audio or container.streams.video:  # the video streams left are cover art
                raise VideoDecodeError(path, "no video stream (audio-only or cover art only)")
            held = _what_else(path)  # text FFmpeg read as subtitles or lyrics, data only
            raise VideoDecodeError(path, f"no video stream{f': it is {held}' if held else ''} (FFmpeg read it as "
                                         f"{container.format.name})")
        stream = max(videos, key=lambda s: (s.codec_context.width * s.codec_context.height, -s.index))
        codec = codec_name(stream)
        stream.thread_type = "SLICE"  # PyAV's default, stated: frame threads lose frames at a packet that fails
        header_frames = int(stream.frames or 0)
        try:
            first = next(container.decode(stream), None)
        except Exception as err:
            raise VideoDecodeError(path, f"first frame does not decode ({_one_line(err)})") from err
        if first is None:
            raise VideoDecodeError(path, "video stream has no decodable frames")
        from vidlstm.data.video.pyav import declared_rotation, frame_rotation  # here: pyav imports this module

        interlaced = bool(first.interlaced_frame)
        rotation = frame_rotation(first, path)  # refuses a turn that is not a quarter turn
        if rotation is None:  # this PyAV passes no rotation on: what the container declares
            rotation = declared_rotation(path, container.format.name, stream) or 0
        # Demux only: the packets really there (a truncated file has fewer than its header promises), the ones
        # that show a picture, and their timestamps.
        container, stream = rewound(path, container, stream)
        packets, keyframes, false_keyframes, shown_pts, shown, leading = 0, 0, 0, [], 0, 0
        open_gops, key_pts = 0, None  # key_pts: the last keyframe's, until a frame shown before it is seen
        edit_hidden, started = 0, False  # started: a keyframe came, shown or not
        length_size = nal_length_size(codec, stream.codec_context.extradata)
        for packet in container.demux(stream):
            if not packet.size:
                continue
            # Packets an edit list hides are decoded all the same: a hidden keyframe starts the stream, and a
            # hidden open-GOP keyframe is one.
            started = started or packet.is_keyframe
            if packet.is_keyframe:
                key_pts = packet.pts
            elif None not in (key_pts, packet.pts) and packet.pts < key_pts:
                open_gops, key_pts = open_gops + 1, None
            if packet.is_discard:
                edit_hidden += 1
                continue
            packets += 1
            leading += not started
            if packet.is_keyframe:
                keyframes += 1
                false_keyframes += not keyframe_is_intra(codec, memoryview(packet), length_size)
            if shows_frame(codec, memoryview(packet)):
                shown += 1
                if packet.pts is not None:
                    shown_pts.append(int(packet.pts))
        if keyframes == packets > 1 and not stream.codec_context.codec.intra_only:
            container, stream = rewound(path, container, stream)
            false_keyframes = max(false_keyframes, _inter_pictures(container, stream))
        time_base = stream.time_base or Fraction(1, 1000)
        variable = uneven(shown_pts, time_base)
        num_frames = min(header_frames, shown) if header_frames > 0 else shown
        counted, undecodable = False, 0
        leading = leading if started else 0  # no keyframe flags at all: nothing to tell from them
        consistent = header_frames == packets + edit_hidden  # an MP4 header counts the hidden packets as frames
        if header_frames <= 0 or not consistent or codec in CODECS_HIDING_FRAMES or leading:
            container, stream = rewound(path, container, stream)
            found = _count_decoded(container, stream, count_budget_s)
            if found is not None:
                num_frames, frame_pts, undecodable = found
                counted = True
                variable = uneven(frame_pts, time_base) if len(frame_pts) == num_frames else variable
        if num_frames <= 0:
            raise VideoDecodeError(path, "video stream has no decodable frames")
        if num_frames == 1 and (kind := _image_format(container.format.name) or _still_image_brand(path)):
            raise VideoDecodeError(path, f"a still image ({kind}), not a video")
        # an MP4 whose sample table lists every packet (not fragmented) but no sync samples
        no_sync_table = (container.format.name == MP4_FAMILY and 0 < packets <= header_frames
                         and not _has_sync_table(path, stream))
        # Read everything from PyAV objects before the container closes (they point into its memory).
        return StreamFacts(int(stream.index), codec, num_frames, rotation, len(videos), packets, variable, counted,
                           container.format.name, header_frames, keyframes, interlaced, undecodable,
                           false_keyframes, no_sync_table, leading, open_gops, edit_hidden)
    finally:
        container.close()


def _inter_pictures(container: Any, stream: Any, limit: int = KEYFRAME_CHECK_FRAMES) -> int:
    """How many of the first ``limit`` frames are P/B pictures. Checked where every packet is flagged as a keyframe
    but the codec can code frames from others: readers that seek to flagged packets would start from P pictures."""
    frames = itertools.islice(decode_passing_over_errors(container, stream), limit)
    return sum(not (frame.key_frame or is_intra(frame)) for frame in frames)


def _has_sync_table(path: str, stream: Any) -> bool:
    """Whether the MP4 track of ``stream`` lists its sync samples (an stss box; True when it cannot be told)."""
    from vidlstm.data.video.pyav import mp4_track_boxes  # here: pyav imports this module

    try:
        with open(path, "rb") as f:
            tracks = mp4_track_boxes(f, os.fstat(f.fileno()).st_size, (b"mdia", b"minf", b"stbl"))
    except OSError:
        return True
    return stream.index >= len(tracks) or b"stss" in tracks[stream.index]


# What a file FFmpeg cannot open holds instead, told by its first bytes: datasets gathered from the web keep error
# pages and archives under video names.
_SIGNATURES = ((b"PK\x03\x04", "a ZIP archive"), (b"\x1f\x8b", "a gzip archive"), (b"Rar!", "a RAR archive"),
               (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"), (b"%PDF", "a PDF document"))
_HTML = "an HTML page (the error page of a failed download?)"
_TEXTS = (("<!doctype html", _HTML), ("<html", _HTML), ("<?xml", "an XML document"),
          ("version https://git-lfs", "a Git LFS pointer (run `git lfs pull` where the dataset was cloned)"),
          ("{", "JSON text"))
# ISO-BMFF brands of still images (AVIF, HEIF/HEIC photos), which FFmpeg reads with its MP4 demuxer
_STILL_BRANDS = {b"avif": "AVIF", b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF"}


def _what_else(path: str) -> str:
    """What the first bytes of ``path`` say it is ("an HTML page", "a ZIP archive", "text"), or "" when they do
    not say."""
    head = _head(path)
    if head[4:8] == b"ftyp":
        return "" if b"moov" in _top_level_boxes(path) else (
            "an MP4/MOV file without its index (no moov box: an interrupted recording or copy?)")
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    if not head or b"\0" in head:
        return ""
    for cut in range(4):  # the read may end inside a multi-byte character
        try:
            text = head[: len(head) - cut].decode("utf-8").lstrip("\ufeff \t\r\n").lower()
        except UnicodeDecodeError:
            continue
        if "<html" in text:
            return _HTML
        return next((what for start, what in _TEXTS if text.startswith(start)), "text")
    return ""


def _head(path: str, size: int = 512) -> bytes:
    """The first ``size`` bytes of ``path`` (b"" when it cannot be read)."""
    try:
        with open(path, "rb") as f:
            return f.read(size)
    except OSError:
        return b""


def _top_level_boxes(path: str) -> list[bytes]:
    from vidlstm.data.video.pyav import _mp4_boxes  # here: pyav imports this module

    try:
        with open(path, "rb") as f:
            return [kind for kind, _, _ in _mp4_boxes(f, 0, os.fstat(f.fileno()).st_size)]
    except OSError:
        return []


def _image_format(format_name: str) -> str:
    """The image kind FFmpeg's demuxer ``format_name`` reads ("JPEG" for "jpeg_pipe"), or "" for video formats."""
    if format_name.endswith("_pipe"):
        return format_name.removesuffix("_pipe").upper()
    return {"gif": "GIF", "apng": "APNG"}.get(format_name, "")


def _still_image_brand(path: str) -> str:
    """"AVIF", "HEIC" or "HEIF" when the file's ISO-BMFF brands name a still image format, else ""."""
    head = _head(path, 64)
    if head[4:8] != b"ftyp":
        return ""
    size = int.from_bytes(head[:4], "big")
    brands = [head[8:12]] + [head[i: i + 4] for i in range(16, min(size, len(head)) - 3, 4)]
    return next((_STILL_BRANDS[b] for b in brands if b in _STILL_BRANDS), "")


def _count_decoded(container: Any, stream: Any, budget_s: float | None) -> tuple[int, list[int], int] | None:
    """(frames that decode, their timestamps, packets that fail to decode) from one decode of ``stream`` without
    colour conversion, or None when that takes longer than ``budget_s``. A packet that fails to decode yields no
    frame and is passed over, as the PyAV reader passes over it (`timeline.decode_passing_over_errors`)."""
    deadline = None if budget_s is None else time.monotonic() + budget_s
    count, pts, failures = 0, [], []
    for frame in decode_passing_over_errors(container, stream, failures):
        if deadline is not None and time.monotonic() > deadline:
            return None
        count += 1
        if frame.pts is not None:
            pts.append(int(frame.pts))
    return count, pts, len(failures)


def uneven(pts: Sequence[int], time_base: Fraction) -> bool:
    """Whether frames with these timestamps (ticks of ``time_base``, any order) are unevenly spaced: two frames
    share a timestamp, or gaps differ by more than rounding allows (one tick plus one millisecond, for times
    rounded to milliseconds and stored in a finer time base)."""
    if len(pts) < 3:
        return False
    gaps = np.diff(np.sort(np.asarray(pts, np.int64)))
    if (gaps <= 0).any():
        return True
    tolerance = 1 + float(Fraction(1, 1000) / time_base)
    return bool(gaps.max() - gaps.min() > tolerance)
