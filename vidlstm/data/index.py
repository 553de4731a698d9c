"""Where videos come from: sources that list `VideoRecord`s (path + class name + group), and splits carved
from one list that keep each group (same source video / actor) in one split."""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import re
import shlex
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from vidlstm.data.video import VIDEO_EXTENSIONS, VideoDecodeError
from vidlstm.utils.textfiles import PATH_TEXT, open_paths

SPLITS = ("train", "val", "test")
log = logging.getLogger(__name__)


def visible(names: Iterable[str]) -> list[str]:
    """``names`` without hidden ones (".DS_Store", "._clip.mp4", ".AppleDouble", ".Trashes"), sorted."""
    return sorted(name for name in names if not name.startswith("."))


def video_names(filenames: Iterable[str], extensions: tuple[str, ...], skipped: Counter) -> list[str]:
    """The visible ``filenames`` ending in one of ``extensions`` (lower case; case-insensitive match), sorted;
    the endings of the other visible ones are counted in ``skipped``."""
    kept = []
    for name in visible(filenames):
        if name.lower().endswith(extensions):
            kept.append(name)
        else:
            skipped[os.path.splitext(name)[1].lower() or "(no ending)"] += 1
    return kept


def report_skipped(where: str | os.PathLike, skipped: Counter, how_to_read: str) -> None:
    """Log the files a folder search passed over, counted by ending, and ``how_to_read`` them."""
    if skipped:
        ranked = sorted(skipped.items(), key=lambda item: (-item[1], item[0]))[:8]  # most first, then by name
        endings = ", ".join(f"{ending} {count}" for ending, count in ranked)
        log.info("%s: passed over %d files not named as videos (%s%s): %s", where, sum(skipped.values()), endings,
                 ", ..." if len(skipped) > 8 else "", how_to_read)


@dataclass(frozen=True)
class VideoRecord:
    """One video of a dataset. ``label`` is the class name (None for unlabelled inputs); ``start_s`` and
    ``end_s`` restrict it to a segment of a longer file. ``group`` names the videos it must share a split with
    when splits are carved from one list (clips of one source video or actor); None: the file is its own
    group."""

    path: str
    label: str | None
    start_s: float | None = None
    end_s: float | None = None
    group: str | None = None


GroupPattern = str | re.Pattern[str]


def compile_group_pattern(pattern: GroupPattern | None) -> re.Pattern[str] | None:
    """The compiled ``group_pattern`` (None stays None); a malformed regex raises ValueError naming it."""
    if pattern is None or isinstance(pattern, re.Pattern):
        return pattern
    try:
        return re.compile(pattern)
    except re.error as err:
        raise ValueError(f"group_pattern {pattern!r} is not a valid regular expression ({err})") from err


def pattern_group(path: str, pattern: GroupPattern | None) -> str | None:
    """The group a regex finds in the file name (``re.search``): its first capture group if it has one, else
    the whole match. None when there is no pattern or it does not match (the file is its own group)."""
    compiled = compile_group_pattern(pattern)
    if compiled is None:
        return None
    match = compiled.search(Path(path).name)
    if match is None:
        return None
    return match.group(1) if compiled.groups else match.group(0)


_UCF101_GROUP = re.compile(r"_g(\d+)_")


def ucf101_group(path: str, class_name: str) -> str | None:
    """UCF101's group ``<Class>_g<NN>`` (clips of one long source video / actor) from ``v_<Class>_gNN_cMM.avi``;
    the class comes from the folder, whose spelling the file names do not always share. None: no ``_gNN_``."""
    match = _UCF101_GROUP.search(Path(path).name)
    return f"{class_name}_g{match.group(1)}" if match else None


def hmdb51_group(path: str, class_name: str | None) -> str:
    """HMDB51's source video: the file stem before ``_<class>_<visibility>_<camera>_<people>_<viewpoint>_
    <quality>_<clip>``, e.g. ``April_09`` for ``brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi``. Clips
    of one source video (often a film with clips in several classes) share it; a name that does not follow
    this pattern is its own group (its whole stem)."""
    stem = Path(path).stem
    if class_name:
        match = re.fullmatch(rf"(.+)_{re.escape(class_name)}(?:_[^_]+){{5}}_\d+", stem)
        if match:
            return match.group(1)
    return stem


