"""Action segments from window predictions: hysteresis, smoothing, the score threshold, and segments tiling
the timeline at the midpoints between window centres."""

from __future__ import annotations

import pytest
import torch

from vidlstm.inference.segments import SegmentTracker, segments_of

NAMES = ["walk", "run", "jump"]


def _windows(labels: str, stride: float = 1.0, window: float = 2.0, confidence: float = 0.9) -> list:
    """One window per letter (w/r/j; '.' = unsure), ``window`` s long every ``stride`` s."""
    out = []
    for k, letter in enumerate(labels):
        probs = torch.full((3,), (1 - confidence) / 2)
        if letter == ".":
            probs = torch.full((3,), 1 / 3)
        else:
            probs["wrj".index(letter)] = confidence
        out.append((k * stride, k * stride + window, probs))
    return out


def test_a_short_flicker_is_absorbed_and_a_held_label_starts_at_its_run() -> None:
    segments = segments_of(_windows("wwwwrwwwjjjjj"), NAMES, min_duration_s=2.0, smoothing="none")
    assert [(s["label"], s["start_s"], s["end_s"]) for s in segments] == [("walk", 0.0, 8.5), ("jump", 8.5, 14.0)]
    # walk's score averages its windows' walk probability, the run flicker's 0.05 included
    assert segments[0]["score"] == pytest.approx((7 * 0.9 + 0.05) / 8, abs=1e-6)
    assert all(s["kind"] == "segment" for s in segments)


def test_min_duration_zero_follows_every_change() -> None:
    segments = segments_of(_windows("wwrww"), NAMES, min_duration_s=0.0, smoothing="none")
    assert [(s["label"], s["start_s"], s["end_s"]) for s in segments] == [
        ("walk", 0.0, 2.5), ("run", 2.5, 3.5), ("walk", 3.5, 6.0)]


def test_unsure_windows_close_segments_below_min_score() -> None:
    segments = segments_of(_windows("www...rrr"), NAMES, min_duration_s=1.0, smoothing="none", min_score=0.5)
    assert [(s["label"], s["start_s"], s["end_s"]) for s in segments] == [("walk", 0.0, 3.5), ("run", 6.5, 10.0)]


def test_mean_smoothing_delays_a_change_and_ema_weights_the_newest() -> None:
    tracker = SegmentTracker(NAMES, smoothing="mean", smoothing_windows=3)
    first = tracker.smooth(torch.tensor([1.0, 0.0, 0.0]))
    second = tracker.smooth(torch.tensor([0.0, 1.0, 0.0]))
    assert first.tolist() == [1.0, 0.0, 0.0] and second.tolist() == [0.5, 0.5, 0.0]
    ema = SegmentTracker(NAMES, smoothing="ema", ema_alpha=0.25)
    ema.smooth(torch.tensor([1.0, 0.0, 0.0]))
    assert ema.smooth(torch.tensor([0.0, 1.0, 0.0])).tolist() == [0.75, 0.25, 0.0]
    smoothed = segments_of(_windows("wwwwrrrrrr"), NAMES, min_duration_s=0.0, smoothing="mean", smoothing_windows=3)
    assert [(s["label"], s["start_s"]) for s in smoothed] == [("walk", 0.0), ("run", 5.5)]  # one window later


def test_segments_close_as_soon_as_the_next_label_holds() -> None:
    tracker = SegmentTracker(NAMES, min_duration_s=2.0, smoothing="none")
    closed = [tracker.update(start, end, probs) for start, end, probs in _windows("wwwrrr")]
    assert [len(c) for c in closed] == [0, 0, 0, 0, 1, 0]  # run held 2 s after its second window: walk closes
    assert closed[4][0]["label"] == "walk" and tracker.finish()[0]["label"] == "run"


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="smoothing must be one of"):
        SegmentTracker(NAMES, smoothing="median")
    with pytest.raises(ValueError, match="smoothing_windows >= 1"):
        SegmentTracker(NAMES, smoothing_windows=0)


@pytest.mark.parametrize(("config", "overrides"), [
    ("stream", ["ckpt_path=best.ckpt", "source=0", "output=events.jsonl", "window=2", "stride=1"]),
    ("serve", ["ckpt_path=best.ckpt", "host=127.0.0.1", "port=8000"]),
    ("predict", ["ckpt_path=best.ckpt", "input=long.mp4", "window=2", "stride=1"]),
])
def test_the_entry_configs_compose_with_the_shared_segment_settings(config: str, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vidlstm.conf", version_base="1.3"):
        cfg = compose(config, overrides=overrides)
    GlobalHydra.instance().clear()
    tracker = SegmentTracker(NAMES, **cfg.segments)  # every segment key is a tracker setting
    assert (tracker.min_duration_s, tracker.smoothing) == (1.0, "mean")
