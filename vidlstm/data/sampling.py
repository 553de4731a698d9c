"""Frame samplers: strategy objects mapping a video's frame count to the frame indices of its clip(s).

A sampler is called as ``sampler(total_frames)`` and returns a list of frame indices (one clip), or, for
`MultiClipSampler`, a list of such lists (several clips whose scores are averaged per video).
Randomness comes from torch's global generator, which Lightning seeds per DataLoader worker.
"""

from __future__ import annotations

import torch

SHORT_VIDEO_POLICIES = ("loop", "repeat_last")


class UniformSegmentSampler:
    """Split the video into ``num_frames`` equal segments and take one frame from each (TSN / LRCN style).

    With ``jitter`` (training) the frame is drawn uniformly inside its segment, otherwise the segment centre
    is used (evaluation); ``offset`` in [0, 1) replaces the centre (used by `MultiClipSampler`). Videos
    shorter than ``num_frames`` repeat frames, keeping temporal order.
    """

    def __init__(self, num_frames: int, jitter: bool = False, offset: float = 0.5) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.num_frames, self.jitter, self.offset = num_frames, jitter, offset

    def __call__(self, total_frames: int) -> list[int]:
        _check_total(total_frames)
        # Plain Python on a few numbers: a tenth of the time of tensor ops, paid for every clip of every epoch.
        n = self.num_frames
        offsets = torch.rand(n, dtype=torch.float64).tolist() if self.jitter else [self.offset] * n
        return [min(int((i + offset) * total_frames / n), total_frames - 1) for i, offset in enumerate(offsets)]

    def __repr__(self) -> str:
        return f"UniformSegmentSampler(num_frames={self.num_frames}, jitter={self.jitter}, offset={self.offset})"


class DenseClipSampler:
    """``num_frames`` consecutive frames, ``frame_interval`` apart (SlowFast / I3D style).

    The clip starts at a random position (``jitter``, training) or is centred (evaluation); ``position`` in
    [0, 1] places it explicitly (used by `MultiClipSampler`). A video shorter than the clip's span is
    ``loop``-ed from its start or padded by repeating its last frame (``repeat_last``).
    """

    def __init__(self, num_frames: int, frame_interval: int = 1, jitter: bool = False,
                 short_video: str = "loop", position: float = 0.5) -> None:
        if num_frames < 1 or frame_interval < 1:
            raise ValueError(f"num_frames and frame_interval must be >= 1, got {num_frames}, {frame_interval}")
        if short_video not in SHORT_VIDEO_POLICIES:
            raise ValueError(f"short_video must be one of {SHORT_VIDEO_POLICIES}, got {short_video!r}")
        self.num_frames, self.frame_interval, self.jitter = num_frames, frame_interval, jitter
        self.short_video, self.position = short_video, position

    @property
    def span(self) -> int:
        return (self.num_frames - 1) * self.frame_interval + 1

    def __call__(self, total_frames: int) -> list[int]:
        _check_total(total_frames)
        steps = [k * self.frame_interval for k in range(self.num_frames)]
        slack = total_frames - self.span
        if slack < 0:
            if self.short_video == "loop":
                return [step % total_frames for step in steps]
            return [min(step, total_frames - 1) for step in steps]
        start = int(torch.randint(slack + 1, ()).item()) if self.jitter else round(self.position * slack)
        return [start + step for step in steps]

    def __repr__(self) -> str:
        return (f"DenseClipSampler(num_frames={self.num_frames}, frame_interval={self.frame_interval}, "
                f"jitter={self.jitter}, short_video={self.short_video!r}, position={self.position})")


class MultiClipSampler:
    """``num_clips`` evenly spaced clips per video for testing; their class scores are averaged.

    ``clip="dense"``: dense clips whose starts spread evenly from the beginning to the end of the video;
    ``clip="segments"``: uniform-segment clips with evenly spaced offsets inside the segments.
    """

    def __init__(self, num_frames: int, num_clips: int = 5, clip: str = "segments", frame_interval: int = 1,
                 short_video: str = "loop") -> None:
        if num_clips < 1 or clip not in ("dense", "segments"):
            raise ValueError(f"need num_clips >= 1 and clip 'dense' or 'segments', got {num_clips}, {clip!r}")
        positions = [(k + 0.5) / num_clips for k in range(num_clips)]
        if clip == "dense":
            positions = [k / max(num_clips - 1, 1) for k in range(num_clips)] if num_clips > 1 else [0.5]
            self.clips = [DenseClipSampler(num_frames, frame_interval, False, short_video, p) for p in positions]
        else:
            self.clips = [UniformSegmentSampler(num_frames, False, p) for p in positions]
        # Every argument is kept, even those the clip kind ignores: the feature cache keys on all of them.
        self.num_frames, self.num_clips, self.clip = num_frames, num_clips, clip
        self.frame_interval, self.short_video = frame_interval, short_video

    def __call__(self, total_frames: int) -> list[list[int]]:
        return [sampler(total_frames) for sampler in self.clips]

    def __repr__(self) -> str:
        return (f"MultiClipSampler(num_frames={self.num_frames}, num_clips={self.num_clips}, clip={self.clip!r}, "
                f"frame_interval={self.frame_interval}, short_video={self.short_video!r})")


def _check_total(total_frames: int) -> None:
    if total_frames < 1:
        raise ValueError(f"cannot sample from a video with {total_frames} frames")
