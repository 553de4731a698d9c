"""``data``: clips/s of each raw backend decoding the same frame indices, and of frame-cache epochs.
The loader check runs our dataset in a DataLoader with N workers (N = 0 and 2) against N plain processes doing
the same decoding (same files, same frame indices, same backend choice, one torch thread per worker process,
the same round-robin share of batches per process): ratio loader / raw decoding (target >= 0.9), and loader /
(raw decoding + the same transform), which leaves only the loader's own cost. The loader is the one training
uses (``data.normalize_on_device=true``, reused batch memory): it hands over uint8 clips at the model's size and
the float conversion + normalisation run on the training device; the fully normalising loader is printed beside
it. With workers it is measured twice: started for each epoch against raw processes started for each run, and
with persistent workers (training's default) against raw processes that also live across runs; and an epoch with
nothing to decode shows what starting and stopping the workers costs against plain processes; the raw decoding
with workers is measured twice, and the ratio of the two shows how far this machine's noise moves a ratio. Each
ratio is the median over repeats of the ratio of two neighbouring runs (the pair back to back, which goes first
alternating, pairs in a random order, a short pause before each run): on a shared machine a run's speed drifts by
10-25% within a minute, more than the loader costs, and a pair of neighbours shares the drift.
The seek check reads a 16-frame clip (every 2nd frame) from the first and from the last 10% of a 10-minute 480p
H.264 video (x264 ultrafast, a keyframe every 2 s; generated once into ./data/benchmark), each from a freshly
opened reader as a dataset does, interleaved, and prints per backend the median cost of each and late / early
(target <= 2).
Without ``--videos`` the demo dataset is used (rendered into ./data/demo on first use).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import itertools
import math
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vidlstm.cli.benchmark.common import demo_split, timed
from vidlstm.data.cache import FrameCache
from vidlstm.data.dataset import VideoClipDataset, collate_clips
from vidlstm.data.index import ClassFolderSource, segment_frames
from vidlstm.data.sampling import UniformSegmentSampler
from vidlstm.data.transforms import eval_transform
from vidlstm.data.video import BACKENDS, available_backends, open_video, stream_facts

EMPTY = "empty epoch,"  # names of the runs that only start and stop their processes
AGAIN = "raw decoding again"  # name of the second measurement of the same raw decoding (this machine's noise)


def _decode_share(share: list[tuple[str, list[int]]], backend: str, transform: Callable | None) -> None:
    """What one loader worker decodes, without the loader: open, read the same indices, (transform), close."""
    torch.set_num_threads(1)  # as DataLoader does in each worker
    for path, indices in share:
        with open_video(path, backend) as reader:
            frames = reader.get_frames(indices)
        if transform is not None:
            transform(frames)


def _in_processes(shares: list[list[tuple[str, list[int]]]], backend: str, transform: Callable | None) -> None:
    """Run each share in a process of its own, started as DataLoader starts its workers (or here when none)."""
    if len(shares) == 1:
        _decode_share(shares[0], backend, transform)
        return
    context = multiprocessing.get_context()  # DataLoader's default: the platform's start method
    processes = [context.Process(target=_decode_share, args=(share, backend, transform)) for share in shares]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
        if process.exitcode:
            raise RuntimeError(f"a raw decoding process failed (exit code {process.exitcode})")


class _PersistentProcesses:
    """``count`` raw decoding processes that live across runs, as persistent DataLoader workers do; each run
    hands process i share i."""

    def __init__(self, count: int) -> None:
        context = multiprocessing.get_context()
        self.pipes = [context.Pipe() for _ in range(count)]
        self.processes = [context.Process(target=_serve_shares, args=(child,), daemon=True)
                          for _, child in self.pipes]
        for process in self.processes:
            process.start()

    def run(self, shares: list[list[tuple[str, list[int]]]], backend: str) -> None:
        for (parent, _), share in zip(self.pipes, shares, strict=True):
            parent.send((share, backend))
        replies = [parent.recv() for parent, _ in self.pipes]
        failed = [reply for reply in replies if reply != "done"]
        if failed:
            raise RuntimeError(f"a persistent raw decoding process {failed[0]}")

    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def __enter__(self) -> _PersistentProcesses:
        return self

    def __exit__(self, *exc: object) -> None:
        for parent, _ in self.pipes:
            parent.send(None)
        for process in self.processes:
            process.join()


def _serve_shares(pipe: Connection) -> None:
    while (job := pipe.recv()) is not None:
        try:
            _decode_share(*job, None)
            pipe.send("done")
        except Exception as err:  # reported to the parent, which raises
            pipe.send(f"failed: {err}")


def _worker_pids(loader: DataLoader) -> list[int]:
    """The processes of a persistent loader's workers (DataLoader keeps its iterator and its workers)."""
    iterator = getattr(loader, "_iterator", None)
    return [w.pid for w in getattr(iterator, "_workers", [])]


