"""``predict``: how well a folder run overlaps decoding (DataLoader workers) with the model (main process).

Measured in one run, ``--repeats`` times in a rotating order: decoding only (the same workers, no model), the
model only (on clips decoded beforehand), and the folder run itself (`predict_folder`), each with its wall and
CPU time (this process and its workers). Two ratios, 1.0 = perfect overlap:

- ``max(decode, model) / run``: the bound when the model has a device of its own (a GPU): the run can be no
  faster than the slower side.
- on a CPU-only machine decoding and the model share the cores, so the bound is their CPU work spread over every
  core: ``(decode CPU + model CPU) / (cores x run)``, the share of the run's core time spent on useful work.
  This is the one the target (>= 0.85) applies to there; the first ratio cannot reach it, since both sides
  need the same cores.

Without ``--ckpt`` a randomly initialised demo model is used (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vidlstm.cli.benchmark.common import demo_checkpoint, demo_split, timed


def bench_predict(ckpt: Path, videos: Path, workers: int, batch_size: int, repeats: int = 3
                  ) -> dict[str, list[tuple[float, float]]]:
    """{"decode" | "model" | "run": [(wall s, CPU s) per repeat]} plus {"videos": [(count, 0)]}."""
    from vidlstm.inference.batch import _Clips, gather_inputs, predict_folder
    from vidlstm.inference.predictor import Predictor

    predictor = Predictor.from_checkpoint(ckpt, device="cpu")
    paths = gather_inputs(videos)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) - workers))  # as predict_folder does on a CPU

    def decode_only() -> list:
        loader = DataLoader(_Clips(predictor, paths, None, None), batch_size=batch_size, num_workers=workers,
                            collate_fn=list)
        return [unit for units in loader for unit in units]

    clips = [u.clips for u in decode_only() if u.clips is not None]

    def model_only() -> None:
        for i in range(0, len(clips), batch_size):
            predictor.probabilities(torch.stack(clips[i: i + batch_size]))

    scratch = tempfile.TemporaryDirectory()

    def folder_run() -> None:
        predict_folder(predictor, videos, Path(scratch.name) / "p.csv", batch_size, workers, resume=False)

    runs: dict[str, Callable[[], object]] = {"decode": decode_only, "model": model_only, "run": folder_run}
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
    with scratch:
        for repeat in range(repeats):
            order = list(runs)[repeat % 3:] + list(runs)[: repeat % 3]
            for name in order:
                results[name].append(timed(runs[name]))
    results["videos"] = [(float(len(paths)), 0.0)]
    return results


def overlaps(results: dict[str, list[tuple[float, float]]], cores: int) -> list[tuple[float, float]]:
    """Per repeat: (max(decode, model) / run, (decode CPU + model CPU) / (cores x run)) from `bench_predict`."""
    return [(max(d[0], m[0]) / r[0], (d[1] + m[1]) / (cores * r[0]))
            for d, m, r in zip(results["decode"], results["model"], results["run"], strict=True)]


def run(args: argparse.Namespace) -> None:
    videos = args.videos or demo_split("test")
    with tempfile.TemporaryDirectory() as scratch:
        ckpt = args.ckpt or demo_checkpoint(Path(scratch) / "demo.ckpt")
        results = bench_predict(ckpt, videos, args.workers, args.batch_size, args.repeats)
    n = int(results["videos"][0][0])
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    print(f"predict benchmark: {n} videos from {videos}, {args.workers} workers, batch {args.batch_size}, "
          f"{args.repeats} repeats in rotating order (cores: {cores})")
    for name, label in (("decode", "decoding only"), ("model", "model only"), ("run", "folder run")):
        walls = [w for w, _ in results[name]]
        cpus = [c for _, c in results[name]]
        print(f"  {label:<14} {statistics.median(walls):7.2f} s wall  {statistics.median(cpus):7.2f} s CPU   "
              f"{n / statistics.median(walls):7.1f} videos/s   (walls: {', '.join(f'{w:.2f}' for w in walls)})")
    ratios = overlaps(results, cores)
    device_bound = [a for a, _ in ratios]
    core_bound = [b for _, b in ratios]
    print(f"  overlap max(decode, model) / run:              {statistics.median(device_bound):.2f}   "
          f"(each: {', '.join(f'{r:.2f}' for r in device_bound)}; the bound when the model has its own device)")
    print(f"  overlap (decode + model CPU) / (cores x run):  {statistics.median(core_bound):.2f}   "
          f"(each: {', '.join(f'{r:.2f}' for r in core_bound)}; target >= 0.85 on a CPU-only machine)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", type=Path, help="checkpoint (default: a random-weights demo model)")
    parser.add_argument("--videos", type=Path, help="folder of videos (default: the demo's test split)")
    parser.add_argument("--workers", type=int, default=2, help="decoding workers")
    parser.add_argument("--batch-size", type=int, default=8, help="videos per model call")
    parser.add_argument("--repeats", type=int, default=3, help="measurements of each part, in rotating order")
