"""`data.decode_device=cuda`: torchcodec's GPU decoder in the main process, never in DataLoader workers, with the
CPU backends for files it refuses. No GPU here: the decoder's device is recorded by a stand-in that decodes on the
CPU, which checks the plumbing (which device is asked for, which files fall back, which settings are refused);
NVDEC itself runs only in `scripts/benchmark.py gpu` on a GPU machine."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from vidlstm.data.dataset import VideoClipDataset, collate_clips
from vidlstm.data.index import VideoRecord
from vidlstm.data.sampling import UniformSegmentSampler
from vidlstm.data.video import backend_available, open_video

from .conftest import compose_config
from .video_factory import indexed_video, read_index, vfr_video

needs_torchcodec = pytest.mark.skipif(not backend_available("torchcodec"), reason="torchcodec cannot load here")


@pytest.fixture
def decoder_devices(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Devices torchcodec's VideoDecoder was asked for; it decodes on the CPU whatever was asked."""
    import torchcodec.decoders

    asked: list[str] = []
    real = torchcodec.decoders.VideoDecoder

    def recording(*args: object, device: str = "cpu", **kwargs: object) -> object:
        asked.append(device)
        return real(*args, **kwargs)

    monkeypatch.setattr(torchcodec.decoders, "VideoDecoder", recording)
    return asked


@needs_torchcodec
def test_gpu_decoding_asks_torchcodec_for_the_device_and_falls_back_to_the_cpu(
        tmp_path: Path, decoder_devices: list[str]) -> None:
    plain = indexed_video(tmp_path / "plain", "h264_bframes")
    with open_video(plain, device="cuda:1") as reader:
        assert reader.backend == "torchcodec"
        assert [read_index(f) for f in reader.get_frames([7, 3, 7])] == [7, 3, 7]
    assert decoder_devices == ["cuda:1"]
    with open_video(vfr_video(tmp_path / "vfr"), device="cuda:1") as reader:  # torchcodec refuses VFR
        assert reader.backend not in ("torchcodec", "decord")
    assert decoder_devices == ["cuda:1"]
    with pytest.raises(ValueError, match="'pyav' decodes on the CPU only"):
        open_video(plain, "pyav", device="cuda:0")


def test_workers_never_decode_on_a_gpu(tmp_path: Path) -> None:
    record = VideoRecord(str(indexed_video(tmp_path / "v", "h264_bframes")), "a")
    dataset = VideoClipDataset([record], ["a"], UniformSegmentSampler(4), lambda clip: clip, decode_device="cuda:0")
    with pytest.raises(RuntimeError, match=r"runs in the main process only .* set data\.num_workers=0"):
        next(iter(DataLoader(dataset, num_workers=1, collate_fn=collate_clips)))


@pytest.mark.parametrize(("overrides", "message"), [
    (["data.decode_device=cuda", "data.num_workers=2"], "set data.num_workers=0 \\(got 2\\)"),
    (["data.decode_device=cuda", "data.num_workers=0", "data.backend=decord"], "needs data.backend=auto or one of"),
    (["data.decode_device=gpu"], "expected 'cpu' or 'cuda', got 'gpu'"),
])
def test_settings_that_cannot_decode_on_a_gpu_are_refused(tmp_path: Path, overrides: list[str],
                                                          message: str) -> None:
    cfg = compose_config(overrides, tmp_path / "run")
    with pytest.raises(Exception, match=message):
        instantiate(cfg.data)


@needs_torchcodec
def test_gpu_decoding_needs_a_gpu_trainer(tmp_path: Path) -> None:
    cfg = compose_config(["data.decode_device=cuda", "data.num_workers=0"], tmp_path / "run")
    datamodule = instantiate(cfg.data)
    with pytest.raises(ValueError, match="needs training on a GPU"):
        datamodule._decode_device()
