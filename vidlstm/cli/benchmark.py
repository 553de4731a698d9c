"""`python scripts/benchmark.py <what>`: speed measured in one run, printed as rates and ratios.

    python scripts/benchmark.py data [--videos DIR] [--clips 256] [--num-frames 16] [--size 64] [--repeats 5]
                                     [--long-video FILE] [--seek-repeats 11]
    python scripts/benchmark.py model [--repeats 30] [--size 112]
    python scripts/benchmark.py train [--encoder resnet18] [--size 112] [--batches 24]
    python scripts/benchmark.py predict [--ckpt best.ckpt] [--videos DIR] [--workers 2]

``data``: clips/s of each raw backend decoding the same frame indices, and of frame-cache epochs.
The loader check runs our dataset in a DataLoader with N workers (N = 0 and 2) against N plain processes doing
the same decoding (same files, same frame indices, same backend choice, one torch thread per worker process,
the same round-robin share of batches per process): ratio loader / raw decoding (target >= 0.9), and loader /
(raw decoding + the same transform), which leaves only the loader's own cost. The seek check reads a 16-frame
clip (every 2nd frame) from the first and from the last 10% of a 10-minute 480p H.264 video (x264 ultrafast, a
keyframe every 2 s; generated once into ./data/benchmark), each from a freshly opened reader as a dataset does,
interleaved, and prints per backend the median cost of each and late / early (target <= 2).
Without ``--videos`` the demo dataset is used (rendered into ./data/demo on first use).

``model``: forward+backward time of vidlstm's LSTM cell (all variants off, and typical variant sets) divided
by torch.nn.LSTM's on the same shapes (B=8, T=16, D=512, H=256), measured interleaved (median of repeats);
and frames/s of every configured encoder (conf/model/encoder) in inference and in training.

``train``: median epoch time of the demo with a frozen encoder trained end to end (decode + CNN + head) and
with the feature cache (head only, after a one-time extraction), on the same batches; their ratio and both
runs' validation accuracy.

``predict``: videos/s of a folder run (decoding in workers overlapped with the model) against the larger of
pure decoding time and pure model time measured in the same run; their ratio is the overlap (1.0 = perfect).
Without ``--ckpt`` a randomly initialised demo model is used (speed does not depend on the weights).
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from vidlstm.data.cache import FrameCache
from vidlstm.data.dataset import VideoClipDataset, collate_clips
from vidlstm.data.index import ClassFolderSource, segment_frames
from vidlstm.data.sampling import UniformSegmentSampler
from vidlstm.data.synthetic import DemoDataset
from vidlstm.data.transforms import eval_transform
from vidlstm.data.video import BACKENDS, available_backends, open_video, stream_facts


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


def _shares(work: list[tuple[str, list[int]]], workers: int, batch_size: int) -> list[list[tuple[str, list[int]]]]:
    """Split ``work`` as DataLoader does: batch b goes to worker b % workers (everything to one when none)."""
    batches = [work[i: i + batch_size] for i in range(0, len(work), batch_size)]
    count = max(1, workers)
    return [[item for batch in batches[w::count] for item in batch] for w in range(count)]


def _timed(work: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and of the child processes it waited for) of ``work()``; CPU
    time is what other load on the machine does not inflate."""
    before, started = os.times(), time.perf_counter()
    work()
    wall, after = time.perf_counter() - started, os.times()
    return wall, sum(after[:4]) - sum(before[:4])  # user, system, children's user, children's system


