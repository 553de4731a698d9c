"""The OpenCV backend (`OpenCVReader`): seeks on constant-frame-rate streams and checks every frame it returns
against the stream's timestamps; reads forward from the start where seeking is not exact."""

from __future__ import annotations

import functools
import os

import numpy as np
import torch

from vidlstm.data.video import timeline as tl
from vidlstm.data.video.base import VideoReader, _from_hwc
from vidlstm.data.video.errors import VideoDecodeError
from vidlstm.data.video.facts import StreamFacts
from vidlstm.utils.versions import release

# OpenCV's seek (CAP_PROP_POS_FRAMES) restarts decoding at the keyframe before the target minus this many frames.
_OPENCV_SEEK_MARGIN = 16
# The first OpenCV measured right (tests/test_video_exact.py) on interlaced H.264 (5.0.0 returned stale images) and
# on AV1 (5.0.0 delivered no frame: no software decoder in the FFmpeg it bundles)
_CONVERTS_INTERLACED = _DECODES_AV1 = (5, 1)


@functools.cache
def opencv_version() -> tuple[int, ...]:
    """OpenCV's (major, minor, patch), e.g. (5, 1, 0)."""
    import cv2

    return release(cv2.__version__)[0][:3]


class _Mismatch(Exception):
    """A frame reached by seeking is not the one asked for; the reader stops seeking and reads from the start."""


