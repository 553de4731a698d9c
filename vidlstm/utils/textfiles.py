"""Text files that name video files: list files, prediction CSV/JSONL, bad_videos.csv.

Linux allows any bytes but "/" and NUL in a file name, and datasets copied from old systems hold names that are not
UTF-8 ("caf\\xe9.mp4" from Latin-1). Python hands such a name over with each odd byte as a lone surrogate
("caf\\udce9.mp4"), which strict UTF-8 cannot write: one such file stopped a whole prediction run. These files are
read and written with ``surrogateescape``: the name goes out as the very bytes it has on disk and comes back as the
same string, so every row names a file that opens.
"""

from __future__ import annotations

import os
from typing import IO

PATH_TEXT = {"encoding": "utf-8", "errors": "surrogateescape"}  # open()'s arguments for such files


def open_paths(path: str | os.PathLike, mode: str = "r") -> IO[str]:
    """``open(path, mode)`` for a CSV or text file of paths (``newline=""``, as the csv module wants)."""
    return open(path, mode, newline="", **PATH_TEXT)


def decode_paths(data: bytes) -> str:
    """Bytes of such a file as text (the inverse of writing through `open_paths`)."""
    return data.decode(**PATH_TEXT)
