"""Optimiser parameter groups and learning-rate schedules."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler


def parameter_groups(net: nn.Module, overrides: Mapping[str, Mapping[str, Any] | None] | None = None
                     ) -> list[dict[str, Any]]:
    """Trainable parameters split into an ``encoder`` group (``net.encoder``) and a ``head`` group (the rest),
    each with optional optimiser settings (e.g. ``{"encoder": {"lr": 1e-4}}``); None values are left to the
    optimiser's defaults. Empty groups (a fully frozen encoder) are dropped."""
    overrides = overrides or {}
    encoder = getattr(net, "encoder", None)
    encoder_ids = {id(p) for p in encoder.parameters()} if encoder is not None else set()
    trainable = [p for p in net.parameters() if p.requires_grad]
    members = {"encoder": [p for p in trainable if id(p) in encoder_ids],
               "head": [p for p in trainable if id(p) not in encoder_ids]}
    unknown = sorted(set(overrides) - set(members))
    if unknown:
        raise ValueError(f"unknown parameter group(s) {unknown}; use 'encoder' and/or 'head'")
    groups = []
    for name, params in members.items():
        if params:
            settings = {k: v for k, v in (overrides.get(name) or {}).items() if v is not None}
            groups.append({"params": params, "name": name, **settings})
    return groups


def warmup_cosine(optimizer: torch.optim.Optimizer, total: int, warmup: int = 0, start_factor: float = 0.01,
                  min_factor: float = 0.01) -> LRScheduler:
    """Linear warm-up from ``start_factor`` x lr over ``warmup`` intervals, then cosine decay to ``min_factor``
    x lr at ``total`` intervals (epochs or steps, see ``scheduler_interval``). Works per parameter group.
    A run shorter than the warm-up (e.g. fast_dev_run) shortens the warm-up to fit."""
    total = max(total, 1)
    warmup = min(warmup, total - 1)

    def factor(step: int) -> float:
        if step < warmup:
            return start_factor + (1.0 - start_factor) * step / warmup
        progress = min(1.0, (step - warmup) / (total - warmup))
        return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return LambdaLR(optimizer, factor)


def build_scheduler(factory: Callable[..., Any], optimizer: torch.optim.Optimizer, total_steps: int,
                    total_intervals: int) -> Any:
    """Call a scheduler factory, filling in what only the running trainer knows when the factory takes it and
    the config left it out: ``total_steps``, ``max_lr`` (each group's own lr) and ``cycle_momentum`` (whether
    the optimizer has momentum) for one-cycle, and ``total``
    (`warmup_cosine`: epochs or steps, whichever the scheduler is stepped by)."""
    known = getattr(factory, "keywords", {}) or {}
    target = getattr(factory, "func", factory)
    try:
        accepted = set(inspect.signature(target).parameters)
    except (TypeError, ValueError):
        accepted = set()
    extra: dict[str, Any] = {}
    if "total_steps" in accepted and known.get("total_steps") is None and known.get("epochs") is None:
        extra["total_steps"] = total_steps
    if "max_lr" in accepted and known.get("max_lr") is None:
        extra["max_lr"] = [group["lr"] for group in optimizer.param_groups]
    if "cycle_momentum" in accepted and known.get("cycle_momentum") is None:
        extra["cycle_momentum"] = "momentum" in optimizer.defaults or "betas" in optimizer.defaults
    if "total" in accepted and known.get("total") is None:
        extra["total"] = total_intervals
    return factory(optimizer=optimizer, **extra)


def balanced_class_weights(counts: Iterable[int]) -> torch.Tensor:
    """weight_c = N / (C * n_c) (scikit-learn's "balanced"); classes with no example get weight 0."""
    counts_t = torch.as_tensor(list(counts), dtype=torch.float32)
    total, classes = counts_t.sum(), len(counts_t)
    return torch.where(counts_t > 0, total / (classes * counts_t.clamp_min(1)), torch.zeros_like(counts_t))
