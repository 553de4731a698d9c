"""`python scripts/compare_heads.py`: test accuracy of temporal heads on the order-only and the appearance-only
synthetic sets, trained from cached features of a frozen encoder, as a markdown table.

Every cell is `vidlstm.training.train.train` run on a composed training config, exactly what
``python scripts/train.py experiment=<dataset's experiment> <head's overrides> seed=<seed> [overrides]`` runs:

    dataset      experiment                  classes differ in
    demo         demo_features               temporal order only (pairs of a clip and its reversal)
    appearance   demo_appearance_features    appearance only (colour family and shape; order irrelevant)

Both experiments freeze the demo's tiny CNN with random weights (``seed`` draws them, so seeds vary the
features too) and set ``data.feature_cache=true``: the CNN runs once per video and seed, later runs read its
features from ``${paths.data_dir}/feature_cache``, and only the head trains. Each cell is the mean +- sample
standard deviation of ``test/acc`` over the seeds. Runs go to ``<output>/<dataset>/<head>/seed<k>/`` (the usual
run folders); ``results.json`` (every run) and ``table.md`` are written to ``<output>``.

Examples:
    python scripts/compare_heads.py                                   # every head x both sets, seeds 0 1 2
    python scripts/compare_heads.py --heads meanpool residual_gru --datasets appearance --seeds 0
    python scripts/compare_heads.py trainer.max_epochs=30             # Hydra overrides for every run
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

DATASETS: dict[str, str] = {"demo": "demo_features", "appearance": "demo_appearance_features"}
# Table rows: a name -> the overrides that pick the head. bilstm_512 is the head experiment=kinetics_bilstm used
# before it switched to residual_gru.
HEADS: dict[str, tuple[str, ...]] = {
    "meanpool": ("model/head=meanpool",),
    "lstm": ("model/head=lstm",),
    "bilstm": ("model/head=bilstm",),
    "bilstm_512": ("model/head=bilstm", "model.head.hidden_size=512", "model.head.classifier_dropout=0.5"),
    "gru": ("model/head=gru",),
    "attn_lstm": ("model/head=attn_lstm",),
    "residual_gru": ("model/head=residual_gru",),
}
# Settings that change how runs look, never what they compute.
QUIET = ("callbacks.progress_bar=null", "callbacks.model_summary=null", "logger=csv")


@dataclass(frozen=True)
class RunResult:
    """One training run: which cell it fills and what it measured."""

    dataset: str
    head: str
    seed: int
    test_acc: float
    val_acc_best: float
    epochs: int
    wall_time_s: float
    output_dir: str


def compose_run(dataset: str, head: str, seed: int, output_dir: Path, overrides: Sequence[str] = ()) -> Any:
    """The training config of one cell (a DictConfig), composed as `scripts/train.py` composes it, with its run
    folder pinned to ``output_dir``. Hydra's runtime is set to this run, so what reads it (the recipe check
    that refuses an experiment with other data) sees this run's choices."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; choose from {sorted(DATASETS)}")
    if head not in HEADS:
        raise ValueError(f"unknown head {head!r}; choose from {sorted(HEADS)}")
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vidlstm.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"experiment={DATASETS[dataset]}", *HEADS[head], f"seed={seed}", *QUIET,
                                          *overrides], return_hydra_config=True)
    GlobalHydra.instance().clear()
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


def run_cell(dataset: str, head: str, seed: int, output_dir: Path, overrides: Sequence[str] = ()) -> RunResult:
    """Train and test one (dataset, head, seed) through `vidlstm.training.train.train`."""
    from vidlstm.training.train import train

    cfg = compose_run(dataset, head, seed, output_dir, overrides)
    started = time.perf_counter()
    summary, _ = train(cfg)
    return RunResult(dataset, head, seed, float(summary["test/acc"]), float(summary.get("val/acc_best", "nan")),
                     int(summary.get("epochs_completed", 0)), round(time.perf_counter() - started, 1),
                     str(output_dir))


def mean_spread(values: Sequence[float]) -> str:
    """``mean ± sample standard deviation`` (3 decimals); a single value alone."""
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def markdown_table(results: Sequence[RunResult], heads: Sequence[str], datasets: Sequence[str]) -> str:
    """Rows: heads; columns: datasets; cells: test/acc mean ± spread over the seeds (see `mean_spread`)."""
    titles = {"demo": "demo (order only)", "appearance": "appearance only"}
    lines = ["| head | " + " | ".join(f"{titles.get(d, d)} test/acc" for d in datasets) + " |",
             "| --- |" + " --- |" * len(datasets)]
    for head in heads:
        cells = []
        for dataset in datasets:
            values = [r.test_acc for r in results if r.head == head and r.dataset == dataset]
            cells.append(mean_spread(values) if values else "-")
        lines.append(f"| {head} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare(heads: Sequence[str], datasets: Sequence[str], seeds: Sequence[int], output: Path,
            overrides: Sequence[str] = ()) -> list[RunResult]:
    """Run every dataset x head x seed (one at a time) and write ``results.json`` and ``table.md`` to
    ``output`` after each run, so an interrupted comparison keeps what it measured."""
    output.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    total, started = len(heads) * len(datasets) * len(seeds), time.perf_counter()
    for dataset in datasets:
        for head in heads:
            for seed in seeds:
                result = run_cell(dataset, head, seed, output / dataset / head / f"seed{seed}", overrides)
                results.append(result)
                print(f"[{len(results)}/{total}] {dataset} {head} seed={seed}: test/acc={result.test_acc:.3f} "
                      f"({result.epochs} epochs, {result.wall_time_s:.0f} s)", flush=True)
                (output / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=2))
                note = (f"{len(seeds)} seed(s) {list(seeds)} per cell, mean ± sample standard deviation of test/acc; "
                        f"{len(results)} of {total} runs in {time.perf_counter() - started:.0f} s; overrides: "
                        f"{list(overrides) or 'none'}")
                (output / "table.md").write_text(f"{markdown_table(results, heads, datasets)}\n\n{note}\n")
    return results


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--heads", nargs="+", choices=list(HEADS), default=list(HEADS), help="table rows")
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS),
                        help="table columns")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="training seeds per cell")
    parser.add_argument("--output", type=Path, default=None,
                        help="folder for the runs, results.json and table.md "
                             "(default: outputs/compare_heads/<date>_<time>)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: a small head on small batches runs fastest on one "
                             "thread; several threads contend badly for a busy CPU, most of all in the LSTM "
                             "over packed variable-length batches)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides applied to every run (key=value)")
    return parser


def main(argv: Sequence[str] | None = None) -> str:
    args = _parser().parse_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        raise SystemExit(f"compare_heads: overrides must be key=value, got {bad}")
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    output = args.output or Path("outputs") / "compare_heads" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    try:
        results = compare(args.heads, args.datasets, args.seeds, output, args.overrides)
    finally:
        torch.set_num_threads(threads)
    table = markdown_table(results, args.heads, args.datasets)
    print(f"\n{table}\n\n{(output / 'table.md').read_text().splitlines()[-1]}\nWritten to {output}")
    return table


if __name__ == "__main__":
    main()