def segment_frames(record: VideoRecord, num_frames: int, fps: float) -> tuple[int, int]:
    """[first, stop) frame range of the record's segment (the whole video when it has none)."""
    if record.start_s is None and record.end_s is None:
        return 0, num_frames
    if fps <= 0:
        raise VideoDecodeError(record.path, "segment given in seconds but the video has no frame rate")
    first = max(0, round((record.start_s or 0.0) * fps))
    stop = num_frames if record.end_s is None else min(num_frames, round(record.end_s * fps))
    if stop <= first:
        raise VideoDecodeError(record.path, f"segment {record.start_s}-{record.end_s} s lies outside the video "
                                            f"({num_frames} frames at {fps:g} fps)")
    return first, stop


class ClassFolderSource:
    """A class-per-folder tree: ``root/<class_name>/**/<video>`` (any common video extension, recursive; hidden
    files and folders are passed over).

    Args:
        root: the tree's top folder; each sub-folder is a class.
        extensions: file endings counted as videos (case-insensitive); they replace `VIDEO_EXTENSIONS` (None).
        group_pattern: optional regex whose match in a file name is the video's group (first capture group if
            it has one), e.g. ``person\\d+`` for ``person07_clip3.mp4``; files it does not match have none.
    """

    def __init__(self, root: str | os.PathLike, extensions: Iterable[str] | str | None = None,
                 group_pattern: GroupPattern | None = None) -> None:
        self.root = Path(root)
        self.extensions = _endings(VIDEO_EXTENSIONS if extensions is None else extensions)
        self.group_pattern = compile_group_pattern(group_pattern)

    def records(self) -> list[VideoRecord]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such directory (expected root/<class_name>/<videos>)")
        records, skipped = [], Counter()
        for class_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
                dirnames[:] = visible(dirnames)
                records.extend(
                    VideoRecord(str(Path(dirpath) / f), class_dir.name,
                                group=pattern_group(f, self.group_pattern))
                    for f in video_names(filenames, self.extensions, skipped)
                )
        report_skipped(self.root, skipped, "the source's `extensions` names the endings read")
        if not records:
            raise FileNotFoundError(
                f"{self.root}: no videos found (expected root/<class_name>/*{{{','.join(self.extensions)}}})"
            )
        return records

    def __repr__(self) -> str:
        return f"ClassFolderSource(root={str(self.root)!r})"


def _endings(extensions: Iterable[str] | str) -> tuple[str, ...]:
    """File endings in lower case with their dot ("MP4" and ".mp4" both give ".mp4"); one ending may be given as a
    plain string; an empty list is refused."""
    if isinstance(extensions, str):
        extensions = [extensions]
    endings = tuple(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    if not endings or not all(len(e) > 1 for e in endings):
        raise ValueError(f"extensions: expected file endings such as ['.mp4', '.gif'], got {list(extensions)!r}")
    return endings


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"split fractions must be >= 0 and sum below 1, got val={val_fraction}, "
                         f"test={test_fraction}")


def _hash_split(key: str, val_fraction: float, test_fraction: float) -> str:
    u = int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") / 2**64
    if u < val_fraction:
        return "val"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"


def _file_key(path: str) -> str:
    return "/".join(Path(path).parts[-2:])


def stable_split(path: str, val_fraction: float, test_fraction: float) -> str:
    """Assign a video to train/val/test by a hash of its file name and parent folder.

    The assignment depends only on the video itself, so adding or removing other videos never moves it.
    """
    _check_fractions(val_fraction, test_fraction)
    return _hash_split(_file_key(path), val_fraction, test_fraction)


def split_key(record: VideoRecord, group_pattern: GroupPattern | None = None) -> str:
    """What `carve_splits` hashes: ``group:<group>`` for the record's group (else the group ``group_pattern``
    finds in its file name), else its file as ``<parent folder>/<file name>`` (the key `stable_split` uses)."""
    group = record.group if record.group is not None else pattern_group(record.path, group_pattern)
    return _file_key(record.path) if group is None else f"group:{group}"


