"""The torchcodec backend (`TorchCodecReader`)."""

from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
import os

import torch

from vidlstm.data.video.base import VideoReader
from vidlstm.data.video.errors import VideoDecodeError
from vidlstm.data.video.facts import StreamFacts
from vidlstm.utils.versions import at_least

ROTATION_SINCE = "0.11"  # the first torchcodec release that reads display matrices and turns frames upright
# The first release that decodes the keyframe an MP4 edit list hides (a cut by stream copy starts with it) instead of
# seeking past it: torchcodec #1504 (CPU, July 2026) and #1662 (CUDA, August 2026), both in 0.17.
EDIT_LISTS_SINCE = (0, 17)


@functools.cache
def _version() -> str:
    """The installed torchcodec's version string, read without importing it ("" when it is not installed)."""
    try:
        return importlib.metadata.version("torchcodec")
    except importlib.metadata.PackageNotFoundError:
        return ""


@functools.cache
def _no_rotation_reason() -> str | None:
    """Why the installed torchcodec cannot be trusted with rotated files, or None when it applies rotation.

    Checked by feature, not version number: releases that apply rotation report it as
    ``VideoStreamMetadata.rotation`` (both arrived together in 0.11)."""
    try:
        from torchcodec.decoders import VideoStreamMetadata
    except Exception as err:  # ImportError, or RuntimeError/OSError when FFmpeg's libraries are missing
        return f"torchcodec cannot load ({type(err).__name__})"
    if "rotation" not in {field.name for field in dataclasses.fields(VideoStreamMetadata)}:
        return (f"torchcodec {_version() or '?'} ignores rotation metadata (needs >= {ROTATION_SINCE}); "
                "its frames would come out sideways")
    return None


class TorchCodecReader(VideoReader):
    """torchcodec (optional extra; needs FFmpeg shared libraries): exact seeking, applies rotation itself
    (releases that cannot refuse rotated files, so `auto` moves on to a backend that can)."""

    backend = "torchcodec"
    applies_rotation = True
    native = True
    UNRELIABLE_CODECS = frozenset({"mpeg4"})  # MPEG-4 Part 2 with B-frames: runs out of frames in exact mode

    @classmethod
    def unsuitable_reason(cls, facts: StreamFacts) -> str | None:
        if facts.rotation:
            reason = _no_rotation_reason()
            if reason:
                return reason
        reason = super().unsuitable_reason(facts)
        if reason is not None or not facts.edit_list_hidden:
            return reason
        if facts.open_gop_keyframes:  # measured with 0.17: wrong on 2 to 9 of 25 reads
            return ("torchcodec decodes open-GOP streams whose MP4 edit list hides frames wrongly (the first frames "
                    f"shown may reference a hidden GOP; {facts.edit_list_hidden} packet(s) hidden)")
        if not at_least(_version(), EDIT_LISTS_SINCE):
            return (f"torchcodec {_version() or '(version unknown)'} decodes streams whose MP4 edit list hides frames "
                    f"wrongly (it seeks past a hidden keyframe; needs >= {'.'.join(map(str, EDIT_LISTS_SINCE))}; "
                    f"{facts.edit_list_hidden} packet(s) hidden)")
        return None

    def __init__(self, path: str | os.PathLike, facts: StreamFacts | None = None, device: str = "cpu") -> None:
        super().__init__(path, facts)
        from torchcodec.decoders import VideoDecoder

        # device "cuda[:n]": NVDEC decodes and frames stay in that GPU's memory (main process only: CUDA does not
        # survive the fork into DataLoader workers)
        self._decoder = VideoDecoder(self.path, stream_index=self.facts.stream_index, seek_mode="exact",
                                     device=device)
        self._meta = self._decoder.metadata
        turns = round(getattr(self._meta, "rotation", None) or 0) % 360
        if turns != self.facts.rotation:
            raise VideoDecodeError(self.path, f"torchcodec would turn frames by {turns} degrees where the file asks "
                                              f"for {self.facts.rotation}")
        self._display_size = (int(self._meta.height), int(self._meta.width))
        if self.facts.rotation:
            # Frame 0's shape settles the display size whatever a torchcodec release reports as height/width
            # (rotated files only; opening runs under the caller's deadline).
            self._display_size = tuple(self._decoder.get_frames_at([0]).data.shape[-2:])

    @property
    def fps(self) -> float:
        return float(self._meta.average_fps or 0.0)

    @property
    def coded_size(self) -> tuple[int, int]:
        h, w = self._display_size
        return (w, h) if self.facts.rotation in (90, 270) else (h, w)

    def _decode_sorted_unique(self, indices: list[int]) -> torch.Tensor:
        return self._decoder.get_frames_at(indices).data