def _stop_workers(loader: DataLoader) -> None:
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None:
        iterator._shutdown_workers()


def _shares(work: list[tuple[str, list[int]]], workers: int, batch_size: int) -> list[list[tuple[str, list[int]]]]:
    """Split ``work`` as DataLoader does: batch b goes to worker b % workers (everything to one when none)."""
    batches = [work[i: i + batch_size] for i in range(0, len(work), batch_size)]
    count = max(1, workers)
    return [[item for batch in batches[w::count] for item in batch] for w in range(count)]


def _consume(loader: DataLoader) -> None:
    """Take every batch and drop it, as a training loop does (the raw decoding keeps no frames either)."""
    for _ in loader:
        pass


Pair = tuple[str, str]  # (a loader run, the raw run it is compared with)
Measured = tuple[float, float, list[float]]  # clips/s, CPU ms per clip (medians), wall seconds of each run
Timings = list[tuple[float, float]]  # (wall, CPU) seconds of each run, or their ratios in a pair


def bench_loader(videos: Path, clips: int, num_frames: int, size: int, repeats: int, batch_size: int = 8,
                 backend: str = "auto") -> tuple[dict[str, Measured], dict[Pair, Timings]]:
    """({name: (clips/s, CPU ms per clip, wall seconds of each run)}, {(loader run, raw run): [(raw wall / loader
    wall, raw CPU / loader CPU) of each repeat]}).

    Raw decoding per backend, once; for N = 0 and 2 workers our DataLoader against N raw decoding processes, the
    same plus the transform, and (with workers) the same raw decoding again, an epoch with nothing to decode, and
    persistent workers against persistent raw processes; frame-cache epochs. Each pair runs back to back, in
    alternating order, pairs in a random order, ``repeats`` times: a ratio of two neighbouring runs is not moved
    by the slow drifts of a shared machine, which move the median of each side by more than the loader costs."""
    records = list(itertools.islice(itertools.cycle(ClassFolderSource(videos).records()), clips))
    sampler = UniformSegmentSampler(num_frames)
    work = []
    for record in records:  # the indices the dataset will ask for (eval sampler: no randomness)
        with open_video(record.path, backend) as reader:
            first, stop = segment_frames(record, reader.num_frames, reader.fps)
            work.append((record.path, [first + i for i in sampler(stop - first)]))

    def measured(runs: list[tuple[float, float]]) -> Measured:
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        return len(work) / wall, cpu * 1e3 / len(work), [r[0] for r in runs]

    results: dict[str, Measured] = {}
    paired: dict[Pair, Timings] = {}
    for name in available_backends():
        if any(BACKENDS[name].unsuitable_reason(stream_facts(p)) for p, _ in work):
            print(f"  {name:<22} skipped: unsuitable for some of these files")
            continue
        results[f"raw {name}"] = measured([timed(lambda name=name: _decode_share(work, name, None))])
    classes = sorted({r.label for r in records})
    transform = eval_transform(size)
    in_loader = transform.split()[0]  # what training's loader applies (data.normalize_on_device=true)
    dataset = VideoClipDataset(records, classes, sampler, in_loader, backend=backend)
    normalising = VideoClipDataset(records, classes, sampler, transform, backend=backend)
    for workers in (0, 2):
        shares = _shares(work, workers, batch_size)
        raw, loader = f"raw decoding x{max(1, workers)}", f"loader {workers} workers"
        uint8_loader, float_loader = (DataLoader(d, batch_size=batch_size, num_workers=workers,
                                                 collate_fn=collate_clips) for d in (dataset, normalising))
        runs: dict[str, Callable[[], object]] = {
            raw: lambda shares=shares: _in_processes(shares, backend, None),
            f"raw + transform x{max(1, workers)}": lambda shares=shares: _in_processes(shares, backend, in_loader),
            loader: lambda loader=uint8_loader: _consume(loader),
            f"{loader}, float": lambda loader=float_loader: _consume(loader),
        }
        pairs = [(loader, raw), (loader, f"raw + transform x{max(1, workers)}"), (f"{loader}, float", raw)]
        if workers:
            # The same raw decoding measured twice: how far two runs of one piece of work part on this machine
            runs[f"{AGAIN} x{workers}"] = lambda shares=shares: _in_processes(shares, backend, None)
            # What an epoch with nothing to decode costs: starting and stopping the processes
            empty = DataLoader(VideoClipDataset([], classes, sampler, in_loader, backend=backend),
                               batch_size=batch_size, num_workers=workers, collate_fn=collate_clips)
            runs[f"{EMPTY} raw x{workers}"] = lambda nothing=[[]] * workers: _in_processes(nothing, backend, None)
            runs[f"{EMPTY} {loader}"] = lambda loader=empty: _consume(loader)
            pairs += [(f"{AGAIN} x{workers}", raw), (f"{EMPTY} {loader}", f"{EMPTY} raw x{workers}"),
                      (f"{loader} persistent", f"{raw} persistent")]
        living: dict[str, Callable[[], list[int]]] = {}  # runs whose processes outlive them: their pids
        with contextlib.ExitStack() as persistent:
            if workers:
                pool = persistent.enter_context(_PersistentProcesses(workers))
                kept = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_clips,
                                  persistent_workers=True)
                persistent.callback(_stop_workers, kept)
                runs[f"{raw} persistent"] = lambda s=shares, pool=pool: pool.run(s, backend)
                runs[f"{loader} persistent"] = lambda loader=kept: _consume(loader)
                living = {f"{raw} persistent": pool.pids,
                          f"{loader} persistent": lambda loader=kept: _worker_pids(loader)}
                for name in living:
                    runs[name]()  # started once, as training's first epoch starts them
            times, ratios = _paired_runs(runs, pairs, living, repeats, seed=workers)
        results.update({name: measured(t) for name, t in times.items()})
        paired.update(ratios)
    with tempfile.TemporaryDirectory() as cache_dir:
        cached = VideoClipDataset(records, classes, sampler, in_loader, frame_cache=FrameCache(cache_dir, size))
        loader = DataLoader(cached, batch_size=batch_size, num_workers=0, collate_fn=collate_clips)
        results["frame cache 1st epoch"] = measured([timed(lambda: _consume(loader))])
        results["frame cache later"] = measured([timed(lambda: _consume(loader))])
    return results, paired


