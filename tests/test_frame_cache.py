"""Frame cache: same clips as decoding, built once, rebuilt when the source or resolution changes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

import vidlstm.data.cache as cache_module
from vidlstm.data.cache import FrameCache
from vidlstm.data.dataset import VideoClipDataset
from vidlstm.data.index import VideoRecord
from vidlstm.data.sampling import MultiClipSampler, UniformSegmentSampler

from .video_factory import index_frame, read_index, write_video


@pytest.fixture
def video(tmp_path: Path) -> Path:
    return write_video(tmp_path / "v.mp4", np.stack([index_frame(i, 48, 64) for i in range(30)]), fps=10)


def _dataset(records, sampler, cache=None) -> VideoClipDataset:
    return VideoClipDataset(records, ["a"], sampler, lambda clip: clip, frame_cache=cache)


@pytest.mark.parametrize("sampler", [UniformSegmentSampler(6), MultiClipSampler(4, num_clips=3, clip="dense")])
def test_cached_clips_equal_decoded_clips(tmp_path: Path, video: Path, sampler) -> None:
    records = [VideoRecord(str(video), "a"), VideoRecord(str(video), "a", 1.0, 2.5)]
    cache = FrameCache(tmp_path / "cache", short_side=48)  # the video's own size: no resizing
    for i in range(2):
        torch.testing.assert_close(_dataset(records, sampler, cache)[i].clip, _dataset(records, sampler)[i].clip)
    segment = _dataset(records, UniformSegmentSampler(3), cache)[1].clip
    assert [read_index(f) for f in segment] == [12, 17, 22]  # frames 10..24 of the 1.0-2.5 s segment


def test_cache_is_built_once_and_rebuilt_when_things_change(tmp_path: Path, video: Path, monkeypatch) -> None:
    opened = []
    original = cache_module.open_video
    monkeypatch.setattr(cache_module, "open_video", lambda *a, **k: opened.append(a[0]) or original(*a, **k))
    record = VideoRecord(str(video), "a")
    cache = FrameCache(tmp_path / "cache", short_side=48)
    first = cache.frames(record)
    assert first.shape == (30, 48, 64, 3) and not first.flags.writeable
    cache.frames(record)
    assert len(opened) == 1

    small = FrameCache(tmp_path / "cache", short_side=24).frames(record)
    assert small.shape == (30, 24, 32, 3) and len(opened) == 2
    assert read_index(torch.from_numpy(np.ascontiguousarray(small[13])).permute(2, 0, 1)) == 13

    stat = video.stat()
    os.utime(video, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    cache.frames(record)
    assert len(opened) == 3, "a modified source must be decoded again"
    assert not list((tmp_path / "cache").rglob("*.partial.npy"))


def test_prepare_data_fills_the_cache_in_parallel_and_leaves_broken_videos_to_the_dataset(
        make_config, messy_tree, tmp_path: Path) -> None:
    """Every readable video of every split gets its entry before training (so the first epoch reads frames
    too); a video that probes fine but cannot be cached gets none, is returned with its reason and is reported
    by the dataset like any undecodable video."""
    from hydra.utils import instantiate

    root, bad = messy_tree
    cfg = make_config("data=folder", f"data.root={root}", f"data.frame_cache={tmp_path / 'cache'}",
                      "data.probe_workers=2", "data.val_fraction=0.2", "data.test_fraction=0.2")
    datamodule = instantiate(cfg.data, seed=0)
    datamodule.prepare_data()
    assert set(datamodule.quarantined) == set(bad)
    readable = [r for records in datamodule._index().values() for r in records if r.path not in bad]
    assert len(readable) == 48 and all(datamodule.frame_cache.entry(r).is_file() for r in readable)
    assert datamodule.frame_cache.fill(readable) == {}, "nothing left to build"

    # A file that breaks after probing: no entry, its reason returned, the dataset reports it.
    victim = readable[0]
    datamodule.frame_cache.entry(victim).unlink()
    Path(victim.path).write_bytes(b"garbage" * 100)
    failed = datamodule.frame_cache.fill(readable, workers=2)
    assert list(failed) == [victim.path] and failed[victim.path]
    assert not datamodule.frame_cache.entry(victim).is_file()
    sample = VideoClipDataset([victim], [victim.label], UniformSegmentSampler(4), lambda clip: clip,
                              frame_cache=datamodule.frame_cache)[0]
    assert sample.clip is None and [f.path for f in sample.failures] == [victim.path]
