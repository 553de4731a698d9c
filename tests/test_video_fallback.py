"""`open_video(backend="auto")`: a read that fails with the serving backend for a reason of its own is retried with
the next suitable backend, which then serves the file with the same frames; timeouts and frames past the end are
raised as they are; when every backend fails the error names each one's reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidlstm.data.video import BACKENDS, FrameOutOfRange, VideoDecodeError, available_backends, open_video
from vidlstm.data.video.errors import DecodeTimeout

from .video_factory import LONG_BITS, long_indexed_video, read_index

N = 60
ASKED = [50, 3, 3, 17, 59, 0]


@pytest.fixture(scope="module")
def video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return long_indexed_video(tmp_path_factory.mktemp("fallback") / "clip", "h264_bframes", N)


def serving(path: Path) -> list[str]:
    """The backends auto would use for ``path``, in order (each opens it)."""
    order = []
    for name in available_backends():
        try:
            open_video(path, name).close()
        except VideoDecodeError:
            continue
        order.append(name)
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
    first, second, *_ = serving(video)
    calls = failing(monkeypatch, first, RuntimeError("library hiccup"))
    with open_video(video) as reader:
        assert reader.backend == first
        for _ in range(3):  # the next backend keeps serving: the failing one is not tried again
            assert [read_index(f, LONG_BITS) for f in reader.get_frames(ASKED)] == ASKED
        assert reader.backend == second and len(calls) == 1
        assert reader.failures == [f"{first}: {first} failed to decode frames: library hiccup"]
        assert reader.info().backend == second and reader.num_frames == N


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