def _paired_runs(runs: dict[str, Callable[[], object]], pairs: list[Pair], living: dict[str, Callable[[], list[int]]],
                 repeats: int, seed: int) -> tuple[dict[str, Timings], dict[Pair, Timings]]:
    """({run: [(wall, CPU seconds) of each time it ran]}, {pair: [(b wall / a wall, b CPU / a CPU) of each
    repeat]}): every repeat runs each pair's two runs back to back, which goes first alternating, the pairs in a
    random order; each run starts after a collection and a short pause (the previous run's processes gone)."""
    order = random.Random(seed)
    times: dict[str, Timings] = {name: [] for pair in pairs for name in pair}
    ratios: dict[Pair, Timings] = {pair: [] for pair in pairs}
    for repeat in range(repeats):
        for k in order.sample(range(len(pairs)), len(pairs)):
            pair, this_time = pairs[k], {}
            for name in pair if (repeat + k) % 2 else pair[::-1]:
                gc.collect()
                time.sleep(SETTLE_S)
                this_time[name] = timed(runs[name], living.get(name, list)())
                times[name].append(this_time[name])
            (wall_a, cpu_a), (wall_b, cpu_b) = (this_time[name] for name in pair)
            # CPU time counts in clock ticks (10 ms): an epoch of nothing to decode can read 0
            ratios[pair].append((wall_b / wall_a, cpu_b / cpu_a if cpu_a else math.nan))
    return times, ratios


