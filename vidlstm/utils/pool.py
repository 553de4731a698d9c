"""A process pool whose stuck tasks are abandoned: the worker that runs one past its deadline is killed and
replaced, so a task looping forever in native code (where no signal or exception reaches) costs its deadline
and nothing more. A worker that dies (a decoder's segfault) loses only its task; the rest go on."""

from __future__ import annotations

import contextlib
import multiprocessing
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class Lost:
    """A task without a result: it ran past the deadline (``timed_out``; its worker was killed) or its worker
    process died while running it. ``reason`` says which, in words."""

    reason: str
    timed_out: bool


def imap_killable(fn: Callable[[T], R], items: Iterable[T], workers: int, timeout_s: float | None,
                  retire_if: Callable[[], object] | None = None,
                  start_method: str | None = None) -> Iterator[R | Lost]:
    """``fn(item)`` for every item in ``workers`` processes, yielded in the order of ``items``; a task that
    runs longer than ``timeout_s`` (None or 0: no limit) or whose worker dies yields `Lost` instead.

    ``fn`` (and ``retire_if``) must be picklable under ``start_method`` (default: multiprocessing's). An
    exception ``fn`` raises is re-raised here, as `concurrent.futures` does. After each task a worker calls
    ``retire_if()`` and, when true, exits and is replaced (e.g. it holds threads abandoned to stuck calls).
    Workers are daemons that ignore SIGINT; all are gone when the iterator finishes or is closed.
    """
    tasks = deque(enumerate(items))
    total = len(tasks)
    if not total:
        return
    context = multiprocessing.get_context(start_method)
    pool: list[_Worker] = []
    done: dict[int, R | Lost] = {}
    next_out = 0
    try:
        pool = [_Worker(context, fn, retire_if) for _ in range(max(1, min(workers, total)))]
        while next_out < total:
            for slot, worker in enumerate(pool):
                if worker.index is None and tasks:
                    if not worker.process.is_alive():  # died between tasks
                        worker.close()
                        worker = pool[slot] = _Worker(context, fn, retire_if)
                    worker.start(*tasks.popleft(), timeout_s)
            busy = [w for w in pool if w.index is not None]
            due = min((w.due for w in busy), default=float("inf"))
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy],
                 None if due == float("inf") else max(due - time.monotonic(), 0.0))
            for slot, worker in enumerate(pool):
                if worker.index is None:
                    continue
                outcome = worker.collect()
                if outcome is None:
                    continue
                index, result, replace = outcome
                done[index] = result
                if replace:
                    worker.close()
                    pool[slot] = _Worker(context, fn, retire_if)
            while next_out in done:
                yield done.pop(next_out)
                next_out += 1
    finally:
        for worker in pool:
            worker.close()


class _Worker:
    """One worker process, the pipe to it, and the task it runs (``index``, None when idle)."""

    def __init__(self, context: Any, fn: Callable, retire_if: Callable[[], object] | None) -> None:
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=_serve, args=(fn, retire_if, theirs), daemon=True,
                                       name="vidlstm-pool-worker")
        self.process.start()
        theirs.close()
        self.index: int | None = None
        self.due = float("inf")
        self.timeout_s: float | None = None

    def start(self, index: int, item: object, timeout_s: float | None) -> None:
        self.conn.send((index, item))
        self.index, self.timeout_s = index, timeout_s
        self.due = time.monotonic() + timeout_s if timeout_s else float("inf")

    def collect(self) -> tuple[int, Any, bool] | None:
        """(task index, result or `Lost`, whether to replace this worker) once its task ended, else None.
        Re-raises what the task raised."""
        index = self.index
        assert index is not None
        if self.conn.poll():
            try:
                _, ok, value, retiring = self.conn.recv()
            except (EOFError, OSError):  # died mid-reply
                return index, self._died(), True
            self.index = None
            if not ok:
                raise value
            return index, value, retiring
        if not self.process.is_alive():
            return index, self._died(), True
        if time.monotonic() >= self.due:
            self.index = None
            self.process.kill()  # SIGKILL: nothing in the task can delay or refuse it
            return index, Lost(f"took longer than {self.timeout_s:g} s (timeout); its process was killed", True), True
        return None

    def _died(self) -> Lost:
        self.index = None
        self.process.join(1)
        code = self.process.exitcode
        if code is not None and code < 0:
            try:
                how = f"killed by {signal.Signals(-code).name}"
            except ValueError:
                how = f"killed by signal {-code}"
        else:
            how = f"exit code {code}"
        return Lost(f"the worker process died ({how})", False)

    def close(self) -> None:
        """Stop the process: politely when idle, killed when busy or slow to go."""
        if self.process.is_alive() and self.index is None:
            with contextlib.suppress(OSError):  # it may be exiting already (retired)
                self.conn.send(None)
            self.process.join(1)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()
        self.process.close()


def _serve(fn: Callable, retire_if: Callable[[], object] | None, conn: Connection) -> None:
    """Worker loop: run tasks until told to stop (None) or the parent is gone."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it stops the workers
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        index, item = message
        try:
            reply = (index, True, fn(item))
        except Exception as err:
            reply = (index, False, err)
        retiring = bool(retire_if and retire_if())
        try:
            conn.send((*reply, retiring))
        except Exception as err:  # an unpicklable result or exception: say what it was
            conn.send((index, False, RuntimeError(f"{type(err).__name__}: {err} (sending task {index}'s result)"),
                       retiring))
        if retiring:
            return
