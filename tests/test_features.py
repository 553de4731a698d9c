"""Feature-cache training: same accuracy as end-to-end training with the same frozen encoder, features
reused across runs and recomputed when any setting they depend on changes, extracted once (rank 0's
``prepare_data``) and read by every rank's ``setup``."""

from __future__ import annotations

import csv
import inspect
import json
import shutil
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision.transforms import v2

from vidlstm.data.datamodule import VideoDataModule
from vidlstm.data.dataset import VideoClipDataset
from vidlstm.data.index import ClassFolderSource, VideoRecord
from vidlstm.data.sampling import DenseClipSampler, MultiClipSampler, UniformSegmentSampler
from vidlstm.data.transforms import ClipTransform, eval_transform, train_transform
from vidlstm.models.encoders import FrameEncoder
from vidlstm.training.features import FeatureCache, FeatureDataModule, describe
from vidlstm.training.train import train

FROZEN_EVAL = ["model.encoder.freeze=all", "data.train_sampler.jitter=false",
               "~data.train_transform", "+data.train_transform={_target_:vidlstm.data.transforms.eval_transform,"
               "_partial_:true,mean:null,std:null,interpolation:null}", "trainer.max_epochs=3",
               "callbacks.early_stopping=null"]


def _val_acc_per_epoch(output_dir: str) -> list[float]:
    rows = csv.DictReader((Path(output_dir) / "metrics.csv").open())
    return [float(r["val/acc"]) for r in rows if r.get("val/acc")]


@pytest.mark.slow
def test_feature_cache_training_matches_end_to_end(make_config, tmp_path: Path) -> None:
    end_to_end, _ = train(make_config(*FROZEN_EVAL))
    cached, objects = train(make_config(*FROZEN_EVAL, "data.feature_cache=true", "data.feature_dtype=float32",
                                        f"data.feature_cache_dir={tmp_path / 'features'}"))
    assert objects["module"].inputs == "features"
    assert _val_acc_per_epoch(cached["output_dir"]) == _val_acc_per_epoch(end_to_end["output_dir"])
    assert cached["test/acc"] == end_to_end["test/acc"]
    assert cached["feature_extraction_s"] > 0
    files = list((tmp_path / "features").rglob("*.npy"))
    assert len(files) == sum(len(objects["datamodule"].datasets[s]) for s in ("train", "val", "test"))


@pytest.mark.slow
def test_features_are_reused_and_invalidated(make_config, tmp_path: Path) -> None:
    store = f"data.feature_cache_dir={tmp_path / 'features'}"
    first, _ = train(make_config(*FROZEN_EVAL, "data.feature_cache=true", store, "trainer.max_epochs=1",
                                 "test=false"))
    count = len(list((tmp_path / "features").rglob("*.npy")))
    again, _ = train(make_config(*FROZEN_EVAL, "data.feature_cache=true", store, "trainer.max_epochs=1",
                                 "test=false"))
    assert len(list((tmp_path / "features").rglob("*.npy"))) == count, "same settings: nothing recomputed"
    assert again["feature_extraction_s"] < first["feature_extraction_s"]
    train(make_config(*FROZEN_EVAL, "data.feature_cache=true", store, "trainer.max_epochs=1", "test=false",
                      "seed=1"))  # other random weights: a different encoder fingerprint
    assert len(list((tmp_path / "features").rglob("*.npy"))) == 2 * count
    train(make_config(*FROZEN_EVAL, "data.feature_cache=true", store, "trainer.max_epochs=1", "test=false",
                      "data.num_frames=6"))  # other sampling
    assert len(list((tmp_path / "features").rglob("*.npy"))) == 3 * count