def carve_splits(records: Iterable[VideoRecord], val_fraction: float, test_fraction: float,
                 group_pattern: GroupPattern | None = None) -> dict[str, list[VideoRecord]]:
    """Split one list into train/val/test, keeping each group in one split.

    A stable sha1 hash of `split_key` picks the split, so a group's split depends only on its own key:
    adding or removing other videos never moves it, and a video without a group lands exactly where
    `stable_split` puts it. The fractions hold for groups (and so for videos on average). Records keep their
    order within each split.
    """
    _check_fractions(val_fraction, test_fraction)
    compiled = compile_group_pattern(group_pattern)
    splits: dict[str, list[VideoRecord]] = {split: [] for split in SPLITS}
    for record in records:
        splits[_hash_split(split_key(record, compiled), val_fraction, test_fraction)].append(record)
    return splits


def split_list_line(line: str) -> tuple[str, str | None]:
    """(path, label) of one text list line: ``"my clip.mp4" label`` (the path quoted as a shell quotes it) or
    ``<path> <label>``, the label being the last field (so the path may contain spaces); the label is None
    when the line holds a path alone. Training and prediction lists are read with this one rule."""
    if line[0] in "\"'":
        try:
            fields = shlex.split(line)
        except ValueError:  # an unbalanced quote: not quoting after all
            fields = []
        if 1 <= len(fields) <= 2:
            return fields[0], fields[1] if len(fields) == 2 else None
    parts = line.rsplit(maxsplit=1)
    return (parts[0], parts[1]) if len(parts) == 2 else (line, None)


def _resolve(root: Path, relative: str) -> str:
    path = Path(relative)
    return str(path if path.is_absolute() else root / path)