def bench_loader(videos: Path, clips: int, num_frames: int, size: int, repeats: int, batch_size: int = 8,
                 backend: str = "auto") -> dict[str, tuple[float, float]]:
    """{name: (clips/s, CPU ms per clip)} of raw decoding per backend, and for N = 0 and 2 workers of: N raw
    decoding processes, the same plus the transform, and our DataLoader (median of ``repeats`` interleaved runs);
    and of frame-cache epochs."""
    records = list(itertools.islice(itertools.cycle(ClassFolderSource(videos).records()), clips))
    sampler = UniformSegmentSampler(num_frames)
    work = []
    for record in records:  # the indices the dataset will ask for (eval sampler: no randomness)
        with open_video(record.path, backend) as reader:
            first, stop = segment_frames(record, reader.num_frames, reader.fps)
            work.append((record.path, [first + i for i in sampler(stop - first)]))

    def measured(runs: list[tuple[float, float]]) -> tuple[float, float]:
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        return len(work) / wall, cpu * 1e3 / len(work)

    results: dict[str, tuple[float, float]] = {}
    for name in available_backends():
        if any(BACKENDS[name].unsuitable_reason(stream_facts(p)) for p, _ in work):
            print(f"  {name:<22} skipped: unsuitable for some of these files")
            continue
        results[f"raw {name}"] = measured([_timed(lambda name=name: _decode_share(work, name, None))])
    classes = sorted({r.label for r in records})
    transform = eval_transform(size)
    dataset = VideoClipDataset(records, classes, sampler, transform, backend=backend)
    for workers in (0, 2):
        shares = _shares(work, workers, batch_size)
        loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collate_clips)
        runs: dict[str, Callable[[], object]] = {
            f"raw decoding x{max(1, workers)}": lambda shares=shares: _in_processes(shares, backend, None),
            f"raw + transform x{max(1, workers)}": lambda shares=shares: _in_processes(shares, backend, transform),
            f"loader {workers} workers": lambda loader=loader: [b for b in loader],
        }
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in runs}
        for repeat in range(repeats):
            order = list(runs)[repeat % len(runs):] + list(runs)[: repeat % len(runs)]  # rotate who goes first
            for name in order:
                times[name].append(_timed(runs[name]))
        results.update({name: measured(t) for name, t in times.items()})
    with tempfile.TemporaryDirectory() as cache_dir:
        cached = VideoClipDataset(records, classes, sampler, transform, frame_cache=FrameCache(cache_dir, size))
        loader = DataLoader(cached, batch_size=batch_size, num_workers=0, collate_fn=collate_clips)
        results["frame cache 1st epoch"] = measured([_timed(lambda: [b for b in loader])])
        results["frame cache later"] = measured([_timed(lambda: [b for b in loader])])
    return results


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


LSTM_SHAPES = {"batch": 8, "steps": 16, "input_size": 512, "hidden_size": 256}
LSTM_VARIANT_SETS: dict[str, dict[str, object]] = {
    "custom, all variants off": {"implementation": "custom"},
    "peephole + zoneout (peephole_lstm)": {"peephole": True, "zoneout_cell": 0.1, "zoneout_hidden": 0.05,
                                           "forget_bias": 1.0},
    "variational dropout + layer norm": {"input_dropout": 0.2, "recurrent_dropout": 0.2, "layer_norm": True},
    "coupled + cell clip + proj": {"coupled_input_forget": True, "cell_clip": 3.0, "proj_size": 128},
}


