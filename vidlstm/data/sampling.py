"""Frame samplers: strategy objects mapping a video's frame count to the frame indices of one clip."""

from __future__ import annotations

import torch


class UniformSegmentSampler:
    """Split the video into ``num_frames`` equal segments and take one frame from each (TSN / LRCN style).

    With ``jitter`` (training) the frame is drawn uniformly inside its segment, otherwise the segment centre is
    used (evaluation). Videos shorter than ``num_frames`` repeat frames, keeping temporal order.
    Randomness comes from torch's global generator, which Lightning seeds per DataLoader worker.
    """

    def __init__(self, num_frames: int, jitter: bool = False) -> None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1, got {num_frames}")
        self.num_frames = num_frames
        self.jitter = jitter

    def __call__(self, total_frames: int) -> list[int]:
        if total_frames < 1:
            raise ValueError(f"cannot sample from a video with {total_frames} frames")
        edges = torch.linspace(0, total_frames, self.num_frames + 1, dtype=torch.float64)
        start, width = edges[:-1], edges[1:] - edges[:-1]
        offset = torch.rand(self.num_frames, dtype=torch.float64) if self.jitter else torch.full_like(start, 0.5)
        return (start + offset * width).floor().clamp(0, total_frames - 1).long().tolist()

    def __repr__(self) -> str:
        return f"UniformSegmentSampler(num_frames={self.num_frames}, jitter={self.jitter})"
