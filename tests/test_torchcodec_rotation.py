"""torchcodec and rotation: a release that cannot turn frames upright is refused on rotated files (so `auto`
serves them with another backend), never allowed to return them sideways."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vidlstm.data.video import TorchCodecReader, VideoDecodeError, available_backends, open_video, stream_facts
from vidlstm.data.video import torchcodec as torchcodec_module

from .video_factory import index_frame, read_index, set_mp4_rotation, write_video

OLD = "torchcodec 0.10.0 ignores rotation metadata (needs >= 0.11); its frames would come out sideways"


@pytest.fixture
def phone_video(tmp_path: Path) -> Path:
    path = write_video(tmp_path / "phone.mp4", np.stack([index_frame(i, 48, 80) for i in range(10)]))
    set_mp4_rotation(path, 90)
    return path


def test_a_torchcodec_without_rotation_refuses_rotated_files_only(phone_video: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torchcodec_module, "_no_rotation_reason", lambda: OLD)
    assert TorchCodecReader.unsuitable_reason(stream_facts(phone_video)) == OLD
    upright = write_video(tmp_path / "upright.mp4", np.stack([index_frame(i, 48, 80) for i in range(10)]))
    assert TorchCodecReader.unsuitable_reason(stream_facts(upright)) is None


def test_auto_moves_past_a_torchcodec_that_cannot_rotate(phone_video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if "torchcodec" not in available_backends():
        pytest.skip("torchcodec cannot load here")
    monkeypatch.setattr(torchcodec_module, "_no_rotation_reason", lambda: OLD)
    with pytest.raises(VideoDecodeError, match="ignores rotation metadata"):
        open_video(phone_video, "torchcodec")
    with open_video(phone_video, order=("torchcodec", "pyav")) as reader:
        assert reader.backend == "pyav" and (reader.height, reader.width) == (80, 48)


def test_the_installed_torchcodec_turns_rotated_frames_upright(phone_video: Path) -> None:
    if "torchcodec" not in available_backends():
        pytest.skip("torchcodec cannot load here")
    assert torchcodec_module._no_rotation_reason() is None, "torchcodec >= 0.11 is the floor of the extra"
    with open_video(phone_video, "torchcodec") as reader:
        assert (reader.height, reader.width) == (80, 48)
        frames = reader.get_frames([7])
        assert frames.shape == (1, 3, 80, 48)
        assert read_index(frames[0].rot90(1, dims=(1, 2))) == 7


def test_torchcodec_disagreeing_on_the_rotation_is_refused(phone_video: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if "torchcodec" not in available_backends():
        pytest.skip("torchcodec cannot load here")
    import dataclasses

    facts = dataclasses.replace(stream_facts(phone_video), rotation=90)  # the file says 270
    with pytest.raises(VideoDecodeError, match="would turn frames by 270 degrees where the file asks for 90"):
        TorchCodecReader(phone_video, facts)
