"""Batches from workers in reused shared-memory slots: equal to in-process batches, never overwritten while held."""

from __future__ import annotations

import copy
import functools
import gc
import io
import multiprocessing
import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vidlstm.data.batch_memory import received_slots
from vidlstm.data.dataset import ClipBatch, ClipSample, Failure, collate_clips


class PatternClips(Dataset):
    """Clip i is a (T, 3, H, W) tensor whose every value derives from i; every 7th video fails, and 8-11 too (an
    all-failed batch of 4)."""

    def __init__(self, length: int, shape: tuple = (4, 3, 8, 8), dtype: torch.dtype = torch.uint8) -> None:
        self.length, self.shape, self.dtype = length, shape, dtype

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> ClipSample:
        if i % 7 == 3 or 8 <= i < 12:
            return ClipSample(None, -1, [Failure(f"video{i}.mp4", "broken")])
        values = (torch.arange(int(np.prod(self.shape))) * 7 + i * 13) % 251
        return ClipSample(values.reshape(self.shape).to(self.dtype), i % 5, [])


def _reference(dataset: Dataset, batch_size: int) -> list:
    return [collate_clips([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            for start in range(0, len(dataset), batch_size)]


def _loader(dataset: Dataset, slots: int, **kwargs) -> DataLoader:
    kwargs = {"batch_size": 4, "num_workers": 2, **kwargs}
    return DataLoader(dataset, collate_fn=functools.partial(collate_clips, batch_memory_slots=slots), **kwargs)


def _assert_equal(batch, reference) -> None:
    assert batch.failures == reference.failures and torch.equal(batch.labels, reference.labels)
    assert (batch.clips is None) == (reference.clips is None)
    if reference.clips is not None:
        assert batch.clips.dtype == reference.clips.dtype and torch.equal(batch.clips, reference.clips)


@pytest.mark.parametrize("dtype, shape", [(torch.uint8, (4, 3, 8, 8)), (torch.float32, (2, 4, 3, 6, 6))])
def test_batches_through_slots_equal_in_process_batches(dtype: torch.dtype, shape: tuple) -> None:
    """uint8 and float clips, multi-clip shapes, a last partial batch and all-failed batches, over 3 epochs of
    persistent workers: every batch equals the one made in-process, and every batch with clips came through a
    slot (no per-batch shared-memory file) once the loop drops each batch as training does."""
    dataset = PatternClips(43, shape, dtype)
    expected = _reference(dataset, 4)
    assert any(b.clips is None for b in expected) and len(dataset) % 4
    loader = _loader(dataset, slots=4, persistent_workers=True)
    for _ in range(3):
        count = 0
        for batch, reference in zip(loader, expected, strict=True):
            _assert_equal(batch, reference)
            assert batch.clips is None or not batch.clips.is_shared(), "a batch came through a fresh file"
            count += 1
        assert count == len(expected)
    assert len(received_slots()) >= 2 and all(n <= 4 for n in received_slots().values())


def test_held_batches_and_their_views_are_never_overwritten() -> None:
    """Batches, slices of batches and NumPy views of batches kept while the loader runs on (and through a second
    epoch) keep their values; once every slot of a worker is held, its batches come through fresh shared
    memory instead of waiting or reusing a held slot."""
    dataset = PatternClips(120)
    expected = _reference(dataset, 4)
    loader = _loader(dataset, slots=2, persistent_workers=True, prefetch_factor=2)
    held, slices, arrays, fresh = {}, {}, {}, 0
    for number, batch in enumerate(loader):
        if batch.clips is None:
            continue
        fresh += batch.clips.is_shared()
        if number % 3 == 0:
            held[number] = batch
        elif number % 5 == 0:
            slices[number] = batch.clips[1:3]
        elif number % 7 == 0:
            arrays[number] = batch.clips.numpy()
    for _ in loader:  # a second epoch reuses every slot that was let go
        pass
    assert fresh > 0, "the test must hold more batches than there are slots"
    for number, batch in held.items():
        _assert_equal(batch, expected[number])
    for number, clips in slices.items():
        assert torch.equal(clips, expected[number].clips[1:3])
    for number, clips in arrays.items():
        assert np.array_equal(clips, expected[number].clips.numpy())


def test_zero_slots_is_pytorchs_shared_memory_path() -> None:
    dataset = PatternClips(16)
    for batch, reference in zip(_loader(dataset, slots=0), _reference(dataset, 4), strict=True):
        _assert_equal(batch, reference)
        assert batch.clips is None or batch.clips.is_shared()


def test_slots_of_exited_workers_are_let_go() -> None:
    """Workers that end with their epoch (persistent_workers=False) leave no slots mapped behind."""
    dataset = PatternClips(24)
    for _ in range(4):
        for batch, reference in zip(_loader(dataset, slots=3), _reference(dataset, 4), strict=True):
            _assert_equal(batch, reference)
    assert len(received_slots()) <= 2


def test_a_new_process_with_a_reused_pid_drops_the_old_ones_slots() -> None:
    from vidlstm.data.batch_memory import _HEADER, _open_slot_batch

    memory = torch.zeros(_HEADER + 6, dtype=torch.uint8)
    memory[_HEADER:] = torch.arange(6)
    mine = f"{os.getpid()}"
    for process in (f"{mine}:old", f"{mine}:new"):
        memory[0] = 1  # as the worker marks it
        batch = _open_slot_batch(process, "slot", memory, (2, 3), torch.uint8)
        view = batch[1]
        assert torch.equal(batch, torch.arange(6, dtype=torch.uint8).view(2, 3))
        del batch
        assert memory[0] == 1, "a view of the batch still holds the slot"
        del view
        assert memory[0] == 0, "the slot is free once nothing views it"
    assert f"{mine}:new" in received_slots() and f"{mine}:old" not in received_slots()


def _collate_then_copy(samples: list[ClipSample]):
    """In a worker: copies and plain pickles of a slot batch are ordinary batches, and leave its way to the main
    process intact."""
    batch = collate_clips(samples, batch_memory_slots=4)
    buffer = io.BytesIO()
    torch.save(batch, buffer)
    buffer.seek(0)
    for other in (copy.deepcopy(batch), pickle.loads(pickle.dumps(batch)), torch.load(buffer, weights_only=False)):
        assert isinstance(other, ClipBatch) and type(other.clips) is type(batch.clips)
        assert other.clips is None or torch.equal(other.clips, batch.clips)
    return batch


def test_copying_or_pickling_a_batch_in_a_worker_leaves_it_intact() -> None:
    dataset = PatternClips(40)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=_collate_then_copy)
    for batch, reference in zip(loader, _reference(dataset, 4), strict=True):
        _assert_equal(batch, reference)
        assert batch.clips is None or not batch.clips.is_shared(), "slot batches still reach the main process"


def _drop_and_exit(holder: list) -> None:
    holder.clear()  # the batch inherited from the parent: its finaliser runs here, in the child
    gc.collect()


def test_a_forked_child_dropping_an_inherited_batch_does_not_free_the_parents_slot() -> None:
    from vidlstm.data.batch_memory import _HEADER, _open_slot_batch

    memory = torch.zeros(_HEADER + 8, dtype=torch.uint8).share_memory_()  # as a worker's slot: seen by both
    memory[0] = 1
    holder = [_open_slot_batch(f"{os.getpid()}:fork", "slot", memory, (8,), torch.uint8)]
    child = multiprocessing.get_context("fork").Process(target=_drop_and_exit, args=(holder,))
    child.start()
    child.join()
    assert child.exitcode == 0 and memory[0] == 1, "the parent still holds the batch"
    holder.clear()
    assert memory[0] == 0


def test_spawned_workers_use_slots_too() -> None:
    """One worker has at most prefetch_factor + 2 batches in use at once (2 queued, the one being returned and
    the one the loop still holds): that many slots carry every batch."""
    dataset = PatternClips(24)
    for batch, reference in zip(_loader(dataset, slots=4, num_workers=1, multiprocessing_context="spawn"),
                                _reference(dataset, 4), strict=True):
        _assert_equal(batch, reference)
        assert batch.clips is None or not batch.clips.is_shared()


@pytest.mark.slow
def test_training_on_batches_from_worker_slots_equals_training_in_process(make_config) -> None:
    """Through Lightning (which keeps a batch ahead): 2 persistent workers handing batches through slots train
    the same weights and test metrics as decoding in the main process (seeded per-sample sampling and
    augmentation make the data identical)."""
    from vidlstm.training.train import train  # here: spawned workers import this module, and should stay light

    def run(*overrides: str) -> tuple[dict, dict[str, torch.Tensor]]:
        summary, objects = train(make_config("trainer.max_epochs=2", "seed=0", *overrides))
        return summary, {k: v.clone() for k, v in objects["module"].net.state_dict().items()}

    in_process, in_weights = run()
    slots, slot_weights = run("data.num_workers=2", "data.persistent_workers=true", "data.batch_memory_slots=8")
    assert in_process["test/acc"] == slots["test/acc"] and in_process["test/loss"] == slots["test/loss"]
    assert all(torch.equal(in_weights[k], slot_weights[k]) for k in in_weights)