def _median_ms(work: Callable[[], None], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


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
            ref_ms.append(_median_ms(reference, 1))
            our_ms.append(_median_ms(ours, 1))
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
            infer_ms = _median_ms(lambda encoder=encoder: encoder(frames), repeats)
        encoder.train()
        train_ms = _median_ms(lambda encoder=encoder: encoder(frames).sum().backward(), max(3, repeats // 3))
        results[f"{path.stem} ({encoder.backbone})"] = (32e3 / infer_ms, 32e3 / train_ms)
    return results


def run_model(args: argparse.Namespace) -> None:
    print("model benchmark: forward+backward, B={batch} T={steps} D={input_size} H={hidden_size}, "
          "threads={threads}".format(**LSTM_SHAPES, threads=torch.get_num_threads()))
    for name, (ms, ratio) in bench_lstm(args.repeats).items():
        print(f"  {name:<38} {ms:7.2f} ms   ratio to nn.LSTM {ratio:4.2f}   (target <= 2.0)")
    print(f"encoder throughput, {args.size}x{args.size} frames:")
    for name, (infer, train) in bench_encoders(args.size, max(3, args.repeats // 3)).items():
        print(f"  {name:<38} {infer:8.1f} frames/s inference   {train:8.1f} frames/s training")


def bench_train(encoder: str, size: int, batches: int, epochs: int) -> dict[str, dict[str, float]]:
    """{"end to end" | "feature cache": summary} of two short demo runs with a frozen ``encoder``."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from vidlstm.training.train import train

    common = [f"model/encoder={encoder}", "model.encoder.freeze=all", f"data.image_size={size}",
              "data.train_sampler.jitter=false", "~data.train_transform",
              "+data.train_transform={_target_:vidlstm.data.transforms.eval_transform,_partial_:true,"
              "mean:[0.485,0.456,0.406],std:[0.229,0.224,0.225]}",
              f"trainer.limit_train_batches={batches}", f"trainer.limit_val_batches={max(1, batches // 4)}",
              "test=false", "callbacks.progress_bar=null", "callbacks.model_summary=null",
              "callbacks.early_stopping=null", "callbacks.lr_monitor=null", "~logger"]
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        runs = {"end to end": [f"trainer.max_epochs={epochs}"],
                "feature cache": [f"trainer.max_epochs={epochs * 3}", "data.feature_cache=true",
                                  f"data.feature_cache_dir={scratch}/features"]}
        for n, (name, extra) in enumerate(runs.items()):
            GlobalHydra.instance().clear()
            with initialize_config_module(config_module="vidlstm.conf", version_base="1.3"):
                cfg = compose("train", overrides=[*common, *extra], return_hydra_config=True)
            with open_dict(cfg):
                cfg.hydra.runtime.output_dir = f"{scratch}/run{n}"
                cfg.hydra.job.num = 0
            HydraConfig.instance().set_config(cfg)
            summary, _ = train(cfg)
            results[name] = summary
    return results


def run_train(args: argparse.Namespace) -> None:
    results = bench_train(args.encoder, args.size, args.batches, args.epochs)
    print(f"train benchmark: demo, frozen {args.encoder} at {args.size}px, {args.batches} training batches per "
          f"epoch (cpus: {os.cpu_count()})")
    for name, summary in results.items():
        extraction = f", one-time extraction {summary['feature_extraction_s']:.1f} s" \
            if "feature_extraction_s" in summary else ""
        print(f"  {name:<14} epoch {summary['epoch_time_s']:8.3f} s   val/acc_best {summary['val/acc_best']:.4f}"
              f"{extraction}")
    ratio = results["end to end"]["epoch_time_s"] / results["feature cache"]["epoch_time_s"]
    print(f"  ratio end-to-end epoch / feature-cache epoch: {ratio:.1f}   (target >= 20)")


def _demo_checkpoint(path: Path) -> Path:
    """A checkpoint of the demo model with random weights, in vidlstm's format."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    from vidlstm.data.synthetic import DEMO_CLASSES
    from vidlstm.training.train import build_module

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vidlstm.conf", version_base="1.3"):
        cfg = compose("train", overrides=["paths.output_dir=."])
    module = build_module(cfg, class_names=list(DEMO_CLASSES))
    config = {k: OmegaConf.to_container(cfg[k], resolve=True) for k in ("data", "model")}
    torch.save({"state_dict": module.state_dict(),
                "vidlstm": {"class_names": list(DEMO_CLASSES), "config": config}}, path)
    return path


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


def run_predict(args: argparse.Namespace) -> None:
    videos = args.videos
    if videos is None:
        demo = DemoDataset(root=str(Path(os.environ.get("VIDLSTM_ROOT", ".")) / "data" / "demo"))
        videos = Path(demo.prepare()) / "test"
    with tempfile.TemporaryDirectory() as scratch:
        ckpt = args.ckpt or _demo_checkpoint(Path(scratch) / "demo.ckpt")
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


def run_data(args: argparse.Namespace) -> None:
    torch.set_num_threads(1)
    root = Path(os.environ.get("VIDLSTM_ROOT", "."))
    videos = args.videos
    if videos is None:
        videos = Path(DemoDataset(root=str(root / "data" / "demo")).prepare()) / "train"
    print(f"data benchmark: {args.clips} clips of {args.num_frames} frames from {videos} (cpus: {os.cpu_count()}, "
          f"median of {args.repeats} interleaved runs)")
    results = bench_loader(videos, args.clips, args.num_frames, args.size, args.repeats)
    with open_video(next(iter(ClassFolderSource(videos).records())).path) as reader:
        print(f"  (the loader and the raw decoding processes open videos with backend auto: {reader.backend})")
    for name, (rate, cpu_ms) in results.items():
        print(f"  {name:<26} {rate:8.1f} clips/s   {cpu_ms:6.2f} ms CPU per clip")
    for workers in (0, 2):
        processes = max(1, workers)
        rate, cpu_ms = results[f"loader {workers} workers"]
        for raw, note in (("raw decoding", "target >= 0.9"), ("raw + transform", "the loader's own cost")):
            raw_rate, raw_cpu_ms = results[f"{raw} x{processes}"]
            print(f"  ratio loader({workers} workers) / {raw} in {processes} process(es): {rate / raw_rate:.2f}   "
                  f"({note}; by CPU time {raw_cpu_ms / cpu_ms:.2f})")
    speedup = results["frame cache later"][0] / results["loader 0 workers"][0]
    print(f"  ratio frame-cache epoch / decoding epoch (0 workers): {speedup:.2f}   (target >= 5)")

    video = args.long_video or long_video(root / "data" / "benchmark")
    facts = stream_facts(video)
    print(f"seek benchmark: 16-frame clips (every 2nd frame) from the first and the last 10% of {video} "
          f"({facts.num_frames} frames, {facts.codec}), {args.seek_repeats} of each, a fresh reader per clip")
    for backend, ms in bench_seek(video, args.seek_repeats).items():
        print(f"  {backend:<12} read: early {ms['read early']:8.1f} ms  late {ms['read late']:8.1f} ms  "
              f"late/early {ms['ratio read']:5.2f}   (target <= 2)   open+read: early {ms['open+read early']:8.1f}"
              f" ms  late {ms['open+read late']:8.1f} ms  late/early {ms['ratio open+read']:5.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    data = sub.add_parser("data", help="video decoding and loading throughput")
    data.add_argument("--videos", type=Path, help="class-per-folder tree of videos (default: the demo dataset)")
    data.add_argument("--clips", type=int, default=256, help="clips decoded per measurement")
    data.add_argument("--num-frames", type=int, default=16, help="frames per clip")
    data.add_argument("--size", type=int, default=64, help="crop size of the dataset's transform")
    data.add_argument("--repeats", type=int, default=5, help="interleaved runs per loader measurement (median)")
    data.add_argument("--long-video", type=Path, help="video for the seek check (default: a generated 10-minute "
                                                        "480p H.264 file in ./data/benchmark)")
    data.add_argument("--seek-repeats", type=int, default=11, help="early and late clips per backend (median)")
    model = sub.add_parser("model", help="custom LSTM cell vs nn.LSTM, encoder throughput")
    model.add_argument("--repeats", type=int, default=30, help="timed repeats per measurement (median)")
    model.add_argument("--size", type=int, default=112, help="frame side for the encoder throughput")
    training = sub.add_parser("train", help="feature-cache epochs vs end-to-end epochs with a frozen encoder")
    training.add_argument("--encoder", default="resnet18", help="model/encoder config to freeze")
    training.add_argument("--size", type=int, default=112, help="frame side (data.image_size)")
    training.add_argument("--batches", type=int, default=24, help="training batches per epoch (both runs)")
    training.add_argument("--epochs", type=int, default=3, help="end-to-end epochs (feature runs do 3x)")
    predicting = sub.add_parser("predict", help="folder-run videos/s vs pure decoding and pure model time")
    predicting.add_argument("--ckpt", type=Path, help="checkpoint (default: a random-weights demo model)")
    predicting.add_argument("--videos", type=Path, help="folder of videos (default: the demo's test split)")
    predicting.add_argument("--workers", type=int, default=2, help="decoding workers")
    predicting.add_argument("--batch-size", type=int, default=8, help="videos per model call")
    args = parser.parse_args(argv)
    {"data": run_data, "model": run_model, "train": run_train, "predict": run_predict}[args.what](args)

if __name__ == "__main__":
    main()
