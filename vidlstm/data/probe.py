"""Probe every video of an index once: parallel, with a progress bar, cached on disk by path + size + mtime.

Unreadable files are quarantined (reported with their reason) instead of entering the index.
"""

from __future__ import annotations

import csv
import functools
import json
import os
from pathlib import Path
from typing import Any

from vidlstm.data.index import VideoRecord
from vidlstm.data.video import DEFAULT_TIMEOUT_S, StreamFacts, VideoDecodeError, probe, remember_facts, stream_facts
from vidlstm.data.video.deadlines import abandoned_threads
from vidlstm.utils.pool import Lost, imap_killable
from vidlstm.utils.progress import progress
from vidlstm.utils.textfiles import open_paths

CACHE_VERSION = 9  # 2: frame counts are frames that decode; the stream facts are kept with each result.
# 3: the facts name the container and whether it has a frame table (which backends may serve a file)
# 4: streams whose timestamps start below 0 (MPEG-TS wrapping past 2^33) are counted from their first frame, and
# keyframe-flagged P/B pictures (intra refresh) are counted (decord and torchcodec refuse them)
# 5: still images under video names are refused; the facts name the codec ("av1"), not PyAV's decoder ("libdav1d")
# 6: false keyframe flags (raw H.263) and MP4 tracks without a sync-sample table are found; raw H.264 probes
# 7: streams that start without a keyframe (begun mid-GOP) are counted (their header counts frames that never decode)
# 8: open GOPs are found (decord refuses them)
# 9: packets an MP4 edit list hides are counted apart (a cut by stream copy starts at a hidden keyframe: not mid-GOP)


def probe_file(path: str, timeout_s: float | None = DEFAULT_TIMEOUT_S) -> dict[str, Any]:
    """Metadata of one file as plain data; ``error`` holds the reason when it cannot be read. ``facts`` holds
    its `StreamFacts` (the frame count may have cost a full decode), handed to readers by `probe_records`.
    Counting frames takes at most half of ``timeout_s``, so it ends before a pool's limit of ``timeout_s``."""
    try:
        info = probe(path, timeout_s=timeout_s)
        facts = stream_facts(path)  # cached by the probe's own look
    except VideoDecodeError as err:
        return {"error": err.reason}
    return {"num_frames": info.num_frames, "fps": info.fps, "height": info.height, "width": info.width,
            "backend": info.backend, "facts": facts.to_dict(), "error": None}


def _file_key(path: str) -> list[int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return [stat.st_size, stat.st_mtime_ns]


class ProbeCache:
    """JSON file mapping path -> (size, mtime_ns, probe result); entries of changed files are ignored."""

    def __init__(self, path: str | os.PathLike | None) -> None:
        self.path = Path(path) if path else None
        self.entries: dict[str, dict] = {}
        if self.path and self.path.is_file():
            try:
                data = json.loads(self.path.read_text())
                if data.get("version") == CACHE_VERSION:
                    self.entries = data["entries"]
            except (ValueError, KeyError):
                self.entries = {}  # a damaged cache is rebuilt, never trusted

    def get(self, path: str) -> dict | None:
        entry = self.entries.get(path)
        return entry["result"] if entry and entry["key"] == _file_key(path) else None

    def put(self, path: str, result: dict) -> None:
        self.entries[path] = {"key": _file_key(path), "result": result}

    def save(self) -> None:
        if not self.path:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        partial = self.path.with_name(self.path.name + f".{os.getpid()}.partial")
        partial.write_text(json.dumps({"version": CACHE_VERSION, "entries": self.entries}))
        partial.replace(self.path)


def probe_records(records: list[VideoRecord], cache_path: str | os.PathLike | None = None,
                  workers: int = 2, timeout_s: float | None = DEFAULT_TIMEOUT_S,
                  ) -> tuple[list[VideoRecord], dict[str, str]]:
    """Split ``records`` into readable ones and {path: reason} for the rest, probing only uncached files.

    With ``workers`` > 0 each file is probed in a worker process that is killed and replaced once it spends
    ``timeout_s`` on one file (None: no limit), so no file can stall start-up: it is reported unreadable."""
    cache = ProbeCache(cache_path)
    paths = sorted({r.path for r in records})
    todo = [p for p in paths if cache.get(p) is None]
    if todo:
        with progress() as bar:
            task = bar.add_task(f"Probing {len(todo)} videos", total=len(todo))
            if workers > 0:
                look = functools.partial(probe_file, timeout_s=timeout_s)  # counting frames ends within the limit
                results = imap_killable(look, todo, workers, timeout_s, retire_if=abandoned_threads)
                for path, result in zip(todo, results, strict=True):
                    cache.put(path, {"error": f"probing {result.reason}"} if isinstance(result, Lost) else result)
                    bar.advance(task)
            else:
                for path in todo:
                    cache.put(path, probe_file(path, timeout_s))
                    bar.advance(task)
        cache.save()
    results = {p: cache.get(p) or {"error": "the file changed or disappeared while it was probed"} for p in paths}
    _hand_over_facts(cache, results)
    bad = {p: result["error"] for p, result in results.items() if result["error"]}
    return [r for r in records if r.path not in bad], bad


def _hand_over_facts(cache: ProbeCache, results: dict[str, dict]) -> None:
    """Give this process the stream facts the probe found, so readers opened here, and in DataLoader workers
    forked from here, never count a file's frames again."""
    for path, result in results.items():
        if result.get("facts"):
            try:
                facts = StreamFacts.from_dict(result["facts"])
            except (TypeError, ValueError):
                continue  # written by other code: the reader looks at the file itself
            size, mtime_ns = cache.entries[path]["key"]
            remember_facts(path, size, mtime_ns, facts)


def append_bad_videos(report: str | os.PathLike, rows: dict[str, str], stage: str, epoch: int | None) -> None:
    """Add (path, reason, stage, epoch) rows to a bad-videos CSV, writing the header for a new file."""
    report = Path(report)
    report.parent.mkdir(parents=True, exist_ok=True)
    fresh = not report.exists()
    with open_paths(report, "a") as f:
        writer = csv.writer(f)
        if fresh:
            writer.writerow(["path", "reason", "stage", "epoch"])
        writer.writerows([path, reason, stage, "" if epoch is None else epoch] for path, reason in rows.items())
