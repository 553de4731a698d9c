"""The decord backend (`DecordReader`)."""

from __future__ import annotations

import os

import torch

from vidlstm.data.video.base import VideoReader, _from_hwc
from vidlstm.data.video.errors import VideoDecodeError
from vidlstm.data.video.facts import StreamFacts


class DecordReader(VideoReader):
    """decord: fast seek-based random access (the default). Refuses files it decodes wrongly."""

    backend = "decord"
    native = True
    # MPEG-4 Part 2 and HEVC with B-frames: wrong frames on random access (HEVC: 21 of 60 reads, in MP4 and MOV)
    UNRELIABLE_CODECS = frozenset({"mpeg4", "hevc"})
    MISSING_DECODERS = frozenset({"av1"})  # decord 0.6 fails to open AV1 ("cannot find video stream")

    @classmethod
    def unsuitable_reason(cls, facts: StreamFacts) -> str | None:
        if facts.rotation:
            return "decord mis-decodes rotated videos (malformed frames)"
        if facts.num_video_streams > 1:
            return "decord cannot choose among several video streams"
        if facts.no_sync_table and not facts.intra_only:  # measured: wrong on 48 of 56 reads
            return ("decord decodes MP4 tracks without a sync-sample table wrongly (it takes every frame for a "
                    f"keyframe; {facts.keyframe_packets} of {facts.num_packets} are)")
        reason = super().unsuitable_reason(facts)
        if reason is None and facts.edit_list_hidden:  # measured: it counts them as frames (125 where 120 show)
            return (f"decord decodes streams whose MP4 edit list hides frames wrongly (it shows the "
                    f"{facts.edit_list_hidden} hidden packet(s) as frames)")
        if reason is None and facts.open_gop_keyframes:  # measured: wrong on 16 of 56 reads (H.264), 41 (MPEG-2)
            return (f"decord decodes open-GOP streams wrongly ({facts.open_gop_keyframes} keyframe(s) followed by "
                    "frames shown before them, which reference the GOP before)")
        return reason

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
        """decord tells the size only by decoding frame 0: a native call, under the same deadline as clips."""
        if self._size is None:
            self._size = self._bounded(self._first_frame_size, "frame 0", "decoding frame 0 with decord")
        return self._size

    def _first_frame_size(self) -> tuple[int, int]:
        height, width = self._vr[0].shape[:2]
        self._vr.seek(0)
        return int(height), int(width)

    def _decode_sorted_unique(self, indices: list[int]) -> torch.Tensor:
        if indices[-1] >= len(self._vr):
            raise VideoDecodeError(self.path, f"decord sees {len(self._vr)} frames, frame {indices[-1]} requested")
        return _from_hwc(self._vr.get_batch(indices).asnumpy())

    def close(self) -> None:
        self._vr = None
