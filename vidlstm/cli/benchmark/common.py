"""What the benchmarks share: timing helpers and the demo data and model they default to."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from vidlstm.data.synthetic import DemoDataset


def timed(work: Callable[[], object], living: list[int] = ()) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, of the child processes it waited for and of the ``living``
    processes (Linux: read from /proc)) of ``work()``; CPU time is what other load on the machine does not
    inflate."""
    before, living_before, started = os.times(), process_cpu_s(living), time.perf_counter()
    work()
    wall, after = time.perf_counter() - started, os.times()
    # user, system, children's user, children's system
    return wall, sum(after[:4]) - sum(before[:4]) + process_cpu_s(living) - living_before


def process_cpu_s(pids: list[int]) -> float:
    """CPU seconds (user + system, all threads) the processes ``pids`` have used so far; 0 without /proc."""
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return total


def median_ms(work: Callable[[], None], repeats: int) -> float:
    """Median wall milliseconds of ``repeats`` calls of ``work``."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e3


def demo_split(split: str) -> Path:
    """A split folder of the demo dataset, rendered into ``$VIDLSTM_ROOT/data/demo`` (default ./data/demo) on
    first use."""
    root = Path(os.environ.get("VIDLSTM_ROOT", ".")) / "data" / "demo"
    return Path(DemoDataset(root=str(root)).prepare()) / split


def demo_checkpoint(path: Path) -> Path:
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
