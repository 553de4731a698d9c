"""Deadlines: `time_limit` nests without cancelling an outer caller's timer, and decord's size look (a native
decode of frame 0, on every probe) is under the same deadline as clip decoding."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from vidlstm.data.synthetic import write_mp4
from vidlstm.data.video import DecodeStuck, VideoDecodeError, backend_available, open_video, time_limit


class OuterAlarm(Exception):
    pass


@pytest.fixture
def outer_timer():
    """An outer caller's SIGALRM handler that raises `OuterAlarm`; no timer is left behind afterwards."""
    fired = []

    def handler(signum: int, frame: object) -> None:
        fired.append(time.monotonic())
        raise OuterAlarm

    previous = signal.signal(signal.SIGALRM, handler)
    yield fired
    signal.setitimer(signal.ITIMER_REAL, 0)
    signal.signal(signal.SIGALRM, previous)


def test_an_inner_limit_fires_and_the_outer_timer_still_fires_on_time(outer_timer: list[float]) -> None:
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, 1.0)
    with pytest.raises(VideoDecodeError, match=r"inner took longer than 0\.2 s"), time_limit(0.2, "x.mp4", "inner"):
        time.sleep(5)
    assert signal.getsignal(signal.SIGALRM) is not None and 0.5 < signal.getitimer(signal.ITIMER_REAL)[0] <= 0.8
    with pytest.raises(OuterAlarm):
        time.sleep(5)
    assert 0.9 < outer_timer[0] - started < 1.5, "the outer deadline kept its time"


def test_an_earlier_outer_deadline_fires_inside_the_inner_block(outer_timer: list[float]) -> None:
    started = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    with pytest.raises(OuterAlarm), time_limit(5, "x.mp4", "inner"):
        time.sleep(5)
    assert 0.15 < outer_timer[0] - started < 1.0
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0, "a one-shot outer timer that fired is not re-armed"


def test_a_finished_inner_block_restores_the_outer_remainder_and_handler(outer_timer: list[float]) -> None:
    signal.setitimer(signal.ITIMER_REAL, 0.6)
    handler = signal.getsignal(signal.SIGALRM)
    with time_limit(5, "x.mp4", "inner"):
        time.sleep(0.1)
    assert signal.getsignal(signal.SIGALRM) is handler
    assert 0.3 < signal.getitimer(signal.ITIMER_REAL)[0] <= 0.5


def test_nested_limits_each_keep_their_own_deadline() -> None:
    with pytest.raises(VideoDecodeError, match=r"outer took longer than 0\.4 s"), time_limit(0.4, "x.mp4", "outer"):
        with time_limit(5, "x.mp4", "inner"):
            time.sleep(0.1)
        with pytest.raises(VideoDecodeError, match="innermost took longer"), time_limit(0.1, "x.mp4", "innermost"):
            time.sleep(5)
        time.sleep(5)  # the outer limit still holds after both inner blocks
    assert signal.getitimer(signal.ITIMER_REAL)[0] == 0 and signal.getsignal(signal.SIGALRM) == signal.SIG_DFL


def test_a_periodic_outer_timer_keeps_its_period(outer_timer: list[float]) -> None:
    signal.setitimer(signal.ITIMER_REAL, 0.1, 0.1)
    with pytest.raises(OuterAlarm), time_limit(5, "x.mp4", "inner"):
        time.sleep(5)
    left, interval = signal.getitimer(signal.ITIMER_REAL)
    assert interval == pytest.approx(0.1) and 0 < left <= 0.1


@pytest.fixture(scope="module")
def tiny_mp4(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("videos") / "tiny.mp4"
    write_mp4(path, np.random.default_rng(0).integers(0, 255, (8, 32, 48, 3)).astype(np.uint8), fps=10)
    return path


def test_decord_size_look_has_a_deadline(tiny_mp4: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """decord learns the frame size only by decoding frame 0 natively: a file that loops there must fail at
    the deadline (the reader is retired for that file), not hang the probe."""
    if not backend_available("decord"):
        pytest.skip("decord is not installed here")
    from vidlstm.data.video import DecordReader, deadlines

    monkeypatch.setattr(deadlines, "_STUCK", set())
    with open_video(tiny_mp4, "decord", timeout_s=5) as reader:
        assert (reader.height, reader.width) == (32, 48)
    release = threading.Event()
    monkeypatch.setattr(DecordReader, "_first_frame_size", lambda self: release.wait(60) and (0, 0))
    try:
        reader = open_video(tiny_mp4, "decord", timeout_s=0.5)
        started = time.monotonic()
        with pytest.raises(DecodeStuck, match=r"decoding frame 0 with decord took longer than 0\.5 s"):
            reader.info()
        assert time.monotonic() - started < 5
        with pytest.raises(VideoDecodeError, match="still stuck"):
            reader.get_frames([0])
    finally:
        release.set()
