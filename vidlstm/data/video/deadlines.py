"""Time limits on probing, opening and decoding: a signal for Python-level decoders, a deadline thread for
native ones, and the record of (path, backend) pairs whose native call got stuck."""

from __future__ import annotations

import contextlib
import os
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TypeVar

from vidlstm.data.video.errors import DecodeStuck, DecodeTimeout

DEFAULT_TIMEOUT_S = 60.0
T = TypeVar("T")


@contextlib.contextmanager
def time_limit(seconds: float | None, path: str | os.PathLike, what: str) -> Iterator[None]:
    """Raise `DecodeTimeout` (a `VideoDecodeError`) if the block runs longer than ``seconds``.

    Uses SIGALRM, so it applies in a process's main thread on POSIX (where DataLoader workers and probing
    processes run their work); elsewhere the block runs unlimited. A signal interrupts Python code between
    operations, which stops decoders that loop in Python (PyAV, OpenCV) mid-file. Native decoders use
    `call_with_deadline` instead.

    Limits nest: a timer an outer caller had set (another `time_limit`, or any `signal.setitimer` user) keeps
    its deadline. If it falls due inside the block its handler runs then, and on exit the outer handler and
    the rest of its time (and its interval) are restored.
    """
    usable = hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not seconds or not usable:
        yield
        return
    started = time.monotonic()
    outer_handler = signal.getsignal(signal.SIGALRM)
    outer_left, outer_interval = signal.getitimer(signal.ITIMER_REAL)
    outer_due = started + outer_left if outer_left else None
    deadline = started + seconds
    outer_fired = False

    def on_alarm(signum: int, frame: FrameType | None) -> None:
        nonlocal outer_fired
        now = time.monotonic()
        if outer_due is not None and not outer_fired and now >= outer_due - _TIMER_SLACK_S:
            outer_fired = True  # the outer deadline came first: its handler decides what happens
            signal.setitimer(signal.ITIMER_REAL, max(deadline - now, _TIMER_SLACK_S))
            _run_handler(outer_handler, signum, frame)
            return
        raise DecodeTimeout(path, _timeout_reason(what, seconds))

    signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, min(seconds, outer_left) if outer_left else seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        # None: a handler installed outside Python, which Python cannot reinstall; the default is the nearest.
        signal.signal(signal.SIGALRM, signal.SIG_DFL if outer_handler is None else outer_handler)
        if outer_due is not None:
            _restore_outer_timer(outer_due, outer_interval, outer_fired)


_TIMER_SLACK_S = 1e-3  # timers may fire this early; also the shortest delay re-armed


def _run_handler(handler: Callable | int | None, signum: int, frame: FrameType | None) -> None:
    """Run a saved SIGALRM disposition as the signal would have: call it, ignore, or take the default."""
    if callable(handler):
        handler(signum, frame)
    elif handler == signal.SIG_DFL:  # the default action for SIGALRM ends the process
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
        signal.raise_signal(signal.SIGALRM)


def _restore_outer_timer(due: float, interval: float, fired: bool) -> None:
    """Re-arm an outer ITIMER_REAL for what was left of it (its next period if it already fired in the block)."""
    now = time.monotonic()
    if not fired and now >= due - _TIMER_SLACK_S:  # fell due as the block ended, not yet delivered: deliver now
        signal.setitimer(signal.ITIMER_REAL, _TIMER_SLACK_S, interval)
        return
    if fired:
        if not interval:
            return
        due += interval * (1 + int(max(now - due, 0.0) // interval))
    signal.setitimer(signal.ITIMER_REAL, max(due - now, _TIMER_SLACK_S), interval)


def call_with_deadline(call: Callable[[], T], seconds: float | None, path: str | os.PathLike, what: str) -> T:
    """Return ``call()``, or raise `DecodeStuck` once it has run ``seconds`` without returning.

    The call runs in a helper thread while this one waits, so the deadline holds inside native code that a
    signal cannot interrupt (one decord/torchcodec batch looping forever on a file whose index lies, decord
    #373). Both libraries release the GIL while decoding, so waiting costs the caller nothing. A stuck call
    keeps its thread until the process exits; callers must stop using that reader (see `VideoReader`).
    """
    if not seconds:
        return call()
    return _deadline_runner().run(call, seconds, path, what)


class _DeadlineRunner:
    """A reusable daemon thread that runs calls for one caller thread (a new thread per clip costs ~0.4 ms)."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self.stuck = False
        self.pid = os.getpid()
        threading.Thread(target=self._serve, name="vidlstm-decode", daemon=True).start()

    def _serve(self) -> None:
        while True:
            call, outcome, finished = self._jobs.get()
            try:
                outcome["value"] = call()
            except BaseException as err:  # handed to the waiting thread
                outcome["error"] = err
            finally:
                finished.set()

    def run(self, call: Callable[[], T], seconds: float, path: str | os.PathLike, what: str) -> T:
        outcome: dict[str, object] = {}
        finished = threading.Event()
        self._jobs.put((call, outcome, finished))
        if not finished.wait(seconds):
            self.stuck = True  # this thread is lost to its call; the next caller gets a fresh runner
            _ABANDONED.append(self.pid)
            raise DecodeStuck(path, _timeout_reason(what, seconds) + "; the decoder thread was abandoned")
        if "error" in outcome:
            raise outcome["error"]  # type: ignore[misc]
        return outcome["value"]  # type: ignore[return-value]


_RUNNERS = threading.local()  # one runner per calling thread, so concurrent callers never queue behind each other


def _deadline_runner() -> _DeadlineRunner:
    runner = getattr(_RUNNERS, "runner", None)
    # Fresh after a stuck call, and in a forked child (threads do not survive fork).
    if runner is None or runner.stuck or runner.pid != os.getpid():
        runner = _RUNNERS.runner = _DeadlineRunner()
    return runner


# Process ids, one per thread abandoned to a stuck native call (a forked child inherits the list, not the threads).
_ABANDONED: list[int] = []


def abandoned_threads() -> int:
    """How many threads of this process were abandoned to native calls that outlived their deadline.

    Each may still be spinning a core: a long-lived worker process with any should be replaced."""
    return _ABANDONED.count(os.getpid())


def _timeout_reason(what: str, seconds: float) -> str:
    return f"{what} took longer than {seconds:g} s (timeout)"


# (path, backend) pairs whose native call got stuck in this process: `open_video` never uses them again.
_STUCK: set[tuple[str, str]] = set()


def _stuck_before(path: str | os.PathLike, backend: str) -> bool:
    """Whether ``backend`` got stuck on ``path`` earlier in this process."""
    return (os.fspath(path), backend) in _STUCK


def _limited(reader_type: type, call: Callable[[], T], seconds: float | None, path: str | os.PathLike,
             what: str) -> T:
    """``call()`` under the time limit that suits ``reader_type``; a stuck native call marks (path, backend)."""
    if not getattr(reader_type, "native", False):
        with time_limit(seconds, path, what):
            return call()
    try:
        return call_with_deadline(call, seconds, path, what)
    except DecodeStuck:
        _STUCK.add((os.fspath(path), reader_type.backend))
        raise
