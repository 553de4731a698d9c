"""The synthetic datasets: deterministic, rendered once and reused; the demo's classes differ only in temporal
order (pairs of a clip and its reversal), the appearance set's only in what a single frame shows."""

from __future__ import annotations

import colorsys
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from vidlstm.data.synthetic import (
    APPEARANCE_CLASSES,
    CLASS_PAIRS,
    COLOUR_SPREAD,
    COLOURS,
    DEMO_CLASSES,
    AppearanceDataset,
    DemoDataset,
    render_appearance_clip,
    render_clip,
)
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


# The appearance set: classes differ only in what a frame shows, frame order is irrelevant.

def _appearance_of(frame: np.ndarray) -> tuple[float, float]:
    """(hue in degrees of the shape's mean colour, the share of its enclosing circle it fills) read from one
    noise-free frame."""
    colours, counts = np.unique(frame.reshape(-1, 3), axis=0, return_counts=True)
    background = colours[counts.argmax()].astype(int)  # the shape covers under a fifth of the frame
    mask = (np.abs(frame.astype(int) - background).max(-1) > 4).astype(np.uint8)
    _, radius = cv2.minEnclosingCircle(np.argwhere(mask).astype(np.float32))
    fill = mask.sum() / (np.pi * radius**2)
    inner = cv2.erode(mask, np.ones((3, 3), np.uint8)).astype(bool)  # leave out edge pixels blended with the background
    r, g, b = frame[inner].astype(float).mean(0) / 255.0
    return colorsys.rgb_to_hsv(r, g, b)[0] * 360.0, fill


def test_appearance_render_is_deterministic_and_independent_of_the_other_classes() -> None:
    data = AppearanceDataset(root="unused", seed=3)
    first = data.render("train", "red_circle", 5)
    assert np.array_equal(first, AppearanceDataset(root="elsewhere", seed=3).render("train", "red_circle", 5))
    assert np.array_equal(first, AppearanceDataset(root="unused", seed=3, classes=("blue", "red_circle"))
                          .render("train", "red_circle", 5))
    assert not np.array_equal(first, AppearanceDataset(root="unused", seed=4).render("train", "red_circle", 5))
    assert not np.array_equal(first, data.render("train", "red_circle", 6))
    assert not np.array_equal(first, data.render("test", "red_circle", 5))
    assert not np.array_equal(first, data.render("train", "red_triangle", 5))


def test_appearance_classes_are_told_apart_by_any_single_frame() -> None:
    """Every frame shows its class: the shape's hue lies in the class's colour family and its outline is the
    class's (a circle fills its enclosing circle, a triangle about half of it), whatever the clip's texture, size,
    path and spin."""
    data = AppearanceDataset(root="unused", max_noise=0.0)
    assert len(data.classes) == 8
    for name in data.classes:
        colour, shape = name.split("_")
        for index in range(4):
            frames = data.render("train", name, index)
            for frame in frames[:: max(1, len(frames) // 4)]:
                hue, fill = _appearance_of(frame)
                off = abs((hue - COLOURS[colour] + 180.0) % 360.0 - 180.0)
                assert off <= COLOUR_SPREAD + 3.0, (name, index, hue)
                assert (0.35 < fill < 0.7) if shape == "triangle" else (fill > 0.85), (name, index, fill)


def test_reversing_an_appearance_clip_keeps_its_class_distribution() -> None:
    """A clip played backwards is the renderer's clip for the draw with start and end swapped, which is exactly
    as likely (both are drawn independently from one distribution); over many clips the motion goes either
    way equally often in every class."""
    for name in APPEARANCE_CLASSES:
        for seed in range(3):
            forward = render_appearance_clip(name, np.random.default_rng(seed), max_noise=0.0)
            backward = render_appearance_clip(name, np.random.default_rng(seed), max_noise=0.0, reverse=True)
            assert np.array_equal(forward, backward[::-1]) and not np.array_equal(forward, backward)
    data = AppearanceDataset(root="unused", max_noise=0.0, size=32, min_frames=4, max_frames=4)
    for name in ("red_circle", "blue_triangle"):
        rightwards = 0
        for index in range(60):
            mask = _foreground(data.render("train", name, index))
            cols = np.arange(mask.shape[2])
            x = (mask.sum(1) * cols).sum(1) / np.maximum(mask.sum((1, 2)), 1)
            rightwards += bool(x[-1] > x[0])
        assert 18 <= rightwards <= 42, (name, rightwards)  # 30 expected; this band holds with p > 0.999


def test_appearance_prepare_writes_the_configured_classes(tmp_path: Path) -> None:
    data = AppearanceDataset(root=str(tmp_path / "appearance"), train_per_class=2, val_per_class=1,
                             test_per_class=1, size=32, min_frames=6, max_frames=8, workers=0,
                             classes=["red", "striped_blue", "solid_blue"])
    root = data.prepare()
    assert sorted(p.name for p in (root / "train").iterdir()) == ["red", "solid_blue", "striped_blue"]
    assert len(list(root.glob("*/*/*.mp4"))) == 4 * 3
    assert json.loads((root / "meta.json").read_text()) == data.fingerprint() and data.is_ready()
    with open_video(root / "val" / "red" / "red_0000.mp4") as reader:
        decoded = reader.get_frames(range(reader.num_frames)).permute(0, 2, 3, 1).numpy()
    expected = data.render("val", "red", 0)
    assert decoded.shape == expected.shape
    assert np.abs(decoded.astype(int) - expected.astype(int)).mean() < 6.0


@pytest.mark.parametrize(("classes", "message"), [
    (["red", "red_circle"], r"classes 'red' and 'red_circle' can describe the same video"),
    (["red", "blue_cirle"], r"appearance class 'blue_cirle': 'cirle' is not a colour"),
    (["red_blue", "green"], r"appearance class 'red_blue': names two colours"),
    (["red"], r"needs 2 or more classes"),
])
def test_bad_appearance_classes_are_one_line_errors(classes: list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        AppearanceDataset(root="unused", classes=classes)
    assert "\n" not in str(caught.value)
