"""``model``: forward+backward time of vidlstm's LSTM cell (all variants off, and typical variant sets) divided
by torch.nn.LSTM's on the same shapes (B=8, T=16, D=512, H=256), measured interleaved (median of repeats);
and frames/s of every configured encoder (conf/model/encoder) in inference and in training.
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch

from vidlstm.cli.benchmark.common import median_ms

LSTM_SHAPES = {"batch": 8, "steps": 16, "input_size": 512, "hidden_size": 256}
LSTM_VARIANT_SETS: dict[str, dict[str, object]] = {
    "custom, all variants off": {"implementation": "custom"},
    "peephole + zoneout (peephole_lstm)": {"peephole": True, "zoneout_cell": 0.1, "zoneout_hidden": 0.05,
                                           "forget_bias": 1.0},
    "variational dropout + layer norm": {"input_dropout": 0.2, "recurrent_dropout": 0.2, "layer_norm": True},
    "coupled + cell clip + proj": {"coupled_input_forget": True, "cell_clip": 3.0, "proj_size": 128},
}


def bench_lstm(repeats: int) -> dict[str, tuple[float, float]]:
    """{variant set: (ms per forward+backward, ratio to nn.LSTM)}; each set is timed alternately with the
    reference so machine noise hits both alike."""
    from vidlstm.models.recurrent import RecurrentEncoder

    b, t, d, h = LSTM_SHAPES.values()
    x = torch.randn(b, t, d, requires_grad=True)

    def step(model: torch.nn.Module) -> Callable[[], None]:
        def run() -> None:
            out, _ = model(x)
            out.sum().backward()
        return run

    reference = step(RecurrentEncoder(d, h).train())
    results = {}
    for name, options in LSTM_VARIANT_SETS.items():
        ours = step(RecurrentEncoder(d, h, **options).train())
        for warmup in (reference, ours):
            warmup()
        ref_ms, our_ms = [], []
        for _ in range(repeats):
            ref_ms.append(median_ms(reference, 1))
            our_ms.append(median_ms(ours, 1))
        results[name] = (statistics.median(our_ms), statistics.median(our_ms) / statistics.median(ref_ms))
    results["torch.nn.LSTM"] = (statistics.median(ref_ms), 1.0)
    return results


def bench_encoders(size: int, repeats: int) -> dict[str, tuple[float, float]]:
    """{encoder config: (inference frames/s, training frames/s)} for 32 frames of ``size`` pixels."""
    from omegaconf import OmegaConf

    from vidlstm.models.encoders import FrameEncoder

    conf_dir = Path(str(resources.files("vidlstm.conf") / "model" / "encoder"))
    frames = torch.randn(1, 32, 3, size, size)
    results = {}
    for path in sorted(conf_dir.glob("*.yaml")):
        settings = OmegaConf.to_container(OmegaConf.load(path))
        settings = {k: v for k, v in settings.items() if k not in ("defaults", "_target_")}
        encoder = FrameEncoder(**settings)
        with torch.no_grad():
            encoder.eval()
            infer_ms = median_ms(lambda encoder=encoder: encoder(frames), repeats)
        encoder.train()
        train_ms = median_ms(lambda encoder=encoder: encoder(frames).sum().backward(), max(3, repeats // 3))
        results[f"{path.stem} ({encoder.backbone})"] = (32e3 / infer_ms, 32e3 / train_ms)
    return results


def run(args: argparse.Namespace) -> None:
    print("model benchmark: forward+backward, B={batch} T={steps} D={input_size} H={hidden_size}, "
          "threads={threads}".format(**LSTM_SHAPES, threads=torch.get_num_threads()))
    for name, (ms, ratio) in bench_lstm(args.repeats).items():
        print(f"  {name:<38} {ms:7.2f} ms   ratio to nn.LSTM {ratio:4.2f}   (target <= 2.0)")
    print(f"encoder throughput, {args.size}x{args.size} frames:")
    for name, (infer, train) in bench_encoders(args.size, max(3, args.repeats // 3)).items():
        print(f"  {name:<38} {infer:8.1f} frames/s inference   {train:8.1f} frames/s training")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeats", type=int, default=30, help="timed repeats per measurement (median)")
    parser.add_argument("--size", type=int, default=112, help="frame side for the encoder throughput")
