"""`open_video(backend="auto")`: a read that fails with the serving backend for a reason of its own is retried with
the next suitable backend, which then serves the file with the same frames; timeouts and frames past the end are
raised as they are; when every backend fails the error names each one's reason."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from vidlstm.data.video import (
    BACKENDS,
    FrameOutOfRange,
    VideoDecodeError,
    VideoReader,
    auto,
    available_backends,
    open_video,
    probe,
)
from vidlstm.data.video.errors import DecodeTimeout

from .video_factory import LONG_BITS, long_indexed_video, read_index

N = 60
ASKED = [50, 3, 3, 17, 59, 0]


@pytest.fixture(autouse=True)
def fresh_process_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts as a fresh process would: no backend has failed on any file yet."""
    monkeypatch.setattr(auto, "_FAILED_READS", {})


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return long_indexed_video(tmp_path_factory.mktemp("fallback") / "clip", "h264_bframes", N)


def serving(path: Path, at_least: int = 1) -> list[str]:
    """The backends auto would use for ``path``, in order (each opens it); skips with fewer than ``at_least``."""
    order = []
    for name in available_backends():
        try:
            open_video(path, name).close()
        except VideoDecodeError:
            continue
        order.append(name)
    if len(order) < at_least:
        pytest.skip(f"needs {at_least} backends that open the file, has {order}")
    return order


def failing(monkeypatch: pytest.MonkeyPatch, name: str, error: Exception) -> list[int]:
    """Make backend ``name`` raise ``error`` on every read; the list records each failed read."""
    calls: list[int] = []

    def broken(self: object, indices: list[int]) -> None:
        calls.append(len(indices))
        raise error

    monkeypatch.setattr(BACKENDS[name], "_decode_sorted_unique", broken)
    return calls


def test_a_backend_that_fails_a_read_hands_the_file_to_the_next(video: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    first, second, *_ = serving(video, at_least=2)
    calls = failing(monkeypatch, first, RuntimeError("library hiccup"))
    with open_video(video) as reader:
        assert reader.backend == first
        for _ in range(3):  # the next backend keeps serving: the failing one is not tried again
            assert [read_index(f, LONG_BITS) for f in reader.get_frames(ASKED)] == ASKED
        assert reader.backend == second and len(calls) == 1
        assert reader.failures == [f"{first}: {first} failed to decode frames: library hiccup"]
        assert reader.info().backend == second and reader.num_frames == N
    with open_video(video) as later:  # a later reader in this process starts with the backend that worked
        assert later.backend == second
        assert [read_index(f, LONG_BITS) for f in later.get_frames(ASKED)] == ASKED and len(calls) == 1


def test_the_retry_gets_what_is_left_of_the_calls_time_limit(video: Path, monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    first, second, *_ = serving(video, at_least=2)
    limit, spent = 5.0, 1.0

    def slow_failure(self: object, indices: list[int]) -> None:
        time.sleep(spent)
        raise RuntimeError("gave up")

    granted = []
    decode = BACKENDS[second]._decode_sorted_unique

    def recording(self: VideoReader, indices: list[int]) -> object:
        granted.append(self.timeout_s)
        return decode(self, indices)

    monkeypatch.setattr(BACKENDS[first], "_decode_sorted_unique", slow_failure)
    monkeypatch.setattr(BACKENDS[second], "_decode_sorted_unique", recording)
    with open_video(video, timeout_s=limit) as reader:
        assert [read_index(f, LONG_BITS) for f in reader.get_frames(ASKED)] == ASKED
        assert 0 < granted[0] <= limit - spent
        reader.get_frames([1])
        assert granted[1] == limit == reader.timeout_s  # later calls have the whole limit again


def test_the_frame_size_lookup_falls_back_too(video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """decord learns the size by decoding frame 0; a failure there must not cost the file at probe time."""
    first, second, *_ = serving(video, at_least=2)

    def no_size(self: VideoReader) -> tuple[int, int]:
        raise VideoDecodeError(self.path, "cannot decode frame 0")

    monkeypatch.setattr(BACKENDS[first], "coded_size", property(no_size))
    assert probe(video).backend == second and (probe(video).height, probe(video).width) == (64, 64)


@pytest.mark.parametrize("error", [DecodeTimeout("x", "decoding took longer than 1 s (timeout)"),
                                   FrameOutOfRange("x", "frame 70 requested")], ids=["timeout", "out_of_range"])
def test_timeouts_and_frames_past_the_end_are_not_retried(video: Path, monkeypatch: pytest.MonkeyPatch,
                                                          error: VideoDecodeError) -> None:
    first = serving(video)[0]
    failing(monkeypatch, first, error)
    with open_video(video) as reader, pytest.raises(type(error)):
        reader.get_frames(ASKED)
    assert reader.backend == first and not reader.failures
    with open_video(video) as reader, pytest.raises(FrameOutOfRange, match=f"the video has {N} frames"):
        reader.get_frames([N])  # checked before any backend is asked


def test_when_every_backend_fails_the_error_names_each(video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    names = serving(video)
    for name in names:
        failing(monkeypatch, name, RuntimeError(f"{name} is broken"))
    with open_video(video) as reader, pytest.raises(VideoDecodeError) as raised:
        reader.get_frames(ASKED)
    for name in names:
        assert f"{name}: {name} failed to decode frames: {name} is broken" in raised.value.reason
    assert str(video) == raised.value.path
    with pytest.raises(VideoDecodeError) as again:  # the same answer, without decoding again
        reader.get_frames(ASKED)
    assert again.value.reason == raised.value.reason