def _read_lines(path: Path, what: str, comments: bool = True) -> list[tuple[int, str]]:
    """Numbered non-blank lines, stripped; with ``comments``, lines starting with '#' are skipped."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    lines = path.read_text(**PATH_TEXT).splitlines()
    return [(n, line.strip()) for n, line in enumerate(lines, 1)
            if line.strip() and not (comments and line.startswith("#"))]


class ListFileSource:
    """A list of videos with labels.

    * text (any suffix but .csv): one ``<path> <label>`` per line, as MMAction2 / PyTorchVideo write them (the
      path may contain spaces; the label is the last field);
    * CSV with a header: ``path,label`` and optionally ``start_s,end_s`` to use a segment of a long video.

    Relative paths resolve against ``root`` (default: the list file's folder). Integer labels can be named by
    ``class_names_file`` (one name per line, line i = label i); otherwise the label text is the class name.
    ``group_pattern`` (optional regex) finds each video's group in its file name, as in `ClassFolderSource`.
    """

    def __init__(self, list_file: str | os.PathLike, root: str | os.PathLike | None = None,
                 class_names_file: str | os.PathLike | None = None,
                 group_pattern: GroupPattern | None = None) -> None:
        self.list_file = Path(list_file)
        self.group_pattern = compile_group_pattern(group_pattern)
        self.root = Path(root) if root is not None else self.list_file.parent
        self.names = (
            [line for _, line in _read_lines(Path(class_names_file), "class names file")]
            if class_names_file else None
        )

    def _name(self, label: str, where: str) -> str:
        if self.names is None:
            return label
        if not label.isdigit() or int(label) >= len(self.names):
            raise ValueError(f"{where}: label {label!r} is not an index into the {len(self.names)} class names")
        return self.names[int(label)]

    def records(self) -> list[VideoRecord]:
        if self.list_file.suffix.lower() == ".csv":
            return self._csv_records()
        records = []
        for number, line in _read_lines(self.list_file, "video list"):
            relative, label = split_list_line(line)
            if label is None:
                raise ValueError(f"{self.list_file}:{number}: expected '<path> <label>', got {line!r}")
            where = f"{self.list_file}:{number}"
            path = _resolve(self.root, relative)
            records.append(VideoRecord(path, self._name(label, where),
                                       group=pattern_group(path, self.group_pattern)))
        return records

    def _csv_records(self) -> list[VideoRecord]:
        if not self.list_file.is_file():
            raise FileNotFoundError(f"{self.list_file}: video list not found")
        with open_paths(self.list_file) as f:
            reader = csv.DictReader(f)
            missing = {"path", "label"} - set(reader.fieldnames or [])
            if missing:
                raise ValueError(f"{self.list_file}: CSV header needs columns path,label[,start_s,end_s]; "
                                 f"missing {sorted(missing)}")
            records = []
            for number, row in enumerate(reader, 2):
                where = f"{self.list_file}:{number}"
                try:
                    start = float(row["start_s"]) if row.get("start_s") else None
                    end = float(row["end_s"]) if row.get("end_s") else None
                except ValueError as err:
                    raise ValueError(f"{where}: start_s/end_s must be numbers ({err})") from err
                if start is not None and end is not None and end <= start:
                    raise ValueError(f"{where}: end_s {end} is not after start_s {start}")
                path = _resolve(self.root, row["path"])
                records.append(VideoRecord(path, self._name(row["label"], where), start, end,
                                           pattern_group(path, self.group_pattern)))
        return records

    def __repr__(self) -> str:
        return f"ListFileSource(list_file={str(self.list_file)!r})"


class _OfficialSplitSource:
    """A benchmark's published split files: ``split`` 1-3, ``subset`` "train" or "test"."""

    dataset = ""

    def __init__(self, root: str | os.PathLike, splits_dir: str | os.PathLike, split: int = 1,
                 subset: str = "train") -> None:
        if split not in (1, 2, 3) or subset not in ("train", "test"):
            raise ValueError(f"{self.dataset} has splits 1-3 and subsets train/test, got split={split}, "
                             f"subset={subset!r}")
        self.root, self.splits_dir, self.split, self.subset = Path(root), Path(splits_dir), split, subset

    def __repr__(self) -> str:
        return f"{type(self).__name__}(split={self.split}, subset={self.subset!r})"


class UCF101SplitSource(_OfficialSplitSource):
    """UCF101's official splits: ``classInd.txt``, ``trainlist0{split}.txt``, ``testlist0{split}.txt`` in
    ``splits_dir`` (the ucfTrainTestlist folder); videos under ``root/<Class>/v_<Class>_gXX_cYY.avi``."""

    dataset = "UCF101"

    def records(self) -> list[VideoRecord]:
        class_index = {}
        for number, line in _read_lines(self.splits_dir / "classInd.txt", "UCF101 class index"):
            index, _, name = line.partition(" ")
            if not index.isdigit() or not name:
                raise ValueError(f"{self.splits_dir / 'classInd.txt'}:{number}: expected '<index> <Class>'")
            class_index[index] = name.strip()
        list_file = self.splits_dir / f"{self.subset}list0{self.split}.txt"
        records = []
        for number, line in _read_lines(list_file, "UCF101 split list"):
            relative = line.split()[0]
            name = Path(relative).parent.name
            if name not in class_index.values():
                raise ValueError(f"{list_file}:{number}: class folder {name!r} is not in classInd.txt")
            path = _resolve(self.root, relative)
            records.append(VideoRecord(path, name, group=ucf101_group(path, name)))
        return records


class HMDB51SplitSource(_OfficialSplitSource):
    """HMDB51's official splits: ``<class>_test_split{split}.txt`` files in ``splits_dir`` whose lines are
    ``<video>.avi <id>`` (1 = train, 2 = test, 0 = unused); videos under ``root/<class>/<video>.avi``."""

    dataset = "HMDB51"
    _PATTERN = re.compile(r"^(?P<name>.+)_test_split(?P<split>[123])\.txt$")

    def records(self) -> list[VideoRecord]:
        if not self.splits_dir.is_dir():
            raise FileNotFoundError(f"{self.splits_dir}: HMDB51 split folder not found")
        wanted = "1" if self.subset == "train" else "2"
        records = []
        for list_file in sorted(self.splits_dir.iterdir()):
            match = self._PATTERN.match(list_file.name)
            if not match or match["split"] != str(self.split):
                continue
            # No comments here: HMDB51 names files like "#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi".
            for number, line in _read_lines(list_file, "HMDB51 split list", comments=False):
                parts = line.split()
                if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                    raise ValueError(f"{list_file}:{number}: expected '<video> <0|1|2>', got {line!r}")
                if parts[1] == wanted:
                    path = str(self.root / match["name"] / parts[0])
                    records.append(VideoRecord(path, match["name"], group=hmdb51_group(path, match["name"])))
        if not records:
            raise FileNotFoundError(
                f"{self.splits_dir}: no *_test_split{self.split}.txt lists with {self.subset} videos"
            )
        return records
