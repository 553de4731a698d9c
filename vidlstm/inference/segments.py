"""Action segments from a sequence of window predictions: causal smoothing, then hysteresis.

The same `SegmentTracker` turns the windows of `predict.py` window mode and of `vidlstm-stream` into segments,
so a file streamed and the same file predicted offline give the same segments.

Each window stands for the time around its centre: consecutive windows split the time between them at the
midpoint of their centres (the first starts at its own start, the last ends at its own end), so segments tile
the timeline without overlapping even when windows overlap. A window's label is the top class of its smoothed
probabilities (a moving average over the last ``smoothing_windows`` windows, or an exponential one), or no
label when that class's probability is below ``min_score``. A new label must hold for ``min_duration_s`` before
it closes the current segment and opens its own (starting where its run began); a shorter run is flicker and
is absorbed by the segment around it. Closed segments are returned as soon as they close.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

SMOOTHING = ("none", "mean", "ema")


@dataclass
class _Run:
    """Consecutive windows attributed to one label (None: below ``min_score``)."""

    label: int | None
    start_s: float
    scores: list[torch.Tensor] = field(default_factory=list)  # smoothed probabilities of its windows


class SegmentTracker:
    """Feed windows in time order with `update`; `finish` closes the last segment.

    Args:
        class_names: class names in label order.
        min_duration_s: a new label must hold this long (seconds of its windows' share of the timeline) to
            become a segment; shorter runs are absorbed by the segment they interrupt.
        smoothing: "none", "mean" (moving average of the last ``smoothing_windows`` windows' probabilities)
            or "ema" (exponential moving average with weight ``ema_alpha`` on the newest window).
        smoothing_windows: windows averaged by ``smoothing="mean"``.
        ema_alpha: weight of the newest window for ``smoothing="ema"``, in (0, 1].
        min_score: a window whose smoothed top probability is below this has no label (no segment covers it).
    """

    def __init__(self, class_names: Sequence[str], min_duration_s: float = 1.0, smoothing: str = "mean",
                 smoothing_windows: int = 3, ema_alpha: float = 0.5, min_score: float = 0.0) -> None:
        if smoothing not in SMOOTHING:
            raise ValueError(f"segments.smoothing must be one of {SMOOTHING}, got {smoothing!r}")
        if smoothing_windows < 1 or not 0.0 < ema_alpha <= 1.0 or min_duration_s < 0:
            raise ValueError(f"need segments.smoothing_windows >= 1, 0 < ema_alpha <= 1 and min_duration_s >= 0, "
                             f"got {smoothing_windows}, {ema_alpha}, {min_duration_s}")
        self.class_names = list(class_names)
        self.min_duration_s, self.min_score = min_duration_s, min_score
        self.smoothing, self.ema_alpha = smoothing, ema_alpha
        self.recent: deque[torch.Tensor] = deque(maxlen=smoothing_windows if smoothing == "mean" else 1)
        self.ema: torch.Tensor | None = None
        self.current: _Run | None = None  # the open segment
        self.candidate: _Run | None = None  # a different label's run, not yet held for min_duration_s
        self.last_centre: float | None = None
        self.last_end = 0.0

    def smooth(self, probs: torch.Tensor) -> torch.Tensor:
        """The smoothed probabilities after a window with ``probs`` (causal: only this and earlier windows)."""
        probs = probs.detach().double().cpu()
        if self.smoothing == "ema":
            self.ema = probs if self.ema is None else self.ema_alpha * probs + (1 - self.ema_alpha) * self.ema
            return self.ema
        self.recent.append(probs)
        return torch.stack(list(self.recent)).mean(0)

    def update(self, start_s: float, end_s: float, probs: torch.Tensor) -> list[dict[str, Any]]:
        """Add the next window (times in seconds, class probabilities); returns the segments it closes."""
        smoothed = self.smooth(probs)
        top = int(smoothed.argmax())
        label = top if float(smoothed[top]) >= self.min_score else None
        centre = (start_s + end_s) / 2
        boundary = start_s if self.last_centre is None else (self.last_centre + centre) / 2
        # Until the next window arrives, this one's share ends half a window step after its centre.
        share_end = end_s if self.last_centre is None else centre + (centre - self.last_centre) / 2
        self.last_centre, self.last_end = centre, end_s
        closed: list[dict[str, Any]] = []
        if self.current is not None and label == self.current.label:
            self._absorb_candidate()
            self.current.scores.append(smoothed)
            return closed
        if self.candidate is None or self.candidate.label != label:
            self._absorb_candidate()
            self.candidate = _Run(label, boundary)
        self.candidate.scores.append(smoothed)
        if share_end - self.candidate.start_s >= self.min_duration_s - 1e-9:
            closed += self._close(self.candidate.start_s)
            self.current, self.candidate = self.candidate, None
        return closed

    def finish(self) -> list[dict[str, Any]]:
        """Close the open segment at the last window's end (a run shorter than min_duration_s is absorbed)."""
        self._absorb_candidate()
        closed = self._close(self.last_end)
        self.current = None
        return closed

    def _absorb_candidate(self) -> None:
        if self.candidate is not None and self.current is not None:
            self.current.scores += self.candidate.scores
        self.candidate = None

    def _close(self, end_s: float) -> list[dict[str, Any]]:
        run = self.current
        if run is None or run.label is None or not run.scores:
            return []
        score = float(torch.stack(run.scores)[:, run.label].mean())
        return [{"kind": "segment", "start_s": round(run.start_s, 3), "end_s": round(end_s, 3),
                 "label": self.class_names[run.label], "score": round(score, 6)}]


def segments_of(windows: Sequence[tuple[float, float, torch.Tensor]], class_names: Sequence[str],
                **settings: Any) -> list[dict[str, Any]]:
    """All segments of a finished sequence of (start_s, end_s, probabilities) windows."""
    tracker = SegmentTracker(class_names, **settings)
    segments = [s for start, end, probs in windows for s in tracker.update(start, end, probs)]
    return segments + tracker.finish()