SETTLE_S = 0.1  # pause before each run


LONG_VIDEO_FPS, LONG_VIDEO_KEYINT, LONG_VIDEO_SIZE = 25, 50, (854, 480)  # a keyframe every 2 s


def long_video(folder: Path, minutes: float = 10) -> Path:
    """A ``minutes``-long 480p H.264 video (x264 ultrafast, a keyframe every 2 s, FFmpeg's moving test pattern),
    generated once into ``folder`` and reused."""
    import av

    path = folder / f"long_{LONG_VIDEO_SIZE[1]}p_{minutes:g}min.mp4"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    width, height = LONG_VIDEO_SIZE
    print(f"  generating {path} (once) ...", flush=True)
    source = f"testsrc2=size={width}x{height}:rate={LONG_VIDEO_FPS}:duration={minutes * 60:g}"
    with av.open(source, format="lavfi") as pattern, av.open(str(partial), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=LONG_VIDEO_FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "ultrafast", "g": str(LONG_VIDEO_KEYINT), "crf": "23"}
        for frame in pattern.decode(video=0):
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    partial.rename(path)
    return path


def bench_seek(video: Path, repeats: int, clip_frames: int = 16, stride: int = 2) -> dict[str, dict[str, float]]:
    """{backend: median ms of an early and a late clip (read only, and open + read), and late / early}: a clip
    of ``clip_frames`` frames ``stride`` apart, starting at random in the first and in the last 10% of
    ``video``; each read from a freshly opened reader, early and late alternating (who goes first too)."""
    total = stream_facts(video).num_frames
    span = (clip_frames - 1) * stride + 1
    tenth = total // 10
    results = {}
    for backend in available_backends():
        reason = BACKENDS[backend].unsuitable_reason(stream_facts(video))
        if reason:
            print(f"  {backend:<12} skipped: {reason}")
            continue
        rng = random.Random(0)
        timings: dict[str, list[float]] = {f"{part} {where}": [] for part in ("read", "open+read")
                                           for where in ("early", "late")}

        def clip(start: int, where: str, backend: str = backend, timings: dict = timings) -> None:
            started = time.perf_counter()
            with open_video(video, backend) as reader:
                opened = time.perf_counter()
                reader.get_frames(range(start, start + span, stride))
                done = time.perf_counter()
            timings[f"read {where}"].append((done - opened) * 1e3)
            timings[f"open+read {where}"].append((done - started) * 1e3)

        clip(0, "early")  # warm-up: per-process caches (stream facts, packet tables), code paths
        clip(total - span, "late")
        for timing in timings.values():
            timing.clear()
        for repeat in range(repeats):
            early, late = rng.randrange(0, tenth - span), rng.randrange(total - tenth, total - span)
            for start, where in [(early, "early"), (late, "late")][:: 1 if repeat % 2 else -1]:
                clip(start, where)
        medians = {name: statistics.median(t) for name, t in timings.items()}
        medians["ratio read"] = medians["read late"] / medians["read early"]
        medians["ratio open+read"] = medians["open+read late"] / medians["open+read early"]
        results[backend] = medians
    return results



