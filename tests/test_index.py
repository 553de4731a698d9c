"""Dataset sources on generated trees: class folders, list files, CSV segments, UCF101 and HMDB51 splits, and
group-aware carving of val/test out of one list."""

from __future__ import annotations

from collections import defaultdict
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
    carve_splits,
    hmdb51_group,
    stable_split,
    ucf101_group,
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


def test_class_folders_read_transport_streams_and_report_what_they_pass_over(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Recordings come as MPEG-TS (.ts, camcorders' .mts/.m2ts), DVDs as .vob: read as videos (and decoded
    frame-exactly: the frames of a real .mts file spell their index). Other files are passed over and counted by
    ending in one log line; `extensions` names the endings to read (GIFs here)."""
    frames = np.stack([index_frame(i) for i in range(12)])
    (tmp_path / "walk" / "day1").mkdir(parents=True)
    recorded = write_video(tmp_path / "walk" / "day1" / "cam.mts", frames, options={"bf": "2", "g": "4"})
    names = ["walk/b.TS", "walk/c.m2ts", "walk/d.vob", "walk/e.ogv", "walk/f.mxf", "walk/notes.txt", "walk/g.gif",
             "walk/h.json", "walk/i.txt", "walk/README", "walk/._cam.mts", "walk/.AppleDouble/b.TS",
             "walk/day1/.Trashes/old.mp4"]
    touched = {name: _touch(tmp_path, name) for name in names}
    with caplog.at_level("INFO", logger="vidlstm.data.index"):
        records = ClassFolderSource(tmp_path).records()
    assert [r.path for r in records] == [touched["walk/b.TS"], touched["walk/c.m2ts"], touched["walk/d.vob"],
                                         touched["walk/e.ogv"], touched["walk/f.mxf"], str(recorded)]
    assert [line for line in caplog.messages if "passed over" in line] == [
        f"{tmp_path}: passed over 5 files not named as videos (.txt 2, (no ending) 1, .gif 1, .json 1): the "
        "source's `extensions` names the endings read"]
    dataset = VideoClipDataset([r for r in records if r.path == str(recorded)], ["walk"],
                               UniformSegmentSampler(12), lambda clip: clip)
    assert [read_index(f) for f in dataset[0][0]] == list(range(12))
    gifs = ClassFolderSource(tmp_path, extensions=["GIF", ".TXT"]).records()
    assert [r.path for r in gifs] == [touched["walk/g.gif"], touched["walk/i.txt"], touched["walk/notes.txt"]]
    assert [r.path for r in ClassFolderSource(tmp_path, extensions="gif").records()] == [touched["walk/g.gif"]]
    with pytest.raises(ValueError, match="extensions: expected file endings"):
        ClassFolderSource(tmp_path, extensions=[])


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
    assert train == [VideoRecord(str(root / "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"), "ApplyEyeMakeup",
                                 group="ApplyEyeMakeup_g08"),
                     VideoRecord(str(root / "Basketball/v_Basketball_g08_c02.avi"), "Basketball",
                                 group="Basketball_g08")]
    assert test == [VideoRecord(str(root / "Basketball/v_Basketball_g01_c01.avi"), "Basketball",
                                group="Basketball_g01")]
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
    assert train == [VideoRecord(str(root / "brush_hair/a.avi"), "brush_hair", group="a"),
                     VideoRecord(str(root / "cartwheel/d.avi"), "cartwheel", group="d")]
    assert HMDB51SplitSource(root, splits, split=1, subset="test").records() == [
        VideoRecord(str(root / "brush_hair/b.avi"), "brush_hair", group="b")]
    assert [r.label for r in HMDB51SplitSource(root, splits, split=2, subset="test").records()] == ["cartwheel"]


def test_stable_split_does_not_move_when_others_change() -> None:
    paths = [f"/data/class{i % 3}/video{i}.mp4" for i in range(2000)]
    assignment = {p: stable_split(p, 0.1, 0.2) for p in paths}
    shares = {s: sum(v == s for v in assignment.values()) / len(paths) for s in ("train", "val", "test")}
    assert abs(shares["val"] - 0.1) < 0.03 and abs(shares["test"] - 0.2) < 0.03
    assert {p: stable_split(p, 0.1, 0.2) for p in reversed(paths[:500])} == {p: assignment[p] for p in paths[:500]}
    with pytest.raises(ValueError, match="sum below 1"):
        stable_split("/x.mp4", 0.6, 0.5)


# --- group-aware carving -------------------------------------------------------------------------------------------

def _groups_by_split(splits: dict[str, list[VideoRecord]]) -> dict[str, set[str]]:
    return {split: {r.group for r in records if r.group is not None} for split, records in splits.items()}


def _assert_groups_disjoint(splits: dict[str, list[VideoRecord]]) -> dict[str, set[str]]:
    groups = _groups_by_split(splits)
    assert not groups["train"] & groups["val"] and not groups["train"] & groups["test"] \
        and not groups["val"] & groups["test"], "a group spans two splits"
    return groups


def _split_of(splits: dict[str, list[VideoRecord]]) -> dict[str, str]:
    return {r.path: split for split, records in splits.items() for r in records}


UCF_CLASSES = [f"Action{c:02d}" for c in range(20)]


def _ucf101_tree(tmp_path: Path) -> tuple[Path, Path]:
    """20 classes x 25 groups x 4-7 clips; like the official split 1, groups 1-7 are test, 8-25 train."""
    root, splits = tmp_path / "UCF-101", tmp_path / "ucfTrainTestlist"
    splits.mkdir()
    (splits / "classInd.txt").write_text("".join(f"{i} {c}\n" for i, c in enumerate(UCF_CLASSES, 1)))
    train, test = [], []
    for i, name in enumerate(UCF_CLASSES, 1):
        for g in range(1, 26):
            for c in range(1, 5 + (g + i) % 4):
                relative = f"{name}/v_{name}_g{g:02d}_c{c:02d}.avi"
                _touch(root, relative)
                (test.append(relative) if g <= 7 else train.append(f"{relative} {i}"))
    (splits / "trainlist01.txt").write_text("\n".join(train) + "\n")
    (splits / "testlist01.txt").write_text("\n".join(test) + "\n")
    return root, splits


def test_ucf101_val_carved_from_train_list_keeps_groups_together(tmp_path: Path) -> None:
    root, splits_dir = _ucf101_tree(tmp_path)
    records = UCF101SplitSource(root, splits_dir, split=1, subset="train").records()
    assert records[0].group == "Action00_g08" and records[-1].group == "Action19_g25"
    assert len({r.group for r in records}) == 20 * 18
    splits = carve_splits(records, 0.2, 0.0)
    assert splits["test"] == [] and sorted(splits["train"] + splits["val"], key=records.index) == records
    groups = _assert_groups_disjoint(splits)
    assert abs(len(groups["val"]) / (20 * 18) - 0.2) < 0.05  # the fraction holds counted in groups
    # Each group's split is the hash of its group key alone: every clip of the group agrees.
    by_group: dict[str | None, set[str]] = defaultdict(set)
    for path, split in _split_of(splits).items():
        by_group[ucf101_group(path, Path(path).parent.name)].add(split)
    assert all(len(s) == 1 for s in by_group.values())
    # Carving per file (what setup did before) puts clips of one group into both train and val.
    per_file = {r.group for r in records if stable_split(r.path, 0.2, 0.0) == "val"}
    assert len(per_file & {r.group for r in records if stable_split(r.path, 0.2, 0.0) == "train"}) > 50
    # A group the source already knows beats a pattern (which would otherwise group by clip number).
    assert carve_splits(records, 0.2, 0.0, group_pattern=r"_c(\d+)") == splits
    official_test = UCF101SplitSource(root, splits_dir, split=1, subset="test").records()
    assert not {r.group for r in official_test} & {r.group for r in records}


def test_group_assignment_is_stable_when_other_videos_change(tmp_path: Path) -> None:
    root, splits_dir = _ucf101_tree(tmp_path)
    records = UCF101SplitSource(root, splits_dir, split=1, subset="train").records()
    before = _split_of(carve_splits(records, 0.15, 0.15))
    # Drop every third group and the first clip of every other group; add a new class's groups.
    kept = [r for r in records if int(str(r.group)[-2:]) % 3 and not r.path.endswith("_c01.avi")]
    added = [VideoRecord(f"/new/NewAction/v_NewAction_g{g:02d}_c01.avi", "NewAction", group=f"NewAction_g{g:02d}")
             for g in range(1, 40)]
    after_splits = carve_splits(added + kept[::-1], 0.15, 0.15)
    after = _split_of(after_splits)
    assert 0 < len(kept) < len(records) and {p: after[p] for p in before if p in after} == \
        {r.path: before[r.path] for r in kept}
    _assert_groups_disjoint(after_splits)
    assert {after[r.path] for r in added} == {"train", "val", "test"}  # new groups spread over all splits


HMDB_CLASSES = ["brush_hair", "cartwheel", "kick", "punch"]


def _hmdb51_tree(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """200 source videos, each cut into 1-3 clips for one or two classes; the official split keeps a source
    video in train (id 1) or test (id 2); a few clips are unused (0)."""
    root, splits = tmp_path / "hmdb51", tmp_path / "testTrainMulti_7030_splits"
    splits.mkdir()
    sources = ["April_09", "American_History_X", "kick_boxing_gym", "#20_Rhythm_and_(Take_2)"] + [
        f"Film_{k:03d}" for k in range(4, 200)]
    lines: dict[str, list[str]] = {c: [] for c in HMDB_CLASSES}
    for k, source in enumerate(sources):
        for cls in HMDB_CLASSES[k % 4: k % 4 + 1 + k % 2]:
            for clip in range(1 + k % 3):
                attributes = f"{'uhfa'[k % 4]}_{'cn'[k % 2]}m_np{1 + k % 2}_{('fr', 'ba', 'le', 'ri')[k % 4]}_goo"
                name = f"{source}_{cls}_{attributes}_{clip}.avi"
                _touch(root, f"{cls}/{name}")
                lines[cls].append(f"{name} {0 if clip == 2 else 1 if k % 10 < 7 else 2}")
    _touch(root, "punch/odd_clip.avi")
    lines["punch"].append("odd_clip.avi 1")
    for cls, rows in lines.items():
        (splits / f"{cls}_test_split1.txt").write_text("\n".join(rows) + "\n")
    return root, splits, sources


def test_hmdb51_source_video_names() -> None:
    assert hmdb51_group("/d/brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "brush_hair") == "April_09"
    assert hmdb51_group("/d/kick/American_History_X_kick_f_cm_np2_le_bad_11.avi", "kick") == "American_History_X"
    assert hmdb51_group("brush_hair/brush_hair_tips_brush_hair_h_nm_np1_fr_med_2.avi", "brush_hair") == \
        "brush_hair_tips"
    assert hmdb51_group("punch/odd_clip.avi", "punch") == "odd_clip"  # not the pattern: its own group
    assert hmdb51_group("kick/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "kick") == \
        "April_09_brush_hair_u_nm_np1_ba_goo_0"  # another class's name in the file: no guessing
    assert ucf101_group("HandstandPushups/v_HandStandPushups_g03_c02.avi", "HandstandPushups") == \
        "HandstandPushups_g03"
    assert ucf101_group("Jump/jump_take2.avi", "Jump") is None


def test_hmdb51_val_carved_from_train_list_keeps_source_videos_together(tmp_path: Path) -> None:
    root, splits_dir, sources = _hmdb51_tree(tmp_path)
    records = HMDB51SplitSource(root, splits_dir, split=1, subset="train").records()
    names = {r.group for r in records}
    assert names <= set(sources) | {"odd_clip"}
    assert {"April_09", "kick_boxing_gym", "#20_Rhythm_and_(Take_2)", "odd_clip"} <= names
    assert "Film_007" not in names  # a source video of the official test list
    multi_class = {r.group for r in records if r.label == "cartwheel"} & {r.group for r in records
                                                                         if r.label == "kick"}
    assert len(multi_class) > 10  # source videos with clips in two classes
    splits = carve_splits(records, 0.25, 0.0)
    groups = _assert_groups_disjoint(splits)  # across classes too: groups are source names, not per class
    assert abs(len(groups["val"]) / len(names) - 0.25) < 0.07
    assert len(splits["val"]) + len(splits["train"]) == len(records) and splits["test"] == []
    test_records = HMDB51SplitSource(root, splits_dir, split=1, subset="test").records()
    assert not {r.group for r in test_records} & names


def test_ungrouped_files_keep_their_per_file_assignment(tmp_path: Path) -> None:
    for n in range(300):
        _touch(tmp_path / "videos", f"class{n % 4}/clip{n}.mp4")
    records = ClassFolderSource(tmp_path / "videos").records()
    assert all(r.group is None for r in records)
    expected = {r.path: stable_split(r.path, 0.1, 0.2) for r in records}
    assert _split_of(carve_splits(records, 0.1, 0.2)) == expected
    # A pattern that matches no file changes nothing either.
    assert _split_of(carve_splits(records, 0.1, 0.2, group_pattern=r"person\d+")) == expected
    (tmp_path / "train.txt").write_text("".join(f"{Path(r.path).relative_to(tmp_path)} {r.label}\n" for r in records))
    listed = ListFileSource(tmp_path / "train.txt").records()
    assert _split_of(carve_splits(listed, 0.1, 0.2)) == expected
    with pytest.raises(ValueError, match="sum below 1"):
        carve_splits(records, 0.5, 0.5)


def test_group_pattern_keeps_a_persons_clips_in_one_split(tmp_path: Path) -> None:
    for person in range(1, 61):
        for cls in ("jump", "run", "wave"):
            for clip in range(1, 4):
                _touch(tmp_path, f"{cls}/person{person:02d}_clip{clip}.mp4")
    extra = _touch(tmp_path, "wave/extra.mp4")
    records = ClassFolderSource(tmp_path, group_pattern=r"person\d+").records()
    assert records[0] == VideoRecord(str(tmp_path / "jump/person01_clip1.mp4"), "jump", group="person01")
    assert [r.group for r in records if r.path == extra] == [None]
    splits = carve_splits(records, 0.2, 0.2)
    groups = _assert_groups_disjoint(splits)  # a person's clips of every class share a split
    assert all(abs(len(groups[s]) / 60 - f) < 0.1 for s, f in (("train", 0.6), ("val", 0.2), ("test", 0.2)))
    assert _split_of(splits)[extra] == stable_split(extra, 0.2, 0.2)  # unmatched: its own group, as before
    # The same pattern given at carving time, or with a capture group, gives the same groups and splits.
    plain = ClassFolderSource(tmp_path).records()
    assert _split_of(carve_splits(plain, 0.2, 0.2, group_pattern=r"person\d+")) == _split_of(splits)
    captured = ClassFolderSource(tmp_path, group_pattern=r"^(person\d+)_clip").records()
    assert [r.group for r in captured] == [r.group for r in records]
    (tmp_path / "list.txt").write_text("jump/person07_clip3.mp4 jump\nrun/extra_take.mp4 run\n")
    assert [r.group for r in ListFileSource(tmp_path / "list.txt", group_pattern="person\\d+").records()] == \
        ["person07", None]
    with pytest.raises(ValueError, match="not a valid regular expression"):
        ClassFolderSource(tmp_path, group_pattern="person(")


def test_training_list_lines_with_quoted_paths_and_spaces(tmp_path: Path) -> None:
    from vidlstm.data.index import ListFileSource, split_list_line

    assert split_list_line('"my clip.mp4" jump') == ("my clip.mp4", "jump")
    assert split_list_line("my clip.mp4 jump") == ("my clip.mp4", "jump")
    assert split_list_line("'only path.mp4'") == ("only path.mp4", None)
    assert split_list_line('"unbalanced.mp4 jump') == ('"unbalanced.mp4', "jump")
    lists = tmp_path / "train.txt"
    lists.write_text('"a b/my clip.mp4" jump\nsub dir/other clip.avi run\n')
    records = ListFileSource(lists).records()
    assert [(Path(r.path).relative_to(tmp_path).as_posix(), r.label) for r in records] == [
        ("a b/my clip.mp4", "jump"), ("sub dir/other clip.avi", "run")]
