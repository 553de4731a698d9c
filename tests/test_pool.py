"""The killable process pool: results in order, a stuck task costs its deadline and its worker (killed and
replaced), a dying worker loses only its task, and no process outlives the pool. Probing uses it, so one file
that blocks a decoder forever cannot stall start-up."""

from __future__ import annotations

import faulthandler
import multiprocessing
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest

import vidlstm.data.probe as probe_module
from vidlstm.data.index import VideoRecord
from vidlstm.data.synthetic import write_mp4
from vidlstm.utils.pool import Lost, imap_killable

_REAL_PROBE_FILE = probe_module.probe_file


def _block_forever() -> None:
    """What a native decoder stuck in a loop looks like from outside: no signal it can catch gets through."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM, signal.SIGTERM, signal.SIGINT})
    time.sleep(10**6)


def _square_or_block(n: int) -> int:
    if n < 0:
        _block_forever()
    return n * n


def _crash_on_negative(n: int) -> int:
    if n < 0:
        faulthandler.disable()  # pytest's traceback dump would only add noise
        os.kill(os.getpid(), signal.SIGSEGV)  # a decoder's segfault
    return n


def _pid(_: object) -> int:
    return os.getpid()


def _fail(n: int) -> int:
    raise ValueError(f"task {n} is broken")


def _always() -> bool:
    return True


def _probe_or_block(path: str, timeout_s: float | None) -> dict:
    """Stand-in for the probe the workers run: the file named stuck.mp4 never comes back."""
    if Path(path).name == "stuck.mp4":
        _block_forever()
    return _REAL_PROBE_FILE(path, timeout_s)


def _no_children_left() -> None:
    deadline = time.monotonic() + 5
    while multiprocessing.active_children() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert multiprocessing.active_children() == []


def test_results_come_in_input_order() -> None:
    assert list(imap_killable(_square_or_block, range(20), 3, 10)) == [n * n for n in range(20)]
    assert list(imap_killable(_square_or_block, [], 2, 10)) == []
    _no_children_left()


def test_a_stuck_task_is_abandoned_and_its_worker_killed_and_replaced() -> None:
    started = time.monotonic()
    results = list(imap_killable(_square_or_block, [1, -1, 2, 3, -2, 4], 2, 1.0))
    assert time.monotonic() - started < 8, "two stuck tasks must cost about their deadlines, not forever"
    assert [r for r in results if not isinstance(r, Lost)] == [1, 4, 9, 16]
    lost = [results[1], results[4]]
    assert all(isinstance(r, Lost) and r.timed_out for r in lost)
    assert lost[0].reason == "took longer than 1 s (timeout); its process was killed"
    _no_children_left()


def test_a_dying_worker_loses_only_its_task() -> None:
    results = list(imap_killable(_crash_on_negative, [1, -1, 2, 3], 2, 10))
    assert results[0] == 1 and results[2:] == [2, 3]
    assert isinstance(results[1], Lost) and not results[1].timed_out
    assert results[1].reason == "the worker process died (killed by SIGSEGV)"
    _no_children_left()


def test_an_exception_in_a_task_reaches_the_caller_and_stops_the_workers() -> None:
    with pytest.raises(ValueError, match="task 0 is broken"):
        list(imap_killable(_fail, [0, 1, 2], 2, 10))
    _no_children_left()


def test_a_worker_that_asks_to_retire_is_replaced_after_its_task() -> None:
    pids = list(imap_killable(_pid, range(6), 2, 10, retire_if=_always))
    assert len(set(pids)) == 6 and os.getpid() not in pids
    _no_children_left()


def test_closing_the_iterator_early_kills_busy_workers() -> None:
    results = imap_killable(_square_or_block, [1, -1, -1, 2], 2, None)  # no deadline: would wait forever
    assert next(results) == 1
    results.close()
    _no_children_left()


def test_a_probe_that_never_returns_quarantines_its_file_and_startup_goes_on(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = np.random.default_rng(0).integers(0, 255, (8, 32, 32, 3)).astype(np.uint8)
    paths = []
    for name in ("a.mp4", "stuck.mp4", "b.mp4", "c.mp4"):
        write_mp4(tmp_path / name, frames, fps=10)
        paths.append(str(tmp_path / name))
    monkeypatch.setattr(probe_module, "probe_file", _probe_or_block)
    records = [VideoRecord(p, "x") for p in paths]
    started = time.monotonic()
    good, bad = probe_module.probe_records(records, tmp_path / "cache.json", workers=2, timeout_s=2)
    assert time.monotonic() - started < 15
    stuck = str(tmp_path / "stuck.mp4")
    assert bad == {stuck: "probing took longer than 2 s (timeout); its process was killed"}
    assert [r.path for r in good] == [p for p in paths if p != stuck]
    _no_children_left()


@pytest.mark.parametrize("workers", [0, 2])
def test_probing_gets_the_configured_time_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                workers: int) -> None:
    """The limit reaches the probe itself (which gives frame counting half of it), not only the pool."""

    def limit_seen(path: str, backend: str = "auto", timeout_s: float | None = None) -> None:
        raise probe_module.VideoDecodeError(path, f"probed with a {timeout_s} s limit")

    monkeypatch.setattr(probe_module, "probe", limit_seen)
    path = str(tmp_path / "a.mp4")
    write_mp4(path, np.zeros((4, 16, 16, 3), np.uint8), fps=10)
    _, bad = probe_module.probe_records([VideoRecord(path, "x")], None, workers=workers, timeout_s=7.5)
    assert bad == {path: "probed with a 7.5 s limit"}
