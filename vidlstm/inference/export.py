"""Export a checkpoint to TorchScript, ONNX or torch.export (an ExportedProgram, ``.pt2``), checked against the
PyTorch model on a real decoded clip.

``part="full"``: clips (B, T, 3, H, W) float -> logits (B, C). ``part="head"``: trunk features (B, T, D) (what
`FrameEncoder.trunk_features` gives per frame) -> logits, for pipelines that compute features elsewhere.
Batch and time axes are dynamic when the head runs torch's LSTM/GRU; vidlstm's own LSTM cell (any variant
option) steps through time in Python, so its export is fixed to the training clip length. TorchScript is
deprecated by PyTorch; ``torch.export`` is its successor (load with ``torch.export.load(path).module()``).
"""

from __future__ import annotations

import inspect
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vidlstm.inference.predictor import Predictor

FORMATS = ("torchscript", "onnx", "export")
PARTS = ("full", "head")
ONNX_OPSET = 18


class ExportParityError(RuntimeError):
    """The exported model's outputs differ from PyTorch's by more than the tolerance."""


class HeadOnly(nn.Module):
    """Trunk features (B, T, D) -> logits: the encoder's projection, then the temporal head."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        projection = net.encoder.projection
        self.encoder_projection = projection if projection is not None else nn.Identity()
        self.head = net.head

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder_projection(features))


def _time_is_dynamic(net: nn.Module) -> bool:
    recurrent = getattr(net.head, "recurrent", None)
    return recurrent is None or not recurrent.custom


def _sample_clip(predictor: Predictor, sample: str | os.PathLike | None) -> torch.Tensor:
    """One clip (1, T, 3, H, W) decoded from ``sample``, or from a freshly rendered demo video."""
    if sample is None:
        from vidlstm.data.synthetic import render_clip, write_mp4

        with tempfile.TemporaryDirectory() as scratch:
            path = Path(scratch) / "sample.mp4"
            write_mp4(path, render_clip("move_right", np.random.default_rng(0), size=64), fps=12)
            return _sample_clip(predictor, path)
    with predictor.open(sample) as reader:
        return predictor.video_clips(reader, num_clips=1)


def export_checkpoint(ckpt_path: str | os.PathLike, format: str = "torchscript", part: str = "full",
                      output: str | os.PathLike | None = None, sample: str | os.PathLike | None = None,
                      tolerance: float = 1e-4, opset: int = ONNX_OPSET) -> dict[str, Any]:
    """Write the export and return {output, format, part, dynamic_axes, max_abs_diff, ...}; raises
    `ExportParityError` when the exported model disagrees with PyTorch beyond ``tolerance``."""
    if format not in FORMATS or part not in PARTS:
        raise ValueError(f"format must be one of {FORMATS} and part one of {PARTS}, got {format!r}, {part!r}")
    predictor = Predictor.from_checkpoint(ckpt_path, device="cpu", num_clips=1)
    net = predictor.net
    clip = _sample_clip(predictor, sample)
    module: nn.Module = net if part == "full" else HeadOnly(net)
    example = clip if part == "full" else net.encoder.trunk_features(clip.flatten(0, 1)).unsqueeze(0).detach()
    example = torch.cat([example, example.flip(1)])  # batch 2: two different inputs
    module.eval()
    dynamic_time = _time_is_dynamic(net)
    suffix = {"onnx": ".onnx", "export": ".pt2"}.get(format, ".pt")
    output = Path(output) if output else Path(ckpt_path).with_name(f"{Path(ckpt_path).stem}.{part}{suffix}")
    output.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        expected = module(example)
        if format == "torchscript":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                traced = torch.jit.trace(module, example, check_trace=False)
            traced.save(str(output))
            runner = torch.jit.load(str(output))
        elif format == "export":
            runner, dynamic_time = _export_program(module, example, output, dynamic_time)
        else:
            runner = _export_onnx(module, example, output, opset, dynamic_time)
        checks = {"traced shape": example, **_other_inputs(example, dynamic_time)}
        diffs = {} if runner is None else {
            name: float(np.abs(np.asarray(runner(x)) - (expected if x is example else module(x)).numpy()).max())
            for name, x in checks.items()}
    worst = max(diffs.values()) if diffs else None
    result = {"output": str(output), "format": format, "part": part, "max_abs_diff": worst,
              "checked": sorted(diffs) or "not checked: onnxruntime is not installed (pip install -e '.[onnx]')",
              "dynamic_axes": ["batch", "time"] if dynamic_time else ["batch"],
              "input_shape": list(example.shape[1:]), "opset": opset if format == "onnx" else None}
    if worst is not None and worst > tolerance:
        raise ExportParityError(f"{output}: exported model differs from PyTorch by {worst:.3g} > {tolerance:g}")
    return result


def _other_inputs(example: torch.Tensor, dynamic_time: bool) -> dict[str, torch.Tensor]:
    """Inputs at a batch (and, when dynamic, a clip length) other than the traced one."""
    checks = {"batch 1": example[:1]}
    if dynamic_time:
        checks["shorter clip"] = example[:, : max(2, example.shape[1] // 2)]
    return checks


def _dynamic_shapes(module: nn.Module, dynamic_time: bool) -> dict[str, dict[int, Any]]:
    """Batch (and, when the head allows it, time) as dynamic dimensions of the module's input."""
    axes = {0: torch.export.Dim("batch", min=1, max=4096)}
    if dynamic_time:
        axes[1] = torch.export.Dim("time", min=2, max=8192)
    return {next(iter(inspect.signature(module.forward).parameters)): axes}


def _export_program(module: nn.Module, example: torch.Tensor, output: Path, dynamic_time: bool
                    ) -> tuple[Callable[[torch.Tensor], torch.Tensor], bool]:
    """torch.export the module to an ExportedProgram, save it, and return the reloaded program's module and
    whether its time axis is dynamic. torch.export decomposes nn.LSTM/GRU into a loop over the traced clip
    length, so where it refuses a dynamic time axis the program keeps the traced length (batch stays dynamic)."""
    try:
        program = torch.export.export(module, (example,), dynamic_shapes=_dynamic_shapes(module, dynamic_time))
    except torch._dynamo.exc.UserError as err:  # "Constraints violated (time)": the graph fixed the length
        if not dynamic_time or "time" not in str(err):
            raise
        dynamic_time = False
        program = torch.export.export(module, (example,), dynamic_shapes=_dynamic_shapes(module, False))
    torch.export.save(program, str(output))
    return torch.export.load(str(output)).module(), dynamic_time


def _export_onnx(module: nn.Module, example: torch.Tensor, output: Path, opset: int,
                 dynamic_time: bool) -> Callable[[torch.Tensor], np.ndarray] | None:
    """Export, check the file with onnx's checker, and return an onnxruntime runner (None without it)."""
    shapes = _dynamic_shapes(module, dynamic_time)
    name = next(iter(shapes))
    torch.onnx.export(module, (example,), str(output), dynamo=True, opset_version=opset, input_names=[name],
                      output_names=["logits"], dynamic_shapes=shapes)
    import onnx

    onnx.checker.check_model(str(output))
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(output), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
