"""What a video file is: its extension, the facts a cheap PyAV look finds (cached per process), and the
`VideoInfo` that `probe` reports."""

from __future__ import annotations

import os
from dataclasses import dataclass

from vidlstm.data.video.deadlines import DEFAULT_TIMEOUT_S, time_limit
from vidlstm.data.video.errors import VideoDecodeError, _one_line

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")


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
    """What a cheap PyAV look at a file tells: which stream to decode and how to show it."""

    stream_index: int  # absolute index of the chosen video stream (the largest; cover art is ignored)
    codec: str
    num_frames: int  # frames really present: the header's count, capped by the packets found
    rotation: int  # degrees counter-clockwise to turn decoded frames upright (0, 90, 180, 270)
    num_video_streams: int


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
