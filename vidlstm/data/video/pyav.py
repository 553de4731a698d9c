"""The PyAV backend (`PyAVReader`)."""

from __future__ import annotations

import os

import numpy as np
import torch

from vidlstm.data.video.base import VideoReader, _from_hwc
from vidlstm.data.video.errors import VideoDecodeError
from vidlstm.data.video.facts import StreamFacts


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
