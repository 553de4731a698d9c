"""`python scripts/benchmark.py <what>`: speed measured in one run, printed as rates and ratios.

    python scripts/benchmark.py data [--videos DIR] [--clips 256] [--num-frames 16] [--size 64]
    python scripts/benchmark.py model [--repeats 30] [--size 112]
    python scripts/benchmark.py train [--encoder resnet18] [--size 112] [--batches 24]
    python scripts/benchmark.py predict [--ckpt best.ckpt] [--videos DIR] [--workers 2]

``data``: clips/s of each raw backend decoding the same frame indices, of our dataset (decode + transforms)
with 0 and 2 DataLoader workers, and of frame-cache epochs; the ratio of our loader to the fastest raw
backend and of a cached epoch to a decoding epoch.
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
import os
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    data = sub.add_parser("data", help="video decoding and loading throughput")
    data.add_argument("--videos", type=Path, help="class-per-folder tree of videos (default: the demo dataset)")
    data.add_argument("--clips", type=int, default=256, help="clips decoded per measurement")
    data.add_argument("--num-frames", type=int, default=16, help="frames per clip")
    data.add_argument("--size", type=int, default=64, help="crop size of the dataset's transform")
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
