"""Temporal pooling: (B, T, F) sequence outputs -> (B, F) clip features."""

from __future__ import annotations

import torch
from torch import nn

POOLING_MODES = ("last", "mean", "max", "attention")


def valid_mask(lengths: torch.Tensor | None, batch: int, steps: int, device: torch.device) -> torch.Tensor:
    """(B, T) bool, True on the first ``lengths[b]`` steps (all True when lengths is None)."""
    if lengths is None:
        return torch.ones(batch, steps, dtype=torch.bool, device=device)
    return torch.arange(steps, device=device)[None, :] < lengths.to(device)[:, None]


def masked_mean(x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, D) -> (B, D): the mean over each clip's first ``lengths[b]`` steps (all T when None)."""
    mask = valid_mask(lengths, *x.shape[:2], x.device).unsqueeze(-1).to(x.dtype)
    return (x * mask).sum(1) / mask.sum(1).clamp_min(1)


def running_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, T, D), (B, T) bool valid steps -> (B, T, D): at step t the mean of the valid steps up to t."""
    weights = mask.unsqueeze(-1).to(x.dtype)
    return (x * weights).cumsum(1) / weights.cumsum(1).clamp_min(1)


class TemporalPooling(nn.Module):
    """Pools over time, ignoring padded steps.

    ``last``: the last valid step; for bidirectional outputs the forward half of the last valid step joined
    with the backward half of the first step (each direction's summary of the whole sequence).
    ``mean`` / ``max``: over valid steps.
    ``attention``: learned additive attention (Bahdanau): score_t = v . tanh(W x_t + b), softmax over valid
    steps, weighted sum. Needs ``input_size``; the last weights (B, T) are kept in ``last_weights`` and
    returned with ``return_weights=True``.
    """

    def __init__(self, mode: str = "last", num_directions: int = 1, input_size: int | None = None,
                 attention_size: int = 64) -> None:
        super().__init__()
        if mode not in POOLING_MODES:
            raise ValueError(f"unknown temporal pooling {mode!r}; choose from {POOLING_MODES}")
        self.mode, self.num_directions = mode, num_directions
        self.last_weights: torch.Tensor | None = None
        if mode == "attention":
            if input_size is None:
                raise ValueError("attention pooling needs input_size")
            self.project = nn.Linear(input_size, attention_size)
            self.score = nn.Linear(attention_size, 1, bias=False)
            nn.init.zeros_(self.score.weight)  # starts as mean pooling over valid steps, then learns to focus

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, return_weights: bool = False
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        b, t, f = x.shape
        mask = valid_mask(lengths, b, t, x.device)
        if self.mode == "attention":
            scores = self.score(torch.tanh(self.project(x))).squeeze(-1).masked_fill(~mask, float("-inf"))
            weights = scores.softmax(dim=1)
            self.last_weights = weights.detach()
            pooled = torch.einsum("bt,btf->bf", weights, x)
            return (pooled, weights) if return_weights else pooled
        if return_weights:
            raise ValueError(f"{self.mode!r} pooling has no attention weights")
        if self.mode == "mean":
            return masked_mean(x, lengths)
        if self.mode == "max":
            return x.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1)
        last = (mask.sum(1) - 1).clamp_min(0)
        final = x[torch.arange(b, device=x.device), last]
        if self.num_directions == 1:
            return final
        half = f // 2
        return torch.cat([final[:, :half], x[:, 0, half:]], dim=1)

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}"
