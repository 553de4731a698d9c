"""Dataset sources on generated trees: class folders, list files, CSV segments, UCF101 and HMDB51 splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vidlstm.data.dataset import VideoClipDataset
from vidlstm.data.index import (
    ClassFolderSource,
    HMDB51SplitSource,
    ListFileSource,
    UCF101SplitSource,
    VideoRecord,
    stable_split,
)
from vidlstm.data.sampling import UniformSegmentSampler

from .video_factory import index_frame, read_index, write_video


def _touch(root: Path, relative: str) -> str:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"video")
    return str(path)


def test_class_folders_recursive_any_extension(tmp_path: Path) -> None:
    paths = [_touch(tmp_path, p) for p in ["jump/a.mp4", "jump/day2/b.AVI", "run/c.webm", "run/.hidden.mp4"]]
    _touch(tmp_path, "run/notes.txt")
    records = ClassFolderSource(tmp_path).records()
    assert records == [VideoRecord(paths[0], "jump"), VideoRecord(paths[1], "jump"), VideoRecord(paths[2], "run")]
    with pytest.raises(FileNotFoundError, match="no such directory"):
        ClassFolderSource(tmp_path / "missing").records()


def test_text_list_with_spaces_and_named_integer_labels(tmp_path: Path) -> None:
    (tmp_path / "classes.txt").write_text("brush teeth\njuggle\n")
    (tmp_path / "train.txt").write_text("clips/my clip.mp4 1\n# comment\n/abs/other.avi 0\n\n")
    records = ListFileSource(tmp_path / "train.txt", class_names_file=tmp_path / "classes.txt").records()
    assert records == [VideoRecord(str(tmp_path / "clips/my clip.mp4"), "juggle"),
                       VideoRecord("/abs/other.avi", "brush teeth")]
    (tmp_path / "bad.txt").write_text("only_a_path.mp4\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: expected '<path> <label>'"):
        ListFileSource(tmp_path / "bad.txt").records()


def test_csv_segments_are_sampled_inside_the_segment(tmp_path: Path) -> None:
    long_video = write_video(tmp_path / "long.mp4", np.stack([index_frame(i) for i in range(60)]), fps=10)
    (tmp_path / "segments.csv").write_text(f"path,label,start_s,end_s\n{long_video.name},wave,2.0,3.5\n"
                                           f"{long_video.name},clap,,\n")
    records = ListFileSource(tmp_path / "segments.csv").records()
    assert records[0] == VideoRecord(str(long_video), "wave", 2.0, 3.5) and records[1].start_s is None
    dataset = VideoClipDataset(records, ["clap", "wave"], UniformSegmentSampler(5), lambda clip: clip)
    assert [read_index(f) for f in dataset[0].clip] == [21, 24, 27, 30, 33]  # centres of 5 segments of 20..34
    assert [read_index(f) for f in dataset[1].clip] == [6, 18, 30, 42, 54]
    (tmp_path / "backwards.csv").write_text("path,label,start_s,end_s\nx.mp4,a,3,1\n")
    with pytest.raises(ValueError, match=r"backwards\.csv:2: end_s 1\.0 is not after start_s 3\.0"):
        ListFileSource(tmp_path / "backwards.csv").records()


def test_ucf101_official_split_files(tmp_path: Path) -> None:
    splits = tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    (splits / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Basketball\n")
    (splits / "trainlist01.txt").write_text("ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
                                            "Basketball/v_Basketball_g08_c02.avi 2\n")
    (splits / "testlist01.txt").write_text("Basketball/v_Basketball_g01_c01.avi\n")
    root = tmp_path / "UCF-101"
    train = UCF101SplitSource(root, splits, split=1, subset="train").records()
    test = UCF101SplitSource(root, splits, split=1, subset="test").records()
    assert train == [VideoRecord(str(root / "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"), "ApplyEyeMakeup"),
                     VideoRecord(str(root / "Basketball/v_Basketball_g08_c02.avi"), "Basketball")]
    assert test == [VideoRecord(str(root / "Basketball/v_Basketball_g01_c01.avi"), "Basketball")]
    with pytest.raises(FileNotFoundError, match=r"trainlist02\.txt: UCF101 split list not found"):
        UCF101SplitSource(root, splits, split=2).records()


def test_hmdb51_official_split_files(tmp_path: Path) -> None:
    splits = tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    (splits / "brush_hair_test_split1.txt").write_text("a.avi 1\nb.avi 2\nc.avi 0\n")
    (splits / "cartwheel_test_split1.txt").write_text("d.avi 1 \n")
    (splits / "cartwheel_test_split2.txt").write_text("d.avi 2\n")
    root = tmp_path / "hmdb51"
    train = HMDB51SplitSource(root, splits, split=1, subset="train").records()
    assert train == [VideoRecord(str(root / "brush_hair/a.avi"), "brush_hair"),
                     VideoRecord(str(root / "cartwheel/d.avi"), "cartwheel")]
    assert HMDB51SplitSource(root, splits, split=1, subset="test").records() == [
        VideoRecord(str(root / "brush_hair/b.avi"), "brush_hair")]
    assert [r.label for r in HMDB51SplitSource(root, splits, split=2, subset="test").records()] == ["cartwheel"]


def test_stable_split_does_not_move_when_others_change() -> None:
    paths = [f"/data/class{i % 3}/video{i}.mp4" for i in range(2000)]
    assignment = {p: stable_split(p, 0.1, 0.2) for p in paths}
    shares = {s: sum(v == s for v in assignment.values()) / len(paths) for s in ("train", "val", "test")}
    assert abs(shares["val"] - 0.1) < 0.03 and abs(shares["test"] - 0.2) < 0.03
    assert {p: stable_split(p, 0.1, 0.2) for p in reversed(paths[:500])} == {p: assignment[p] for p in paths[:500]}
    with pytest.raises(ValueError, match="sum below 1"):
        stable_split("/x.mp4", 0.6, 0.5)
