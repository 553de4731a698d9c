"""`scripts/benchmark.py data` compares like with like: the raw decoding processes get the batches DataLoader's
workers get, and the seek check runs on every backend that loads."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import DataLoader, Dataset, get_worker_info

from vidlstm.cli.benchmark.data import _shares, bench_seek, long_video
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
