"""Seeds derived from a run's seed, so a random draw depends on where it happens, never on what ran before."""

from __future__ import annotations

import hashlib


def derived_seed(seed: int, *where: int | str) -> int:
    """A seed for one place of a run (e.g. ``("sample", epoch, index)``): the same in every process, with any
    worker count and after a resume; different places get unrelated seeds."""
    key = ":".join(str(part) for part in (seed, *where)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") >> 1  # non-negative, 63 bits


def seed_step(seed: int) -> None:
    """``torch.manual_seed(seed)`` for the generators a step draws from: the CPU one, and CUDA's once CUDA is in
    use. (`torch.manual_seed` also queues seeding for every accelerator not yet initialised, recording a stack
    trace each time: milliseconds per call.)"""
    import torch

    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)
