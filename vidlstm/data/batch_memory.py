"""Batches from DataLoader workers in reused shared memory.

PyTorch hands every batch from a worker to the main process in a fresh shared-memory file: the worker allocates
it and faults its pages in, the main process receives its file descriptor (a socket hand-over with an
authentication handshake) and maps it. For clips that decode in a few milliseconds that is ~15% of the loader's
time. Here each DataLoader worker stacks its batches into a few shared-memory slots that it keeps: a slot's memory
crosses to the main process once, and later batches send only (slot, shape, dtype).

A batch in the main process is a tensor over its slot's memory. The slot is free again only when the last tensor
viewing that memory is gone (the batch, its slices, a NumPy view of it): the tensor is built on a NumPy view of
its own whose finaliser clears the slot's busy flag. So a batch you hold is never overwritten; when all of a
worker's slots are held, the worker stacks into a fresh shared-memory file, as PyTorch does.
"""

from __future__ import annotations

import math
import os
import secrets
import weakref

import numpy as np
import torch
from torch.utils.data import default_collate, get_worker_info

DEFAULT_SLOTS = 8  # per worker; slots are created only when every existing one is busy
_HEADER = 64  # bytes before a slot's data; byte 0 is 1 while the slot's batch may still be read


class _Slot:
    """Worker side: one shared-memory buffer, the batch it holds now, and whether the main process has been sent
    its memory yet."""

    def __init__(self, nbytes: int) -> None:
        # allocated in shared memory (as default_collate does), not allocated privately and copied there
        storage = torch.UntypedStorage._new_shared(_HEADER + nbytes)
        self.memory = torch.empty(0, dtype=torch.uint8).set_(storage)
        self.memory[0] = 0
        self.flags = self.memory.numpy()
        self.capacity = nbytes
        self.token = secrets.token_hex(8)
        self.sent = False
        self.batch: weakref.ref | None = None


class _WorkerSlots:
    """The slots of one worker process (a forked child starts with none of its parent's). ``process`` names the
    process apart from an earlier one that had the same pid."""

    pid, process = -1, ""
    slots: list[_Slot] = []

    @classmethod
    def acquire(cls, nbytes: int, limit: int) -> _Slot | None:
        if cls.pid != os.getpid():
            cls.pid, cls.process, cls.slots = os.getpid(), f"{os.getpid()}:{secrets.token_hex(4)}", []
        slot = next((s for s in cls.slots if s.flags[0] == 0 and s.capacity >= nbytes), None)
        if slot is None and len(cls.slots) < limit:
            slot = _Slot(nbytes)
            cls.slots.append(slot)
        if slot is not None:
            slot.flags[0] = 1
        return slot


def stack_batch(tensors: list[torch.Tensor], slots: int = DEFAULT_SLOTS) -> torch.Tensor:
    """``torch.stack(tensors)``; in a DataLoader worker into one of at most ``slots`` reused shared-memory
    buffers (0: a fresh shared-memory file per batch, PyTorch's default). Tensors of different shapes or dtypes
    fail as in ``default_collate``."""
    first = tensors[0]
    if (slots <= 0 or get_worker_info() is None or os.name != "posix" or first.device.type != "cpu"
            or any(t.shape != first.shape or t.dtype != first.dtype for t in tensors)):
        return default_collate(tensors)
    shape = (len(tensors), *first.shape)
    nbytes = math.prod(shape) * first.element_size()
    slot = _WorkerSlots.acquire(nbytes, slots)
    if slot is None:
        return default_collate(tensors)
    batch = slot.memory[_HEADER: _HEADER + nbytes].view(first.dtype).view(shape)
    try:
        torch.stack(tensors, out=batch)
    except BaseException:
        slot.flags[0] = 0  # never handed out
        raise
    slot.batch = weakref.ref(batch)  # found again by `reduce_for_main_process`
    return batch


def reduce_for_main_process(batch: torch.Tensor | None) -> object:
    """What a worker's result queue pickles for ``batch``: a small `_SlotBatch` if it is a slot's batch (the
    slot's memory itself only the first time), else the tensor (PyTorch's shared-memory path). Only for the
    queue to the main process: any other pickling or copy sees a plain tensor."""
    if batch is None or _WorkerSlots.pid != os.getpid():
        return batch
    slot = next((s for s in _WorkerSlots.slots if s.batch is not None and s.batch() is batch), None)
    if slot is None:
        return batch
    memory = None if slot.sent else slot.memory
    slot.sent = True
    return _SlotBatch(_WorkerSlots.process, slot.token, memory, tuple(batch.shape), batch.dtype)


class _SlotBatch:
    def __init__(self, process: str, token: str, memory: torch.Tensor | None, shape: tuple, dtype: torch.dtype):
        self.args = (process, token, memory, shape, dtype)

    def __reduce__(self) -> tuple:
        return _open_slot_batch, self.args


# main process: {worker process ("pid:nonce"): {slot token: the slot's memory}}
_received: dict[str, dict[str, np.ndarray]] = {}


def _open_slot_batch(process: str, token: str, memory: torch.Tensor | None, shape: tuple,
                     dtype: torch.dtype) -> torch.Tensor:
    """Main process: the batch as a tensor over its slot, marking the slot free when that tensor's memory is
    released."""
    if memory is not None:
        if process not in _received:
            _forget_exited_workers(new=process)
            _received[process] = {}
        _received[process][token] = memory.numpy()
    try:
        slot = _received[process][token]
    except KeyError:
        raise RuntimeError(f"a batch arrived in shared-memory slot {token} of worker process {process}, whose "
                           "memory was never received (a slot batch must go to the process that started the "
                           "worker)") from None
    lease = slot[_HEADER: _HEADER + math.prod(shape) * dtype.itemsize]  # a view object owned by this batch alone
    weakref.finalize(lease, _mark_free, slot, os.getpid()).atexit = False
    return torch.from_numpy(lease).view(dtype).view(shape)


def _mark_free(slot: np.ndarray, owner: int) -> None:
    if os.getpid() == owner:  # a forked child inherits the finaliser, not the batch: its copy must not free it
        slot[0] = 0


def _forget_exited_workers(new: str) -> None:
    """Drop the slots of worker processes that have exited, ``new``'s pid included when an earlier process had
    it (batches still held keep their own memory)."""
    new_pid = new.split(":")[0]
    for process in list(_received):
        pid = process.split(":")[0]
        try:
            os.kill(int(pid), 0)
            exited = pid == new_pid
        except ProcessLookupError:
            exited = True
        except PermissionError:
            exited = False
        if exited:
            _received.pop(process, None)


def received_slots() -> dict[str, int]:
    """{worker process ("pid:nonce"): slots whose memory this process holds}: for tests and diagnostics."""
    return {process: len(slots) for process, slots in _received.items()}