def run(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    videos = args.videos or demo_split("train")
    print(f"data benchmark: {args.clips} clips of {args.num_frames} frames from {videos} (cpus: {os.cpu_count()}, "
          f"each ratio the median of {args.repeats} pairs of neighbouring runs)")
    results, paired = bench_loader(videos, args.clips, args.num_frames, args.size, args.repeats)
    with open_video(next(iter(ClassFolderSource(videos).records())).path) as reader:
        print(f"  (the loader and the raw decoding processes open videos with backend auto: {reader.backend})")
    for name, (rate, cpu_ms, _) in results.items():
        if not name.startswith(EMPTY):
            print(f"  {name:<36} {rate:8.1f} clips/s   {cpu_ms:6.2f} ms CPU per clip")
    for workers in (0, 2):
        processes, loader = max(1, workers), f"loader {workers} workers"
        raw = f"raw decoding x{processes}"
        compared = [(loader, raw, f"ratio loader({workers} workers) / raw decoding in {processes} process(es)",
                     "target >= 0.9"),
                    (loader, f"raw + transform x{processes}", f"ratio loader({workers} workers) / raw + transform "
                     f"in {processes} process(es)", "the loader's own cost")]
        if workers:
            compared += [(f"{loader} persistent", f"{raw} persistent", f"ratio loader({workers} persistent workers) "
                          f"/ raw decoding in {workers} persistent process(es)", "target >= 0.9"),
                         (f"{AGAIN} x{workers}", raw, f"ratio raw decoding / the same raw decoding in {workers} "
                          "processes", "no difference but this machine's noise: how far the ratios above can "
                          "move by chance")]
        compared += [(f"{loader}, float", raw, f"ratio float loader({workers} workers) / raw decoding in "
                      f"{processes} process(es)", "normalising in the workers")]
        for a, b, title, note in compared:
            walls, cpus = (sorted(r[i] for r in paired[(a, b)]) for i in (0, 1))
            print(f"  {title}: {statistics.median(walls):.2f}   ({note}; by CPU time {statistics.median(cpus):.2f}; "
                  f"pair by pair {walls[0]:.2f}-{walls[-1]:.2f}, middle half {_quartiles(walls)})")
        if workers:
            raw_ms, loader_ms = (1e3 * statistics.median(results[f"{EMPTY} {name}"][2])
                                 for name in (f"raw x{workers}", loader))
            epoch_ms = 1e3 * statistics.median(results[loader][2])
            print(f"  an epoch of nothing: {workers} loader workers start and stop in {loader_ms:.0f} ms, {workers} "
                  f"plain processes in {raw_ms:.0f} ms (PyTorch's DataLoader; {loader_ms - raw_ms:.0f} ms is "
                  f"{100 * (loader_ms - raw_ms) / epoch_ms:.1f}% of this {args.clips}-clip epoch)")
    speedup = results["frame cache later"][0] / results["loader 0 workers"][0]
    print(f"  ratio frame-cache epoch / decoding epoch (0 workers): {speedup:.2f}   (target >= 5)")

    video = args.long_video or long_video(Path(os.environ.get("VIDLSTM_ROOT", ".")) / "data" / "benchmark")
    facts = stream_facts(video)
    print(f"seek benchmark: 16-frame clips (every 2nd frame) from the first and the last 10% of {video} "
          f"({facts.num_frames} frames, {facts.codec}), {args.seek_repeats} of each, a fresh reader per clip")
    for backend, ms in bench_seek(video, args.seek_repeats).items():
        print(f"  {backend:<12} read: early {ms['read early']:8.1f} ms  late {ms['read late']:8.1f} ms  "
              f"late/early {ms['ratio read']:5.2f}   (target <= 2)   open+read: early {ms['open+read early']:8.1f}"
              f" ms  late {ms['open+read late']:8.1f} ms  late/early {ms['ratio open+read']:5.2f}")


def _quartiles(values: list[float]) -> str:
    """The middle half of sorted ``values``, e.g. "0.91-0.96" (this machine's run-to-run noise)."""
    if len(values) < 4:
        return f"{values[0]:.2f}-{values[-1]:.2f}"
    low, _, high = statistics.quantiles(values, n=4)
    return f"{low:.2f}-{high:.2f}"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--videos", type=Path, help="class-per-folder tree of videos (default: the demo dataset)")
    parser.add_argument("--clips", type=int, default=512, help="clips decoded per measurement")
    parser.add_argument("--num-frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--size", type=int, default=64, help="crop size of the dataset's transform")
    parser.add_argument("--repeats", type=int, default=15, help="pairs of neighbouring runs per loader ratio (median)")
    parser.add_argument("--long-video", type=Path, help="video for the seek check (default: a generated "
                                                          "10-minute 480p H.264 file in ./data/benchmark)")
    parser.add_argument("--seek-repeats", type=int, default=11, help="early and late clips per backend (median)")
