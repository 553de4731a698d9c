"""Bad input never kills a run: undecodable videos are replaced, reported, and abort only past a limit."""

from __future__ import annotations

import csv
import io
import os
from multiprocessing.reduction import ForkingPickler
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from vidlstm.data.dataset import ClipBatch, VideoClipDataset, collate_clips
from vidlstm.data.index import ClassFolderSource, VideoRecord
from vidlstm.data.probe import probe_records
from vidlstm.data.sampling import UniformSegmentSampler
from vidlstm.training.train import train

from .conftest import assert_test_metrics_add_up


def _report(cfg) -> dict[str, dict]:
    """bad_videos.csv by path; each video is listed once (fit and test both prepare the data)."""
    with open(Path(cfg.paths.output_dir) / "bad_videos.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len({r["path"] for r in rows}) == len(rows), "a video is listed twice"
    return {row["path"]: row for row in rows}


def test_bad_files_are_quarantined_at_startup(make_config, messy_tree) -> None:
    root, bad = messy_tree
    cfg = make_config("data=folder", f"data.root={root}", "data.val_fraction=0.2", "data.test_fraction=0.2",
                      "trainer.max_epochs=1")
    summary, objects = train(cfg)
    datamodule = objects["datamodule"]
    assert datamodule.quarantined.keys() == bad.keys()
    indexed = {r.path for split in datamodule.splits.values() for r in split}
    assert len(indexed) == 6 * 8 and not indexed & bad.keys()
    rows = _report(cfg)
    assert set(rows) == set(bad)
    for path, reason in bad.items():
        assert reason in rows[path]["reason"] and rows[path]["stage"] == "index"
    assert_test_metrics_add_up(summary, len(datamodule.splits["test"]))


def test_without_probing_bad_files_are_replaced_during_training(make_config, messy_tree) -> None:
    root, bad = messy_tree
    cfg = make_config("data=folder", f"data.root={root}", "data.val_fraction=0.2", "data.test_fraction=0.2",
                      "data.probe=false", "data.max_bad_fraction=0.5", "trainer.max_epochs=1", "data.batch_size=1")
    summary, objects = train(cfg)  # batch size 1: no partial last batch is dropped, every file is tried
    assert objects["trainer"].current_epoch == 1
    rows = _report(cfg)
    assert set(rows) == set(bad)
    for path, reason in bad.items():
        assert reason in rows[path]["reason"] and rows[path]["stage"] in ("train", "val", "test")
    # Bad test files are left out of the metrics (not replaced): only the decodable test videos are scored.
    test_paths = {r.path for r in objects["datamodule"].splits["test"]}
    assert_test_metrics_add_up(summary, len(test_paths - set(bad)))
    assert summary["test/videos_failed"] == len(test_paths & set(bad))


def test_run_aborts_with_a_clear_message_past_the_limit(make_config, messy_tree) -> None:
    root, _ = messy_tree
    cfg = make_config("data=folder", f"data.root={root}", "data.val_fraction=0.2", "data.test_fraction=0.2",
                      "data.probe=false", "data.max_bad_fraction=0.0", "trainer.max_epochs=1")
    with pytest.raises(RuntimeError, match=r"failed in \w+ epoch 0, above data.max_bad_fraction=0.0.*bad_videos.csv"):
        train(cfg)


def test_probe_cache_makes_the_second_run_skip_probing(tmp_path: Path, messy_tree, monkeypatch) -> None:
    import vidlstm.data.probe as probe_module

    root, bad = messy_tree
    records = ClassFolderSource(root).records()
    cache = tmp_path / "probe_cache.json"
    good, quarantined = probe_records(records, cache, workers=2)
    assert quarantined.keys() == bad.keys() and len(good) == len(records) - len(bad)

    calls = []
    original = probe_module.probe_file
    monkeypatch.setattr(probe_module, "probe_file",
                        lambda path, timeout_s: calls.append(path) or original(path, timeout_s))
    assert probe_records(records, cache, workers=0) == (good, quarantined)
    assert calls == []
    changed = Path(good[0].path)
    changed.write_bytes(b"replaced by garbage")
    _, quarantined_after = probe_records(records, cache, workers=0)
    assert calls == [str(changed)] and str(changed) in quarantined_after


def test_dataset_replaces_a_bad_video_and_reports_it(tiny_demo, tmp_path: Path) -> None:
    good = sorted(Path(tiny_demo.split_dir("train")).glob("grow/*.mp4"))[0]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    records = [VideoRecord(str(broken), "shrink"), VideoRecord(str(good), "grow")]
    dataset = VideoClipDataset(records, ["grow", "shrink"], UniformSegmentSampler(4), lambda clip: clip.float(),
                               replace_failures=True)
    torch.manual_seed(0)
    sample = dataset[0]
    assert sample.label == 0, "the replacement's own label"
    assert sample.clip.shape == (4, 3, 32, 32)
    assert sample.failures and all(f.path == str(broken) for f in sample.failures)
    batch = collate_clips([sample, dataset[1]])
    assert batch.clips.shape == (2, 4, 3, 32, 32) and batch.labels.tolist() == [0, 0]
    assert len(batch.failures) == len(sample.failures)

    all_bad = VideoClipDataset([VideoRecord(str(broken), "grow")], ["grow"], UniformSegmentSampler(4),
                               lambda clip: clip, max_retries=3, replace_failures=True)
    with pytest.raises(Exception, match="4 videos in a row failed"):
        all_bad[0]

    # Outside training nothing is replaced: the failed video is left out of its batch and reported.
    evaluation = VideoClipDataset(records, ["grow", "shrink"], UniformSegmentSampler(4), lambda clip: clip.float())
    left_out = evaluation[0]
    assert left_out.clip is None and [f.path for f in left_out.failures] == [str(broken)]
    batch = collate_clips([left_out, evaluation[1]])
    assert batch.clips.shape == (1, 4, 3, 32, 32) and batch.labels.tolist() == [0]
    assert collate_clips([left_out]).clips is None and collate_clips([left_out]).labels.numel() == 0


def test_batches_from_worker_processes_equal_batches_made_in_process(tiny_demo, tmp_path: Path) -> None:
    """Clips, int64 labels and failures cross from DataLoader workers unchanged (a batch whose videos all failed
    included), and only the clips travel through shared memory: the labels go as a plain list."""
    videos = sorted(Path(tiny_demo.split_dir("train")).glob("*/*.mp4"))[:5]
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00" * 100)
    records = [VideoRecord(str(p), p.parent.name) for p in videos[:2]] + [VideoRecord(str(broken), "grow")] * 2
    records += [VideoRecord(str(p), p.parent.name) for p in videos[2:]]
    classes = sorted({r.label for r in records})
    dataset = VideoClipDataset(records, classes, UniformSegmentSampler(4), lambda clip: clip)
    expected = [collate_clips([dataset[i] for i in range(start, min(start + 2, len(records)))])
                for start in range(0, len(records), 2)]
    assert expected[1].clips is None, "the all-failed batch is part of the check"
    got = list(DataLoader(dataset, batch_size=2, num_workers=2, collate_fn=collate_clips))
    for batch, reference in zip(got, expected, strict=True):
        assert isinstance(batch, ClipBatch) and batch.failures == reference.failures
        assert batch.labels.dtype == torch.int64 and torch.equal(batch.labels, reference.labels)
        assert (batch.clips is None) == (reference.clips is None)
        if reference.clips is not None:
            assert torch.equal(batch.clips, reference.clips)

    tensors: list[torch.Size] = []

    class CountingPickler(ForkingPickler):  # what a worker's result queue pickles
        def reducer_override(self, obj: object) -> object:
            if isinstance(obj, torch.Tensor):
                tensors.append(obj.shape)
            return NotImplemented

    CountingPickler(io.BytesIO()).dump(expected[0])
    assert tensors == [expected[0].clips.shape]


def test_bad_videos_csv_keeps_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    """The row names the very bytes on disk (strict UTF-8 could not write it), and the report reads it back."""
    from vidlstm.common.report import _bad_videos_csv
    from vidlstm.data.probe import append_bad_videos

    name = os.fsdecode(b"/data/caf\xe9.mp4")
    report = tmp_path / "bad_videos.csv"
    append_bad_videos(report, {name: "moov atom not found"}, "train", 0)
    assert b"/data/caf\xe9.mp4,moov atom not found,train,0" in report.read_bytes()
    assert [row["path"] for row in _bad_videos_csv(report)] == [name]
