"""Honest numbers: a video that fails outside training is left out and listed, never replaced by another one,
and the summary says what the metrics stand on (videos scored and failed, whether test is the validation set)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

from vidlstm.training.train import train

from .conftest import assert_test_metrics_add_up


def _test_list(tmp_path: Path, tiny_demo, name: str, truncated: bool) -> Path:
    """The tiny demo's 16 test videos as a list file, plus (``truncated``) a broken copy of one of them."""
    videos = sorted(Path(tiny_demo.split_dir("test")).glob("*/*.mp4"))
    lines = [f"{v} {v.parent.name}" for v in videos]
    if truncated:
        broken = tmp_path / "broken" / "grow_truncated.mp4"
        broken.parent.mkdir(exist_ok=True)
        broken.write_bytes(videos[0].read_bytes()[:600])
        lines.insert(5, f"{broken} grow")
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def _source(split: str, list_file: Path) -> list[str]:
    return [f"~data.{split}", f"+data.{split}={{_target_:vidlstm.data.index.ListFileSource,list_file:{list_file}}}"]


def _run(make_config, test_list: Path, *extra: str) -> dict:
    # train=false: the seeded, untrained network scores every video; its accuracy is far from 0 and 1, so a
    # substituted or double-counted video would change it.
    summary, _ = train(make_config("train=false", *_source("test", test_list), *extra))
    return summary


@pytest.mark.parametrize("probe", [False, True], ids=["fails_while_testing", "quarantined_at_startup"])
def test_a_broken_test_video_is_left_out_and_named_not_replaced(make_config, tiny_demo, tmp_path: Path,
                                                                 probe: bool) -> None:
    options = (f"data.probe={str(probe).lower()}", "data.max_bad_fraction=0.5", "data.eval_batch_size=4")
    clean = _run(make_config, _test_list(tmp_path, tiny_demo, "clean.txt", False), *options)
    messy = _run(make_config, _test_list(tmp_path, tiny_demo, "messy.txt", True), *options)
    assert_test_metrics_add_up(clean, 16)
    assert_test_metrics_add_up(messy, 16)
    assert 0.05 < clean["test/acc"] < 0.95, "an untrained model should be neither all right nor all wrong"
    for key in ("test/acc", "test/mean_class_acc", "test/confusion_matrix"):
        assert messy[key] == clean[key], key
    assert clean["test/videos_failed"] == 0 and messy["test/videos_failed"] == 1
    [failed] = messy["failed_videos"]
    assert failed["path"].endswith("grow_truncated.mp4") and failed["split"] == "test"
    assert failed["stage"] == ("index" if probe else "test") and failed["reason"]
    with open(Path(messy["output_dir"]) / "bad_videos.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(Path(r["path"]).name, r["stage"]) for r in rows] == [("grow_truncated.mp4", failed["stage"])]


def test_summary_says_when_test_is_the_validation_set(make_config, tiny_demo, tmp_path: Path, caplog) -> None:
    val_list = _test_list(tmp_path, tiny_demo, "val.txt", False)
    with caplog.at_level(logging.WARNING):
        summary, _ = train(make_config("train=false", *_source("val", val_list), *_source("test", val_list)))
    assert summary["test_is_val"] is True
    assert any("test split is the validation split" in r.getMessage() for r in caplog.records)
    separate, _ = train(make_config("train=false"))
    assert separate["test_is_val"] is False
