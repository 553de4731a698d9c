"""`python scripts/benchmark.py <what>`: speed measured in one run, printed as rates and ratios.

    python scripts/benchmark.py data [--videos DIR] [--clips 256] [--num-frames 16] [--size 64]

``data``: clips/s of each raw backend decoding the same frame indices, of our dataset (decode + transforms)
with 0 and 2 DataLoader workers, and of frame-cache epochs; the ratio of our loader to the fastest raw
backend and of a cached epoch to a decoding epoch.
Without ``--videos`` the demo dataset is used (rendered into ./data/demo on first use).
"""

from __future__ import annotations

import argparse
import itertools
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vidlstm.data.cache import FrameCache
from vidlstm.data.dataset import VideoClipDataset, collate_clips
from vidlstm.data.index import ClassFolderSource
from vidlstm.data.sampling import UniformSegmentSampler
from vidlstm.data.synthetic import DemoDataset
from vidlstm.data.transforms import eval_transform
from vidlstm.data.video import BACKENDS, available_backends, open_video, stream_facts


def _rate(count: int, work: Callable[[], None]) -> float:
    started = time.perf_counter()
    work()
    return count / (time.perf_counter() - started)


def bench_data(videos: Path, clips: int, num_frames: int, size: int) -> dict[str, float]:
    records = list(itertools.islice(itertools.cycle(ClassFolderSource(videos).records()), clips))
    sampler = UniformSegmentSampler(num_frames)
    indices = {r.path: sampler(stream_facts(r.path).num_frames) for r in records}
    rates: dict[str, float] = {}
    for backend in available_backends():
        if any(BACKENDS[backend].unsuitable_reason(stream_facts(p)) for p in indices):
            print(f"  {backend:<22} skipped: unsuitable for some of these files")
            continue

        def decode(backend: str = backend) -> None:
            for record in records:
                with open_video(record.path, backend) as reader:
                    reader.get_frames(indices[record.path])

        rates[f"raw {backend}"] = _rate(len(records), decode)
    classes = sorted({r.label for r in records})
    dataset = VideoClipDataset(records, classes, sampler, eval_transform(size))
    for workers in (0, 2):
        loader = DataLoader(dataset, batch_size=8, num_workers=workers, collate_fn=collate_clips)
        rates[f"dataset {workers} workers"] = _rate(len(records), lambda loader=loader: [b for b in loader])
    with tempfile.TemporaryDirectory() as cache_dir:
        cached = VideoClipDataset(records, classes, sampler, eval_transform(size),
                                  frame_cache=FrameCache(cache_dir, size))
        loader = DataLoader(cached, batch_size=8, num_workers=0, collate_fn=collate_clips)
        rates["frame cache 1st epoch"] = _rate(len(records), lambda: [b for b in loader])
        rates["frame cache later"] = _rate(len(records), lambda: [b for b in loader])
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    data = sub.add_parser("data", help="video decoding and loading throughput")
    data.add_argument("--videos", type=Path, help="class-per-folder tree of videos (default: the demo dataset)")
    data.add_argument("--clips", type=int, default=256, help="clips decoded per measurement")
    data.add_argument("--num-frames", type=int, default=16, help="frames per clip")
    data.add_argument("--size", type=int, default=64, help="crop size of the dataset's transform")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    videos = args.videos
    if videos is None:
        demo = DemoDataset(root=str(Path(os.environ.get("VIDLSTM_ROOT", ".")) / "data" / "demo"))
        videos = Path(demo.prepare()) / "train"
    print(f"data benchmark: {args.clips} clips of {args.num_frames} frames from {videos} (cpus: {os.cpu_count()})")
    rates = bench_data(videos, args.clips, args.num_frames, args.size)
    for name, rate in rates.items():
        print(f"  {name:<22} {rate:8.1f} clips/s")
    raw = {k: v for k, v in rates.items() if k.startswith("raw ")}
    fastest = max(raw, key=raw.get)
    for workers in (0, 2):
        ratio = rates[f"dataset {workers} workers"] / raw[fastest]
        print(f"  ratio dataset({workers} workers) / {fastest}: {ratio:.2f}   (target >= 0.9)")
    speedup = rates["frame cache later"] / rates["dataset 0 workers"]
    print(f"  ratio frame-cache epoch / decoding epoch (0 workers): {speedup:.2f}   (target >= 5)")


if __name__ == "__main__":
    main()
