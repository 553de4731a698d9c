"""Predict list files parse as training list files do: paths with spaces, quoted paths, an optional label
after the path, CSV with a ``path`` column; relative paths resolve against the list's folder. A searched folder
yields the files named as videos (transport streams included) and reports the others."""

from __future__ import annotations

from pathlib import Path

import pytest

from vidlstm.data.index import ListFileSource
from vidlstm.inference.batch import gather_inputs


def _touch(*paths: Path) -> None:
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not decoded here")


def test_text_list_with_spaces_quotes_and_labels(tmp_path: Path) -> None:
    _touch(tmp_path / "my clips" / "a b.mp4", tmp_path / "c.mp4", tmp_path / "no extension here")
    (tmp_path / "list.txt").write_text(
        "my clips/a b.mp4\n"          # a path with spaces, no label
        "# a comment\n\n"
        "my clips/a b.mp4 walking\n"  # the same path with a label, as training lists have it
        '"my clips/a b.mp4" 3\n'      # quoted, with a label
        "'c.mp4'\n"                   # quoted alone
        "no extension here\n"         # an existing file whose name has spaces and no extension
        "missing one.avi\n"           # a missing file keeps its whole name (it gets an error row)
        "missing.mp4 dark\n"
        f"{tmp_path / 'c.mp4'}\n"     # absolute
    )
    spaced, c = str(tmp_path / "my clips" / "a b.mp4"), str(tmp_path / "c.mp4")
    assert gather_inputs(tmp_path / "list.txt") == [
        spaced, spaced, spaced, c, str(tmp_path / "no extension here"), str(tmp_path / "missing one.avi"),
        str(tmp_path / "missing.mp4"), c,
    ]


def test_a_training_list_gives_the_paths_training_reads(tmp_path: Path) -> None:
    (tmp_path / "train.txt").write_text("class a/clip 1.mp4 0\nclass b/clip 2.avi 1\n# comment\n")
    training = [r.path for r in ListFileSource(tmp_path / "train.txt").records()]
    assert gather_inputs(tmp_path / "train.txt") == training == [str(tmp_path / "class a" / "clip 1.mp4"),
                                                                str(tmp_path / "class b" / "clip 2.avi")]


def test_csv_list_uses_its_path_column(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text(
        'label,path,start_s\nx,"a, with comma.mp4",0\ny,sub/b c.mp4,\n\nz,/abs/d.mp4,1\n'
    )
    assert gather_inputs(tmp_path / "list.csv") == [str(tmp_path / "a, with comma.mp4"),
                                                    str(tmp_path / "sub" / "b c.mp4"), "/abs/d.mp4"]
    (tmp_path / "train.csv").write_text('path,label\n"e f.mp4",walk\n')
    training = [r.path for r in ListFileSource(tmp_path / "train.csv").records()]
    assert gather_inputs(tmp_path / "train.csv") == training == [str(tmp_path / "e f.mp4")]


def test_csv_without_header_takes_the_first_column(tmp_path: Path) -> None:
    (tmp_path / "list.csv").write_text('"g h.mp4",1\ni.mp4,2\n')
    assert gather_inputs(tmp_path / "list.csv") == [str(tmp_path / "g h.mp4"), str(tmp_path / "i.mp4")]


def test_a_searched_folder_reads_transport_streams_and_reports_the_rest(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    names = ["cam/00001.MTS", "cam/00002.m2ts", "rec.ts", "a.mp4", "._a.mp4", "cam/.DS_Store", "labels.csv",
             "cam/thumb.jpg", "cam/thumb2.jpg", ".AppleDouble/a.mp4", "cam/.Trashes/old.mp4"]
    _touch(*(tmp_path / name for name in names))
    with caplog.at_level("INFO", logger="vidlstm.data.index"):
        found = gather_inputs(tmp_path)
    assert found == [str(tmp_path / name) for name in ["a.mp4", "rec.ts", "cam/00001.MTS", "cam/00002.m2ts"]]
    assert [line for line in caplog.messages if "passed over" in line] == [
        f"{tmp_path}: passed over 3 files not named as videos (.jpg 2, .csv 1): give a list file of their paths "
        "to read them"]
