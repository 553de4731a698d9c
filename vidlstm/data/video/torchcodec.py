"""The torchcodec backend (`TorchCodecReader`)."""

from __future__ import annotations

import os

import torch

from vidlstm.data.video.base import VideoReader
from vidlstm.data.video.facts import StreamFacts


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
