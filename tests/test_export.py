"""Export: TorchScript and ONNX files that match the PyTorch model on a decoded clip, at other batch sizes and
clip lengths too."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vidlstm.common.checkpoint import build_net, load_checkpoint
from vidlstm.data.synthetic import write_mp4
from vidlstm.inference.export import export_checkpoint
from vidlstm.inference.predictor import Predictor

from .conftest import brightness_clip


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    write_mp4(tmp_path / "sample.mp4", brightness_clip(215, 12, 9), fps=8)
    return tmp_path / "sample.mp4"


@pytest.mark.parametrize("part", ["full", "head"])
def test_torchscript_export_matches_pytorch(brightness_checkpoint: Path, sample: Path, tmp_path: Path,
                                            part: str) -> None:
    result = export_checkpoint(brightness_checkpoint, "torchscript", part, tmp_path / f"{part}.pt", sample)
    assert result["max_abs_diff"] <= 1e-4
    assert result["checked"] == ["batch 1", "shorter clip", "traced shape"]
    assert result["dynamic_axes"] == ["batch", "time"]
    scripted = torch.jit.load(str(tmp_path / f"{part}.pt"))
    net = build_net(load_checkpoint(brightness_checkpoint))
    predictor = Predictor.from_checkpoint(brightness_checkpoint, device="cpu", num_clips=1)
    with predictor.open(sample) as reader:
        clips = predictor.video_clips(reader, num_clips=3)  # 3 clips as a batch of 3: another batch size
    inputs = clips if part == "full" else net.encoder.trunk_features(clips.flatten(0, 1)).view(3, 4, -1).detach()
    expected = net(clips)
    torch.testing.assert_close(scripted(inputs), expected, atol=1e-4, rtol=0)
    assert expected.argmax(1).tolist() == [0, 0, 0]  # "bright" is class 0


def test_onnx_export_matches_pytorch(brightness_checkpoint: Path, sample: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    result = export_checkpoint(brightness_checkpoint, "onnx", "full", tmp_path / "model.onnx", sample)
    assert result["opset"] == 18 and result["max_abs_diff"] <= 1e-4
    assert result["checked"] == ["batch 1", "shorter clip", "traced shape"]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    net = build_net(load_checkpoint(brightness_checkpoint))
    clips = torch.randn(3, 7, 3, 32, 32)  # batch 3, 7 frames: neither was traced
    got = session.run(None, {session.get_inputs()[0].name: clips.numpy()})[0]
    assert np.abs(got - net(clips).detach().numpy()).max() <= 1e-4


def test_export_rejects_unknown_format(brightness_checkpoint: Path) -> None:
    with pytest.raises(ValueError, match="format must be one of"):
        export_checkpoint(brightness_checkpoint, "tflite")


def test_torch_export_program_matches_pytorch(brightness_checkpoint: Path, sample: Path, tmp_path: Path) -> None:
    result = export_checkpoint(brightness_checkpoint, "export", "full", tmp_path / "model.pt2", sample)
    assert result["output"].endswith("model.pt2") and result["max_abs_diff"] <= 1e-4
    assert "batch 1" in result["checked"] and "batch" in result["dynamic_axes"]
    program = torch.export.load(str(tmp_path / "model.pt2"))
    assert isinstance(program, torch.export.ExportedProgram)
    net = build_net(load_checkpoint(brightness_checkpoint))
    clips = torch.randn(3, 4, 3, 32, 32)  # batch 3: not the traced batch
    torch.testing.assert_close(program.module()(clips), net(clips), atol=1e-4, rtol=0)


CUSTOM_HEADS = {  # heads that run vidlstm's own LSTM cell (stepping through time in Python)
    "peephole_lstm": ["model/head=peephole_lstm"],
    "layer_norm_coupled": ["model.head.layer_norm=true", "model.head.coupled_input_forget=true",
                           "model.head.cell_clip=3.0", "model.head.gate_activation=hard_sigmoid"],
}


@pytest.mark.slow
@pytest.mark.parametrize("head", sorted(CUSTOM_HEADS))
@pytest.mark.parametrize("format", ["export", "torchscript", "onnx"])
def test_custom_cell_heads_export_in_every_format(head: str, format: str, sample: Path, tmp_path: Path) -> None:
    if format == "onnx":
        pytest.importorskip("onnxruntime")
    from vidlstm.cli.benchmark.stream import random_checkpoint

    ckpt = random_checkpoint(tmp_path / f"{head}.ckpt", ["data.image_size=32", "data.num_frames=4",
                                                          "model.head.hidden_size=16", *CUSTOM_HEADS[head]],
                             class_names=["bright", "dark"])
    net = build_net(load_checkpoint(ckpt))
    assert net.head.recurrent.custom, "the head must run vidlstm's own cell"
    result = export_checkpoint(ckpt, format, "full", tmp_path / f"{head}.{format}", sample)
    assert result["max_abs_diff"] <= 1e-4 and result["dynamic_axes"] == ["batch"]  # time fixed: a Python loop
    assert result["checked"] == ["batch 1", "traced shape"]
