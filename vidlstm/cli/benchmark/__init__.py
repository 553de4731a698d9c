"""`python scripts/benchmark.py <what>`: speed measured in one run, printed as rates and ratios (machines are
noisy: compare numbers from the same run, never across runs). One module per benchmark:

    python scripts/benchmark.py data [--videos DIR] [--clips 256] [--num-frames 16] [--size 64] [--repeats 5]
                                     [--long-video FILE] [--seek-repeats 11]
    python scripts/benchmark.py model [--repeats 30] [--size 112]
    python scripts/benchmark.py train [--encoder resnet18] [--size 112] [--batches 24]
    python scripts/benchmark.py predict [--ckpt best.ckpt] [--videos DIR] [--workers 2]
    python scripts/benchmark.py gpu [--size 224] [--batch-size 16] [--steps 20]
    python scripts/benchmark.py stream [--encoder mobilenet_v3_small] [--size 112] [--seconds 20] [--fps 30]
    python scripts/benchmark.py serve [--ckpt best.ckpt] [--requests 48] [--clients 1 8]

Run ``python scripts/benchmark.py <what> --help`` for what each one measures.
"""

from __future__ import annotations

import argparse
import importlib

# name -> (module under vidlstm.cli.benchmark, one-line help)
BENCHMARKS: dict[str, tuple[str, str]] = {
    "data": ("data", "video decoding, our loader vs the same decoding in N processes, late vs early seeks"),
    "model": ("model", "custom LSTM cell vs nn.LSTM, encoder throughput"),
    "train": ("train", "feature-cache epochs vs end-to-end epochs with a frozen encoder"),
    "predict": ("predict", "folder-run videos/s vs pure decoding and pure model time (overlap)"),
    "gpu": ("gpu", "training clips/s in fp32 and bf16, data-wait share, CPU vs GPU decoding"),
    "stream": ("stream", "live streaming: frames/s, real-time factor, drops and lag on a 30 frames/s source"),
    "serve": ("serve", "HTTP serving: requests/s and p50/p95 latency for 1 and 8 concurrent clients"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="benchmark.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="what", required=True)
    modules = {}
    for name, (module_name, help_text) in BENCHMARKS.items():
        module = importlib.import_module(f"vidlstm.cli.benchmark.{module_name}")
        modules[name] = module
        module.add_arguments(sub.add_parser(name, help=help_text, description=module.__doc__,
                                            formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    modules[args.what].run(args)


if __name__ == "__main__":
    main()
