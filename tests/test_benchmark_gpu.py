"""`scripts/benchmark.py gpu`: says plainly when there is no GPU, and its step timing splits data waiting from
compute (checked on the CPU, where the same code runs)."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator

import pytest
import torch

from vidlstm.cli.benchmark import main
from vidlstm.cli.benchmark.gpu import in_memory, train_steps
from vidlstm.models.registry import build_network


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the benchmark would run")
def test_without_a_gpu_it_says_so_and_measures_nothing(capsys: pytest.CaptureFixture) -> None:
    main(["gpu"])
    out = capsys.readouterr().out
    assert "no GPU present" in out and "nothing was measured" in out and "clips/s" not in out


def _tiny() -> torch.nn.Module:
    return build_network({"encoder": {"backbone": "tiny"}, "head": {"hidden_size": 8}}, 8)


def _slow(batches: Iterator, delay_s: float) -> Iterator:
    for batch in batches:
        time.sleep(delay_s)
        yield batch


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_steps_split_waiting_from_compute(precision: str) -> None:
    cpu = torch.device("cpu")
    fast = train_steps(_tiny(), in_memory(2, 4, 32, cpu), cpu, precision, steps=4, warmup=1)
    slow = train_steps(_tiny(), _slow(in_memory(2, 4, 32, cpu), 0.3), cpu, precision, steps=4, warmup=1)
    assert fast["clips"] == slow["clips"] == 8
    assert slow["wait_s"] >= 4 * 0.3 > 0.1 > fast["wait_s"]  # the sleeps are data time, nothing else is
    for result in (fast, slow):
        total = result["wait_s"] + result["step_s"]
        assert result["data_wait"] == pytest.approx(result["wait_s"] / total)
        assert result["clips_per_s"] == pytest.approx(8 / total)


def test_every_benchmark_has_a_module_with_its_own_help(capsys: pytest.CaptureFixture) -> None:
    from vidlstm.cli.benchmark import BENCHMARKS

    for name in BENCHMARKS:
        with pytest.raises(SystemExit) as ended:
            main([name, "--help"])
        assert ended.value.code == 0
        assert f"``{name}``" in capsys.readouterr().out  # the module's docstring says what it measures


def test_in_memory_batches_are_one_batch_repeated() -> None:
    first, second = itertools.islice(in_memory(3, 2, 16, torch.device("cpu")), 2)
    assert first[0] is second[0] and first[0].shape == (3, 2, 3, 16, 16) and first[1].shape == (3,)


def test_predict_overlap_ratios_use_each_repeat_s_own_measurements() -> None:
    from vidlstm.cli.benchmark.predict import overlaps

    results = {"decode": [(10.0, 18.0), (12.0, 20.0)], "model": [(6.0, 6.0), (14.0, 8.0)],
               "run": [(16.0, 25.0), (14.0, 28.0)]}
    assert overlaps(results, cores=2) == [(10 / 16, 24 / 32), (14 / 14, 28 / 28)]
