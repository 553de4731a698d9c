"""``predict``: videos/s of a folder run (decoding in workers overlapped with the model) against the larger of
pure decoding time and pure model time measured in the same run; their ratio is the overlap (1.0 = perfect).
Without ``--ckpt`` a randomly initialised demo model is used (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vidlstm.cli.benchmark.common import demo_checkpoint, demo_split


def bench_predict(ckpt: Path, videos: Path, workers: int, batch_size: int) -> dict[str, float]:
    from vidlstm.inference.batch import _Clips, gather_inputs, predict_folder
    from vidlstm.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    paths = gather_inputs(videos)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))  # as predict_folder does on a CPU

    def decode_only() -> list:
        loader = DataLoader(_Clips(predictor, paths, None, None), batch_size=batch_size, num_workers=workers,
                            collate_fn=list)
        return [unit for units in loader for unit in units]

    started = time.perf_counter()
    units = decode_only()
    decode_s = time.perf_counter() - started
    clips = [u.clips for u in units if u.clips is not None]
    started = time.perf_counter()
    for i in range(0, len(clips), batch_size):
        predictor.probabilities(torch.stack(clips[i: i + batch_size]))
    model_s = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as scratch:
        stats = predict_folder(predictor, videos, Path(scratch) / "p.csv", batch_size, workers, resume=False)
    return {"videos": len(paths), "decode_s": decode_s, "model_s": model_s, "run_s": stats["seconds"]}


def run(args: argparse.Namespace) -> None:
    videos = args.videos or demo_split("test")
    with tempfile.TemporaryDirectory() as scratch:
        ckpt = args.ckpt or demo_checkpoint(Path(scratch) / "demo.ckpt")
        result = bench_predict(ckpt, videos, args.workers, args.batch_size)
    n = result["videos"]
    bound = max(result["decode_s"], result["model_s"])
    print(f"predict benchmark: {n} videos from {videos}, {args.workers} workers, batch {args.batch_size} "
          f"(cpus: {os.cpu_count()})")
    print(f"  decoding only   {result['decode_s']:7.2f} s   {n / result['decode_s']:7.1f} videos/s")
    print(f"  model only      {result['model_s']:7.2f} s   {n / result['model_s']:7.1f} videos/s")
    print(f"  folder run      {result['run_s']:7.2f} s   {n / result['run_s']:7.1f} videos/s")
    print(f"  overlap ratio max(decode, model) / run: {bound / result['run_s']:.2f}   (target >= 0.85)")
    print(f"  speed-up over decoding then predicting: {(result['decode_s'] + result['model_s']) / result['run_s']:.2f}"
          f"   (on a CPU-only machine decoding and the model share the same cores)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", type=Path, help="checkpoint (default: a random-weights demo model)")
    parser.add_argument("--videos", type=Path, help="folder of videos (default: the demo's test split)")
    parser.add_argument("--workers", type=int, default=2, help="decoding workers")
    parser.add_argument("--batch-size", type=int, default=8, help="videos per model call")
