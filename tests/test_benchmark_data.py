"""`scripts/benchmark.py data` compares like with like: the raw decoding processes get the batches DataLoader's
workers get, and the seek check runs on every backend that loads."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from torch.utils.data import DataLoader, Dataset, get_worker_info

from vidlstm.cli.benchmark.common import timed
from vidlstm.cli.benchmark.data import AGAIN, EMPTY, _PersistentProcesses, _shares, bench_loader, bench_seek, long_video
from vidlstm.data.video import BACKENDS, available_backends, stream_facts


class _WhoServes(Dataset):
    def __len__(self) -> int:
        return 37

    def __getitem__(self, index: int) -> tuple[int, int]:
        info = get_worker_info()
        return index, -1 if info is None else info.id


def test_raw_shares_are_the_batches_each_loader_worker_decodes() -> None:
    work = [(f"video{i}.mp4", [i]) for i in range(37)]
    for workers in (0, 2):
        served: dict[int, list[int]] = {}
        for indices, worker in DataLoader(_WhoServes(), batch_size=8, num_workers=workers):
            served.setdefault(int(worker[0]), []).extend(int(i) for i in indices)
        expected = [[int(path[5:-4]) for path, _ in share] for share in _shares(work, workers, 8)]
        assert sorted(served.values()) == sorted(expected)


def test_seek_check_runs_on_every_backend(tmp_path: Path) -> None:
    video = long_video(tmp_path, minutes=0.4)
    assert long_video(tmp_path, minutes=0.4) == video  # generated once
    facts = stream_facts(video)
    assert (facts.codec, facts.num_frames) == ("h264", 600)
    results = bench_seek(video, repeats=1)
    assert set(results) == {b for b in available_backends() if not BACKENDS[b].unsuitable_reason(facts)}
    for ms in results.values():
        assert ms["read early"] > 0 and ms["read late"] > 0 and ms["ratio read"] > 0


def test_loader_check_counts_the_cpu_of_processes_that_outlive_a_run(tiny_demo) -> None:
    """Every loader/raw pair is measured, persistent ones included, and a persistent run's CPU time includes its
    living processes' decoding (the main process alone would show a fraction of a millisecond per clip)."""
    results, paired = bench_loader(Path(tiny_demo.split_dir("train")), clips=24, num_frames=4, size=32, repeats=2)
    for workers in (0, 2):
        processes = max(1, workers)
        names = [f"raw decoding x{processes}", f"raw + transform x{processes}", f"loader {workers} workers"]
        names += [f"raw decoding x{workers} persistent", f"loader {workers} workers persistent",
                  f"{AGAIN} x{workers}"] if workers else []
        for name in names:
            rate, cpu_ms, walls = results[name]
            assert rate > 0 and len(walls) >= 2 and cpu_ms > 0.5, (name, results[name])
    for name in (f"{EMPTY} raw x2", f"{EMPTY} loader 2 workers"):  # processes started and stopped, nothing decoded
        walls = results[name][2]
        assert len(walls) == 2 and min(walls) > 0, (name, results[name])
    assert ("loader 2 workers persistent", "raw decoding x2 persistent") in paired
    assert (f"{AGAIN} x2", "raw decoding x2") in paired
    for pair, ratios in paired.items():
        assert len(ratios) == 2 and all(wall > 0 for wall, _ in ratios), (pair, ratios)
        if not pair[0].startswith(EMPTY):  # nothing decoded: CPU time may read 0 (it counts in 10 ms ticks)
            assert all(cpu > 0 for _, cpu in ratios), (pair, ratios)
    main_only = timed(lambda: time.sleep(0.05))[1]
    assert main_only < 0.02


def test_pairs_run_back_to_back_in_alternating_order(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each pair's two runs are neighbours (which is what makes their ratio immune to slow drifts), which goes
    first alternates, and each ratio is b's time over a's."""
    import vidlstm.cli.benchmark.data as data

    log: list[str] = []
    seconds = {"a": 2.0, "b": 3.0, "c": 5.0}

    def fake_timed(work: Callable[[], object], living: list[int] = ()) -> tuple[float, float]:
        work()
        return seconds[log[-1]], 10 * seconds[log[-1]]

    monkeypatch.setattr(data, "SETTLE_S", 0.0)
    monkeypatch.setattr(data, "timed", fake_timed)
    runs = {name: (lambda name=name: log.append(name)) for name in seconds}
    times, ratios = data._paired_runs(runs, [("a", "b"), ("a", "c")], {}, repeats=4, seed=0)
    neighbours = [tuple(sorted(log[i: i + 2])) for i in range(0, len(log), 2)]
    assert sorted(neighbours) == [("a", "b")] * 4 + [("a", "c")] * 4
    for pair in (("a", "b"), ("a", "c")):
        firsts = [log[2 * i] for i, n in enumerate(neighbours) if n == pair]
        assert sorted(firsts) == sorted(pair * 2), (pair, log)
    assert ratios == {("a", "b"): [(1.5, 1.5)] * 4, ("a", "c"): [(2.5, 2.5)] * 4}
    assert [len(times[name]) for name in "abc"] == [8, 4, 4]


def test_a_pair_whose_cpu_reads_zero_still_has_its_wall_ratio(monkeypatch: pytest.MonkeyPatch) -> None:
    """An epoch with nothing to decode can use less CPU than one clock tick: its pair keeps the wall ratio."""
    import math

    import vidlstm.cli.benchmark.data as data

    monkeypatch.setattr(data, "SETTLE_S", 0.0)
    monkeypatch.setattr(data, "timed", lambda work, living=(): (work(), (0.1, 0.0))[1])
    _, ratios = data._paired_runs({"a": lambda: None, "b": lambda: None}, [("a", "b")], {}, repeats=2, seed=0)
    assert [wall for wall, _ in ratios[("a", "b")]] == [1.0, 1.0]
    assert all(math.isnan(cpu) for _, cpu in ratios[("a", "b")])


def test_persistent_raw_processes_report_a_failed_share(tmp_path: Path) -> None:
    with _PersistentProcesses(2) as processes:
        pids = processes.pids()
        processes.run([[], []], "auto")  # nothing to decode
        with pytest.raises(RuntimeError, match="failed"):
            processes.run([[(str(tmp_path / "missing.mp4"), [0])], []], "auto")
        assert processes.pids() == pids, "the same processes serve every run"


def test_the_report_prints_every_ratio_with_this_machines_noise(tiny_demo, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture) -> None:
    """The printed report, on a few clips: each target ratio, the empty epoch, and the same raw decoding measured
    twice (what chance alone does to a ratio here)."""
    import argparse

    from vidlstm.cli.benchmark.data import run

    args = argparse.Namespace(videos=Path(tiny_demo.split_dir("train")), clips=16, num_frames=4, size=32, repeats=2,
                              long_video=long_video(tmp_path, minutes=0.4), seek_repeats=1)
    run(args)
    out = capsys.readouterr().out
    for line in ("ratio loader(0 workers) / raw decoding in 1 process(es)",
                 "ratio loader(2 workers) / raw decoding in 2 process(es)",
                 "ratio loader(2 persistent workers) / raw decoding in 2 persistent process(es)",
                 "ratio raw decoding / the same raw decoding in 2 processes",
                 "an epoch of nothing: 2 loader workers start and stop in",
                 "ratio frame-cache epoch / decoding epoch (0 workers)", "late/early"):
        assert line in out, line
    noise = float(out.split("the same raw decoding in 2 processes: ")[1].split()[0])
    assert 0.2 < noise < 5
