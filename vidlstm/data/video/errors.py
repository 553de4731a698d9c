"""The errors a video read can end in, each carrying the path and a one-line reason."""

from __future__ import annotations

import os


class VideoDecodeError(RuntimeError):
    """A video could not be read. ``path`` and ``reason`` are kept for reports."""

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        self.path = str(path)
        self.reason = " ".join(str(reason).split()) or "unknown decoding error"
        super().__init__(f"{self.path}: {self.reason}")

    def __reduce__(self) -> tuple:  # keep the type and (path, reason) when crossing DataLoader worker processes
        return (type(self), (self.path, self.reason))


class FrameOutOfRange(VideoDecodeError, IndexError):
    """A frame index outside ``[0, num_frames)`` was asked for (``num_frames``: the frames that decode)."""


class DecodeTimeout(VideoDecodeError):
    """Probing, opening or decoding took longer than its time limit."""


class DecodeStuck(DecodeTimeout):
    """A native decoder call outlived its deadline; its thread was abandoned (threads cannot be killed)."""


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:300] or type(err).__name__