class OpenCVReader(VideoReader):
    """OpenCV (bundled FFmpeg): grab/retrieve; applies rotation itself.

    OpenCV's CAP_PROP_POS_FRAMES seek turns the target into a timestamp at the stream's average rate, so it is
    exact only where every frame sits at ``index / fps``. It is used only there (checked on the stream's packet
    timestamps, `timeline.Timeline.constant_rate`), and every frame returned after a seek must carry the
    timestamp the timeline gives it (CAP_PROP_POS_MSEC); the first mismatch turns seeking off for this reader.
    Variable-frame-rate streams, streams whose packets do not match the decoded frames, and streams without
    timestamps are read forward from the start (or from the last frame read, when the request lies ahead).
    """


    backend = "opencv"
    applies_rotation = True

    @classmethod
    def unsuitable_reason(cls, facts: StreamFacts) -> str | None:
        if facts.num_video_streams > 1:
            return "OpenCV cannot choose among several video streams"
        release = ".".join(map(str, opencv_version()))
        if facts.codec == "av1" and opencv_version() < _DECODES_AV1:  # its FFmpeg decodes AV1 on hardware only
            return f"opencv {release} cannot decode av1 (the FFmpeg it bundles has no decoder for it; 5.1 has one)"
        if facts.interlaced and opencv_version() < _CONVERTS_INTERLACED:
            return (f"OpenCV {release} decodes interlaced video wrongly (its swscale refuses interlaced frames and it "
                    "returns stale images; 5.1 reads them right)")
        if facts.undecodable_packets:
            return (f"OpenCV decodes damaged streams wrongly ({facts.undecodable_packets} packets fail to decode; "
                    "it loses the frames its decoder threads hold at each)")
        return super().unsuitable_reason(facts)

    def __init__(self, path: str | os.PathLike, facts: StreamFacts | None = None) -> None:
        super().__init__(path, facts)
        import cv2

        self._cv2 = cv2
        self._cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            raise VideoDecodeError(self.path, "OpenCV could not open the file")
        turn = round(-self._cap.get(cv2.CAP_PROP_ORIENTATION_META)) % 360  # OpenCV counts clockwise
        if turn != self.facts.rotation or turn % 90 or (turn and not self._cap.get(cv2.CAP_PROP_ORIENTATION_AUTO)):
            self._cap.release()  # OpenCV turns by quarter turns only, and only with auto-orientation on
            raise VideoDecodeError(self.path, f"OpenCV would turn the frames by {turn} degrees where the stream "
                                              f"asks for {self.facts.rotation}")
        self.decoded_frames = 0  # frames grabbed by this reader (OpenCV's own grabs inside a seek not included)
        self.seeks = 0  # CAP_PROP_POS_FRAMES seeks made by this reader (restarts at frame 0 not included)
        self.seek_refused: str | None = None  # why this reader reads forward instead of seeking
        self._timeline: tl.Timeline | None = None
        self._tolerance_ms = 0.0  # how far OpenCV's timestamp of a frame may lie from the timeline's
        self._checked = False  # whether `_timeline`/`seek_refused` have been settled
        self._next: int | None = 0  # index of the frame the next grab() returns; None: unknown
        self._trusted = True  # whether `_next` is known by counting rather than taken from OpenCV's seek

    @property
    def fps(self) -> float:
        return float(self._cap.get(self._cv2.CAP_PROP_FPS))

    @property
    def coded_size(self) -> tuple[int, int]:
        h = int(self._cap.get(self._cv2.CAP_PROP_FRAME_HEIGHT))
        w = int(self._cap.get(self._cv2.CAP_PROP_FRAME_WIDTH))
        return (w, h) if self.facts.rotation in (90, 270) else (h, w)

    def _seekable(self) -> tl.Timeline | None:
        """The timeline to seek and check frames with, or None (with `seek_refused` saying why)."""
        if not self._checked:
            self._checked = True
            found = _stream_timeline(self.path, self.facts.stream_index)
            if isinstance(found, str):
                self.seek_refused = found
            elif len(found) != self.num_frames:
                self.seek_refused = f"{len(found)} frames in the packet table where {self.num_frames} are expected"
            elif not found.constant_rate(self.fps):
                self.seek_refused = ("variable frame rate: OpenCV's frame seek assumes every frame at index / fps "
                                     "and lands on the wrong frame")
            else:
                self._timeline = found
                gaps = np.diff(found.pts) if len(found) > 1 else np.array([1])
                self._tolerance_ms = float(gaps.min()) * float(found.time_base) * 500.0  # half the closest gap
        return None if self.seek_refused else self._timeline

    def _decode_sorted_unique(self, indices: list[int]) -> torch.Tensor:
        try:
            timeline = self._seekable()
            if timeline is not None:
                try:
                    return _from_hwc(np.stack([self._read_at(i, timeline) for i in indices]))
                except _Mismatch as err:
                    self.seek_refused = str(err)
                    self._next = None
            return _from_hwc(np.stack(self._read_forward(indices)))
        except BaseException:
            self._next = None  # interrupted (error or timeout): the position is unknown
            raise

    def _seek_cost(self, index: int, timeline: tl.Timeline) -> int:
        """Frames OpenCV decodes to land on ``index`` by seeking."""
        return index - timeline.keyframe_before(max(index - _OPENCV_SEEK_MARGIN, 0))

    def _read_at(self, index: int, timeline: tl.Timeline) -> np.ndarray:
        """Frame ``index``: read forward from where the capture is, or seek when that is cheaper or behind. After
        a seek, frames count only once one of them carries the timestamp the timeline gives it; where OpenCV
        gives the landing frame no timestamp (the last frame of some streams), the seek starts a little earlier."""
        back = 0
        while True:
            if back or self._next is None or self._next > index or (
                    index - self._next > self._seek_cost(index, timeline)):
                self._seek(max(index - back, 0))
            while self._next <= index:
                if not self._cap.grab():
                    raise _Mismatch(f"OpenCV ran out of frames at {self._next}; frame {index} was asked")
                self.decoded_frames += 1
                self._next += 1
                self._check(self._next - 1, timeline)
            if self._trusted:
                return self._retrieve(index)
            if index - back <= 0 or back >= 2 * _OPENCV_SEEK_MARGIN:
                raise _Mismatch(f"OpenCV gives no timestamp to check the frames near {index} against")
            back = max(1, 2 * back)

    def _seek(self, index: int) -> None:
        if index == 0:
            self._restart()
            return
        self._cap.set(self._cv2.CAP_PROP_POS_FRAMES, index)
        self._next, self._trusted = index, False  # checked against the timeline by the frames that follow
        self.seeks += 1

    def _restart(self) -> None:
        """Back to frame 0 by opening the file anew: exact everywhere, where a seek to frame 0 is not (files
        without an index, raw streams and Matroska written through a pipe, left the capture at their end)."""
        self._cap.release()
        self._cap = self._cv2.VideoCapture(self.path, self._cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            raise VideoDecodeError(self.path, "OpenCV could not open the file again")
        self._next, self._trusted = 0, True

    def _check(self, index: int, timeline: tl.Timeline) -> None:
        """Compare the grabbed frame's timestamp with frame ``index``'s: a match vouches for the position, a
        mismatch ends seeking, no timestamp proves nothing."""
        pts = int(timeline.pts[index])
        got = self._cap.get(self._cv2.CAP_PROP_POS_MSEC)
        # OpenCV reports 0 for a frame it has no timestamp for, and the packet's decoding time for a frame whose
        # timestamp is 0: neither can be checked.
        if pts == 0 or got == 0.0:
            return
        expected = (pts - timeline.start_time) * float(timeline.time_base) * 1000.0
        if abs(got - expected) > self._tolerance_ms:
            raise _Mismatch(f"OpenCV's frame {index} lies at {got:.1f} ms where the stream puts it at "
                            f"{expected:.1f} ms")
        self._trusted = True

    def _retrieve(self, index: int) -> np.ndarray:
        ok, image = self._cap.retrieve()
        if not ok:
            raise VideoDecodeError(self.path, f"OpenCV could not decode frame {index}")
        return self._cv2.cvtColor(image, self._cv2.COLOR_BGR2RGB)

    def _read_forward(self, indices: list[int]) -> list[np.ndarray]:
        """Frames at ``indices`` by counting grabs, from the start or from the current frame when it lies before
        the first wanted one (never trusting a seek)."""
        if self._next is None or not self._trusted or self._next > indices[0]:
            self._restart()
        wanted, out = set(indices), []
        while self._next <= indices[-1]:
            if not self._cap.grab():
                raise VideoDecodeError(self.path, f"OpenCV ran out of frames at {self._next}; "
                                                  f"frame {indices[-1]} was requested")
            self.decoded_frames += 1
            self._next += 1
            if self._next - 1 in wanted:
                out.append(self._retrieve(self._next - 1))
        return out

    def close(self) -> None:
        self._cap.release()


def _stream_timeline(path: str, stream_index: int) -> tl.Timeline | str:
    """The stream's frame table (shared with the PyAV reader's cache), read with PyAV by demuxing only."""
    key = tl.cache_key(path, stream_index)
    found = tl.cached(key)
    if found is None:
        found = tl.remember(key, tl.packet_timeline(path, stream_index))
    return found
