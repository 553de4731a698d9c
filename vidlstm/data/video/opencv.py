"""The OpenCV backend (`OpenCVReader`)."""

from __future__ import annotations

import os

import numpy as np
import torch

from vidlstm.data.video.base import VideoReader, _from_hwc
from vidlstm.data.video.errors import VideoDecodeError
from vidlstm.data.video.facts import StreamFacts


class OpenCVReader(VideoReader):
    """OpenCV (bundled FFmpeg): sequential grab/retrieve from the start; applies rotation itself."""

    backend = "opencv"
    applies_rotation = True

    @classmethod
    def unsuitable_reason(cls, facts: StreamFacts) -> str | None:
        if facts.num_video_streams > 1:
            return "OpenCV cannot choose among several video streams"
        return super().unsuitable_reason(facts)

    def __init__(self, path: str | os.PathLike, facts: StreamFacts | None = None) -> None:
        super().__init__(path, facts)
        import cv2

        self._cv2 = cv2
        self._cap = cv2.VideoCapture(self.path, cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            raise VideoDecodeError(self.path, "OpenCV could not open the file")

    @property
    def fps(self) -> float:
        return float(self._cap.get(self._cv2.CAP_PROP_FPS))

    @property
    def coded_size(self) -> tuple[int, int]:
        h = int(self._cap.get(self._cv2.CAP_PROP_FRAME_HEIGHT))
        w = int(self._cap.get(self._cv2.CAP_PROP_FRAME_WIDTH))
        return (w, h) if self.facts.rotation in (90, 270) else (h, w)

    def _decode_sorted_unique(self, indices: list[int]) -> torch.Tensor:
        cap, cv2 = self._cap, self._cv2
        cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
        wanted, out = set(indices), []
        for position in range(indices[-1] + 1):
            if not cap.grab():
                raise VideoDecodeError(self.path, f"OpenCV ran out of frames at {position}; "
                                                  f"frame {indices[-1]} was requested")
            if position in wanted:
                ok, image = cap.retrieve()
                if not ok:
                    raise VideoDecodeError(self.path, f"OpenCV could not decode frame {position}")
                out.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
        return _from_hwc(np.stack(out))

    def close(self) -> None:
        self._cap.release()
