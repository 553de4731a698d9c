"""The demo dataset: deterministic, order-only class pairs, rendered once and reused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vidlstm.data.synthetic import CLASS_PAIRS, DEMO_CLASSES, DemoDataset, render_clip
from vidlstm.data.video import open_video


def _foreground(frames: np.ndarray) -> np.ndarray:
    """(N, H, W) bool: pixels clearly brighter than the frame's median (the shape; backgrounds are dark)."""
    lum = frames.astype(np.float32).mean(axis=-1)
    return lum > np.median(lum, axis=(1, 2), keepdims=True) + 40


def test_render_is_deterministic_in_seed_split_class_index() -> None:
    demo = DemoDataset(root="unused", seed=3)
    first = demo.render("train", "grow", 5)
    assert np.array_equal(first, DemoDataset(root="elsewhere", seed=3).render("train", "grow", 5))
    assert not np.array_equal(first, DemoDataset(root="unused", seed=4).render("train", "grow", 5))
    assert not np.array_equal(first, demo.render("train", "grow", 6))
    assert not np.array_equal(first, demo.render("val", "grow", 5))


def test_classes_come_in_pairs_of_opposite_direction() -> None:
    assert len(DEMO_CLASSES) >= 6 and len(set(DEMO_CLASSES)) == len(DEMO_CLASSES)
    demo = DemoDataset(root="unused", max_noise=0.0)
    for index in range(4):
        def x_centre(name: str, i: int = index) -> np.ndarray:
            mask = _foreground(demo.render("train", name, i))
            cols = np.arange(mask.shape[2])
            return (mask.sum(1) * cols).sum(1) / mask.sum((1, 2))

        def area(name: str, i: int = index) -> np.ndarray:
            return _foreground(demo.render("train", name, i)).sum((1, 2))

        assert np.all(np.diff(x_centre("move_right")) > 0) and np.all(np.diff(x_centre("move_left")) < 0)
        assert area("grow")[-1] > 3 * area("grow")[0] and area("shrink")[0] > 3 * area("shrink")[-1]
        assert area("appear")[0] < area("appear")[-1] and area("vanish")[0] > area("vanish")[-1]


def test_second_class_of_a_pair_is_the_first_reversed_in_time() -> None:
    """Same frame distribution within a pair: only the order tells the classes apart."""
    for first, second in CLASS_PAIRS:
        for seed in range(3):
            a = render_clip(first, np.random.default_rng(seed), max_noise=0.0)
            b = render_clip(second, np.random.default_rng(seed), max_noise=0.0)
            assert np.array_equal(a, b[::-1])
            assert not np.array_equal(a, b)


def test_prepare_writes_decodable_videos_and_reuses_them(tmp_path: Path) -> None:
    demo = DemoDataset(root=str(tmp_path / "demo"), train_per_class=2, val_per_class=1, test_per_class=1,
                       size=32, min_frames=6, max_frames=8, max_noise=0.0, workers=0)
    root = demo.prepare()
    videos = sorted(root.glob("*/*/*.mp4"))
    assert len(videos) == 4 * len(DEMO_CLASSES)
    assert json.loads((root / "meta.json").read_text()) == demo.fingerprint()
    with open_video(root / "train" / "grow" / "grow_0001.mp4") as reader:
        decoded = reader.get_frames(range(reader.num_frames)).permute(0, 2, 3, 1).numpy()
    expected = demo.render("train", "grow", 1)
    assert decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - expected.astype(int)).mean() < 4.0

    mtimes = {p: p.stat().st_mtime_ns for p in videos}
    demo.prepare()
    assert {p: p.stat().st_mtime_ns for p in videos} == mtimes, "an unchanged dataset must be reused"

    changed = DemoDataset(**{**demo.__dict__, "train_per_class": 3})
    changed.prepare()
    assert len(list(root.glob("train/*/*.mp4"))) == 3 * len(DEMO_CLASSES)
    assert not (root.parent / "demo.partial").exists()


def test_bad_frame_range_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="min_frames"):
        DemoDataset(root=str(tmp_path / "d"), min_frames=10, max_frames=5).prepare()
