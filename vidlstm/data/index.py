"""Where videos come from: sources that list `VideoRecord`s (path + class name)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from vidlstm.data.video import VIDEO_EXTENSIONS

SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class VideoRecord:
    """One video of a dataset. ``label`` is the class name (None for unlabelled inputs)."""

    path: str
    label: str | None


class ClassFolderSource:
    """A class-per-folder tree: ``root/<class_name>/**/<video>`` (any common video extension, recursive).

    Args:
        root: the tree's top folder; each sub-folder is a class.
        extensions: file endings counted as videos (case-insensitive).
    """

    def __init__(self, root: str | os.PathLike, extensions: tuple[str, ...] = VIDEO_EXTENSIONS) -> None:
        self.root = Path(root)
        self.extensions = tuple(e.lower() for e in extensions)

    def records(self) -> list[VideoRecord]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: no such directory (expected root/<class_name>/<videos>)")
        records = []
        for class_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
                dirnames.sort()
                records.extend(
                    VideoRecord(str(Path(dirpath) / f), class_dir.name)
                    for f in sorted(filenames)
                    if f.lower().endswith(self.extensions) and not f.startswith(".")
                )
        if not records:
            raise FileNotFoundError(
                f"{self.root}: no videos found (expected root/<class_name>/*{{{','.join(self.extensions)}}})"
            )
        return records

    def __repr__(self) -> str:
        return f"ClassFolderSource(root={str(self.root)!r})"


def stable_split(path: str, val_fraction: float, test_fraction: float) -> str:
    """Assign a video to train/val/test by a hash of its file name and parent folder.

    The assignment depends only on the video itself, so adding or removing other videos never moves it.
    """
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"split fractions must be >= 0 and sum below 1, got val={val_fraction}, "
                         f"test={test_fraction}")
    key = "/".join(Path(path).parts[-2:]).encode()
    u = int.from_bytes(hashlib.sha1(key).digest()[:8], "big") / 2**64
    if u < val_fraction:
        return "val"
    if u < val_fraction + test_fraction:
        return "test"
    return "train"