def test_feature_cache_refuses_a_trainable_encoder(make_config, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs a frozen encoder: set model\.encoder\.freeze=all"):
        train(make_config("data.feature_cache=true", f"data.feature_cache_dir={tmp_path}"))


# --- the key: every setting the features depend on, nothing process-specific ---------------------------------

def _encoder(seed: int = 0) -> FrameEncoder:
    torch.manual_seed(seed)
    return FrameEncoder("tiny", freeze="all")


@pytest.fixture
def video(tiny_demo) -> VideoRecord:
    return VideoRecord(str(next(Path(tiny_demo.split_dir("train")).glob("grow/*.mp4"))), "grow")


def _key(video: VideoRecord, sampler: Any = None, transform: Any = None, encoder: FrameEncoder | None = None,
         dtype: str = "float16", frame_cache: Any = None) -> str:
    dataset = VideoClipDataset([video], ["grow"], sampler or UniformSegmentSampler(8),
                               transform or eval_transform(32), frame_cache=frame_cache)
    return FeatureCache("unused", encoder or _encoder(), dtype).keys(dataset)[0]


# (class, base arguments, another value for each argument)
SAMPLERS = [
    (UniformSegmentSampler, dict(num_frames=8, jitter=False, offset=0.5), dict(num_frames=6, jitter=True, offset=0.25)),
    (DenseClipSampler, dict(num_frames=8, frame_interval=1, jitter=False, short_video="loop", position=0.5),
     dict(num_frames=6, frame_interval=2, jitter=True, short_video="repeat_last", position=0.0)),
    (MultiClipSampler, dict(num_frames=8, num_clips=5, clip="segments", frame_interval=1, short_video="loop"),
     dict(num_frames=6, num_clips=3, clip="dense", frame_interval=2, short_video="repeat_last")),
]


@pytest.mark.parametrize(("cls", "base", "changes"), SAMPLERS, ids=[s[0].__name__ for s in SAMPLERS])
def test_every_sampler_argument_changes_the_key(video: VideoRecord, cls: type, base: dict, changes: dict) -> None:
    assert set(changes) == set(inspect.signature(cls).parameters), "a constructor argument is not tested"
    encoder = _encoder()
    reference = _key(video, cls(**base), encoder=encoder)
    assert _key(video, cls(**base), encoder=encoder) == reference, "equal samplers built twice: same key"
    for name, value in changes.items():
        assert _key(video, cls(**{**base, name: value}), encoder=encoder) != reference, f"{cls.__name__}.{name}"


TRANSFORM_BASE = dict(size=32, resize=None, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
                      interpolation="bilinear")
TRANSFORM_CHANGES = dict(size=28, resize=40, mean=(0.5, 0.456, 0.406), std=(0.229, 0.224, 0.25),
                         interpolation="bicubic")


def test_every_transform_setting_changes_the_key(video: VideoRecord) -> None:
    assert set(TRANSFORM_CHANGES) == set(inspect.signature(eval_transform).parameters)
    encoder = _encoder()
    reference = _key(video, transform=eval_transform(**TRANSFORM_BASE), encoder=encoder)
    assert _key(video, transform=eval_transform(**TRANSFORM_BASE), encoder=encoder) == reference
    for name, value in TRANSFORM_CHANGES.items():
        changed = eval_transform(**{**TRANSFORM_BASE, name: value})
        assert _key(video, transform=changed, encoder=encoder) != reference, name

    def resize(**options: Any) -> ClipTransform:
        return ClipTransform([v2.Resize(32, **{"antialias": True, **options}), v2.ToDtype(torch.float32, scale=True)])

    plain = _key(video, transform=resize(), encoder=encoder)
    assert _key(video, transform=resize(), encoder=encoder) == plain
    assert _key(video, transform=resize(antialias=False), encoder=encoder) != plain
    assert _key(video, transform=resize(interpolation=v2.InterpolationMode.NEAREST), encoder=encoder) != plain
    assert _key(video, transform=resize(max_size=40), encoder=encoder) != plain
    assert _key(video, transform=train_transform(32), encoder=encoder) != reference


def test_encoder_weights_dtype_and_frame_source_change_the_key(video: VideoRecord, tmp_path: Path) -> None:
    from vidlstm.data.cache import FrameCache

    encoder = _encoder()
    reference = _key(video, encoder=encoder)
    assert _key(video, encoder=_encoder()) == reference, "equal weights built twice: same key"
    assert _key(video, encoder=_encoder(seed=1)) != reference
    assert _key(video, encoder=encoder, dtype="float32") != reference
    assert _key(video, encoder=encoder, frame_cache=FrameCache(tmp_path, 32)) != reference
    assert _key(video, encoder=encoder, frame_cache=FrameCache(tmp_path, 48)) != _key(
        video, encoder=encoder, frame_cache=FrameCache(tmp_path, 32))
    with torch.no_grad():  # the weights change after the cache was made: the key follows them
        encoder.trunk[0].weight[0, 0, 0, 0] += 1
    changed = _key(video, encoder=encoder)
    assert changed != reference
    with torch.no_grad():  # a buffer (BatchNorm statistics) counts too
        encoder.trunk[1].running_mean[0] += 1
    assert _key(video, encoder=encoder) != changed


def test_the_key_is_the_same_in_another_process(video: VideoRecord) -> None:
    settings = describe([UniformSegmentSampler(8), DenseClipSampler(8, 2), MultiClipSampler(8, 3, "dense"),
                         eval_transform(32, 40)])
    assert "0x" not in json.dumps(settings), "no memory addresses in a description"
    code = ("import json, sys, torch\n"
            "from vidlstm.data.dataset import VideoClipDataset\n"
            "from vidlstm.data.index import VideoRecord\n"
            "from vidlstm.data.sampling import MultiClipSampler\n"
            "from vidlstm.data.transforms import eval_transform\n"
            "from vidlstm.models.encoders import FrameEncoder\n"
            "from vidlstm.training.features import FeatureCache\n"
            "torch.manual_seed(0)\n"
            "encoder = FrameEncoder('tiny', freeze='all')\n"
            "dataset = VideoClipDataset([VideoRecord(sys.argv[1], 'grow')], ['grow'], MultiClipSampler(8, 3, 'dense'),"
            " eval_transform(32, 40))\n"
            "print(FeatureCache('unused', encoder).keys(dataset)[0])\n")
    other = subprocess.run([sys.executable, "-c", code, video.path], capture_output=True, text=True, check=True)
    assert other.stdout.strip() == _key(video, MultiClipSampler(8, 3, "dense"), eval_transform(32, 40))


# --- extraction once (prepare_data), reading everywhere (setup) -----------------------------------------------

@pytest.fixture
def tree_with_bad_videos(tmp_path: Path, tiny_demo) -> tuple[Path, dict[str, str]]:
    """Two classes of the tiny demo in train/val/test folders, plus a broken file in train and in val."""
    root = tmp_path / "videos"
    for split in ("train", "val", "test"):
        for name in ("grow", "shrink"):
            shutil.copytree(Path(tiny_demo.split_dir(split)) / name, root / split / name)
    good = next((root / "train" / "grow").glob("*.mp4"))
    bad = {root / "train" / "grow" / "truncated.mp4": good.read_bytes()[: good.stat().st_size // 3],
           root / "val" / "shrink" / "zero_bytes.mp4": b""}
    for path, content in bad.items():
        path.write_bytes(content)
    return root, {str(path): split for path, split in zip(bad, ("train", "val"), strict=True)}


def _features(root: Path, cache_dir: Path, report: Path | None = None) -> FeatureDataModule:
    """A feature datamodule as each rank builds it: its own videos module and its own (equal) encoder."""
    videos = VideoDataModule(
        train=ClassFolderSource(root / "train"), val=ClassFolderSource(root / "val"),
        test=ClassFolderSource(root / "test"), train_sampler=partial(UniformSegmentSampler, jitter=True),
        eval_sampler=UniformSegmentSampler, test_sampler=partial(MultiClipSampler, num_clips=2),
        train_transform=train_transform, eval_transform=eval_transform, num_frames=4, image_size=32,
        batch_size=4, num_workers=0, probe=False, feature_cache=True, feature_cache_dir=str(cache_dir))
    return FeatureDataModule(videos, FeatureCache(cache_dir, _encoder(), "float32"), report=report)


def test_prepare_data_extracts_once_and_setup_reads_it_on_every_rank(tree_with_bad_videos, tmp_path: Path) -> None:
    root, bad = tree_with_bad_videos
    cache_dir, report = tmp_path / "features", tmp_path / "bad_videos.csv"
    rank0 = _features(root, cache_dir, report)
    rng = torch.get_rng_state()
    rank0.prepare_data()
    assert torch.equal(torch.get_rng_state(), rng), "extraction leaves the global RNG where it was"
    videos = sum(len(rank0.videos.splits[s]) for s in ("train", "val", "test"))
    assert rank0.extract_count == videos and rank0.extraction_s is not None
    assert len(list(cache_dir.rglob("*.npy"))) == videos - len(bad)
    assert len(list(cache_dir.rglob("*.failed.json"))) == len(bad)
    assert not list(cache_dir.rglob("*.partial"))
    with open(report, newline="") as f:
        rows = {row["path"]: row for row in csv.DictReader(f)}
    assert {path: row["stage"] for path, row in rows.items()} == {p: f"{s} features" for p, s in bad.items()}
    assert all(row["reason"] for row in rows.values())
    rank0.prepare_data()  # Lightning calls it again for trainer.test: nothing extracted or reported twice
    assert rank0.extract_count == videos and len(report.read_text().splitlines()) == 1 + len(bad)
    rank0.setup(None)

    rank1 = _features(root, cache_dir)
    rank1.setup("fit")
    rank1.setup("test")
    assert rank1.extract_count == 0 and rank1.extraction_s is None
    for split in ("train", "val", "test"):
        ours, theirs = rank0.datasets[split], rank1.datasets[split]
        assert len(ours) == len(rank0.videos.splits[split]) - sum(s == split for s in bad.values())
        assert ours.labels == theirs.labels and ours.files == theirs.files
        assert all(torch.equal(a, b) for a, b in zip(ours.features, theirs.features, strict=True))
        assert rank1.failures[split] == rank0.failures[split]
        assert {f.path for f in rank1.failures[split]} == {p for p, s in bad.items() if s == split}
    assert rank1.class_names == ["grow", "shrink"]
    assert rank1.class_counts("train") == {"grow": 6, "shrink": 6}, "the broken file is not counted"

    # The stored values are the encoder's trunk features of the evaluation clip (multi-clip for test).
    clips = rank1._clips("test")
    record = next(r for r in clips.records if r.path not in bad)
    with torch.no_grad():
        clip = clips.load_clip(record)  # (N, T, 3, H, W)
        expected = rank1.cache.encoder.eval().trunk_features(clip.flatten(0, 1)).view(*clip.shape[:2], -1)
    stored = rank1.datasets["test"][clips.records.index(record)].clip
    assert stored.shape == (2, 4, expected.shape[-1]) and torch.allclose(stored, expected, atol=1e-5)
    batch = next(iter(rank1.train_dataloader()))
    assert batch.clips.shape == (4, 4, expected.shape[-1]) and batch.labels.shape == (4,)

    again = _features(root, cache_dir)
    again.prepare_data()  # a later run: everything is stored, failures included
    assert again.extract_count == 0


def test_setup_without_prepare_data_names_the_missing_video(tree_with_bad_videos, tmp_path: Path) -> None:
    root, _ = tree_with_bad_videos
    features = _features(root, tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"^\S+\.mp4: features missing: run prepare_data first$"):
        features.setup("fit")
    assert features.extract_count == 0 and not (tmp_path / "empty").exists()
