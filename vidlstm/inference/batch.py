"""Folder runs: many videos -> one CSV/JSONL row each (window rows in long-video mode), resumable.

DataLoader workers open and decode videos while the main process runs the model on batches gathered across
videos. Each video's rows are written and flushed as soon as its last clip is scored, so an interrupted run
loses at most the videos in flight, and a rerun with the same output skips the videos already written.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vidlstm.common.report import write_timeline
from vidlstm.data.index import _read_lines, _resolve, report_skipped, split_list_line, video_names, visible
from vidlstm.data.video import VIDEO_EXTENSIONS, VideoDecodeError
from vidlstm.inference.predictor import PREDICTION_FIELDS, WINDOW_FIELDS, Predictor, windows
from vidlstm.inference.segments import segments_of
from vidlstm.utils.progress import progress
from vidlstm.utils.textfiles import decode_paths, open_paths

log = logging.getLogger(__name__)
LIST_SUFFIXES = (".txt", ".csv", ".lst")


def gather_inputs(source: str | os.PathLike) -> list[str]:
    """Video paths from a file, a folder (recursive, common video extensions, symlinks followed, each real
    folder visited once so link cycles end), or a list file (.txt/.lst/.csv, see `_list_file_paths`)."""
    source = Path(source)
    if source.is_dir():
        found, seen, skipped = [], set(), Counter()
        for folder, subfolders, files in os.walk(source, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:
                subfolders[:] = []
                continue
            seen.add(real)
            subfolders[:] = visible(subfolders)
            found += [os.path.join(folder, f) for f in video_names(files, VIDEO_EXTENSIONS, skipped)]
        report_skipped(source, skipped, "give a list file of their paths to read them")
        return found
    if source.suffix.lower() in LIST_SUFFIXES and source.is_file():
        return _list_file_paths(source)
    if source.exists() or source.suffix.lower() in VIDEO_EXTENSIONS:
        return [str(source)]  # a missing video file still gets its row (status=error, "no such file")
    raise FileNotFoundError(f"{source}: input not found (give a video file, a folder or a list file)")


def _list_file_paths(list_file: Path) -> list[str]:
    """Paths of a list file, read as training reads list files (`vidlstm.data.index.ListFileSource`), labels
    optional: CSV with a ``path`` column (fields quoted as CSV quotes them; other columns ignored; without that
    header, the first column), or text lines ``<path>`` / ``<path> <label>`` (`#` comments, blank lines
    skipped). Relative paths resolve against the list file's folder."""
    root = list_file.parent
    if list_file.suffix.lower() == ".csv":
        with open_paths(list_file) as handle:
            rows = [row for row in csv.reader(handle) if any(cell.strip() for cell in row)]
        header = [cell.strip() for cell in rows[0]] if rows else []
        column = header.index("path") if "path" in header else 0
        if "path" in header:
            rows = rows[1:]
        return [_resolve(root, row[column]) for row in rows if len(row) > column and row[column].strip()]
    return [_resolve(root, _line_path(root, line)) for _, line in _read_lines(list_file, "video list")]


def _line_path(root: Path, line: str) -> str:
    """The path on one text line: the whole line when it names a file or ends in a video extension (spaces
    allowed; labels are optional here), else the path of the training lists' rule (`split_list_line`)."""
    if line[0] not in "\"'" and (line.lower().endswith(VIDEO_EXTENSIONS) or os.path.isfile(_resolve(root, line))):
        return line
    return split_list_line(line)[0]


@dataclass
class Unit:
    """Clips of one video (or one window of it) ready for the model, or the video's error."""

    video: int
    window: int
    windows: int
    clips: torch.Tensor | None
    num_frames: int
    start_s: float | str = ""
    end_s: float | str = ""
    error: str = ""
    video_frames: int = 0


def video_unit(predictor: Predictor, paths: Sequence[str], video: int) -> Unit:
    """Video ``video``'s clips for a video-level prediction, or its error."""
    try:
        with predictor.open(paths[video]) as reader:
            return Unit(video, 0, 1, predictor.video_clips(reader, uint8=True), reader.num_frames)
    except VideoDecodeError as err:
        return Unit(video, 0, 1, None, 0, error=err.reason)


class _Clips(IterableDataset):
    """Streams `Unit`s; each worker takes every k-th video, so videos are decoded once, in parallel."""

    def __init__(self, predictor: Predictor, paths: Sequence[str], window_s: float | None,
                 stride_s: float | None) -> None:
        self.predictor, self.paths = predictor, list(paths)
        self.window_s, self.stride_s = window_s, stride_s

    def __iter__(self) -> Iterator[Unit]:
        info = get_worker_info()
        mine = range(info.id, len(self.paths), info.num_workers) if info else range(len(self.paths))
        for video in mine:
            yield from self._units(video)

    def _units(self, video: int) -> Iterator[Unit]:
        if self.window_s is None:
            yield video_unit(self.predictor, self.paths, video)
            return
        try:
            with self.predictor.open(self.paths[video]) as reader:
                spans = windows(reader.num_frames, reader.fps, self.window_s, self.stride_s or self.window_s)
                for w in spans:  # one window decoded at a time: memory stays flat for long videos
                    clips = self.predictor.window_clip(reader, w, uint8=True)
                    yield Unit(video, w.index, w.count, clips, w.stop - w.first, w.start_s, w.end_s,
                               video_frames=reader.num_frames)
        except VideoDecodeError as err:  # anything else is a bug and must stop the run, not fill it with errors
            yield Unit(video, 0, 1, None, 0, error=err.reason)


class PredictionWriter:
    """Appends rows to CSV or JSONL (chosen by suffix), flushing after every video. On open it drops a
    half-written last line left by a killed run and remembers which videos are already done."""

    def __init__(self, path: str | os.PathLike, windowed: bool) -> None:
        self.path = Path(path)
        self.format = "jsonl" if self.path.suffix.lower() in (".jsonl", ".json") else "csv"
        self.fields = PREDICTION_FIELDS + (WINDOW_FIELDS if windowed else ())
        self.segments: SegmentWriter | None = None  # window mode: where each video's segments go
        self.segment_settings: dict[str, Any] = {}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.done = self._recover()
        self.handle = open_paths(self.path, "a")  # kept open across videos, closed by close()
        self.csv = csv.DictWriter(self.handle, fieldnames=self.fields) if self.format == "csv" else None
        if self.csv is not None and self.handle.tell() == 0:
            self.csv.writeheader()

    def _recover(self) -> set[str]:
        if not self.path.is_file() or self.path.stat().st_size == 0:
            return set()
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):  # killed mid-line: keep only complete rows
            data = data[: data.rfind(b"\n") + 1]
            self.path.write_bytes(data)
        lines = decode_paths(data).splitlines()
        if self.format == "jsonl":
            return {json.loads(line)["path"] for line in lines if line.strip()}
        return {row["path"] for row in csv.DictReader(lines)}

    def write(self, rows: list[dict[str, Any]]) -> None:
        for row in rows:
            row = {k: row.get(k, "") for k in self.fields}
            if self.csv is not None:
                self.csv.writerow({k: "|".join(map(str, v)) if isinstance(v, list) else v for k, v in row.items()})
            else:
                self.handle.write(json.dumps(row) + "\n")
        self.handle.flush()  # in the OS's hands: survives the process being killed (fsync would cost ~ms/video)

    def close(self) -> None:
        self.handle.close()


class SegmentWriter:
    """Window mode's action segments as JSONL, one line per segment with the video's ``path``, written (and
    flushed) before that video's rows. On open it keeps only the segments of videos whose rows ``output``
    already holds, so a rerun after a kill writes each video's segments once."""

    def __init__(self, path: str | os.PathLike, done: set[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.is_file():
            lines = self.path.read_text().splitlines(keepends=True)
            kept = [line for line in lines if line.endswith("\n") and json.loads(line).get("path") in done]
            if kept != lines:
                self.path.write_text("".join(kept))
        self.handle = open(self.path, "a")  # noqa: SIM115 - kept open across videos, closed by close()

    def write(self, path: str, segments: list[dict[str, Any]]) -> None:
        for segment in segments:
            self.handle.write(json.dumps({"path": path, **segment}) + "\n")
        self.handle.flush()

    def close(self) -> None:
        self.handle.close()


def segments_path(output: str | os.PathLike, setting: str | os.PathLike | None) -> Path | None:
    """Where window mode writes segments: ``setting``, or for "auto" ``<output minus suffix>.segments.jsonl``."""
    if setting is None:
        return None
    if str(setting) == "auto":
        return Path(output).with_suffix(".segments.jsonl")
    return Path(setting)


def predict_folder(predictor: Predictor, source: str | os.PathLike, output: str | os.PathLike,
                   batch_size: int = 8, num_workers: int = 2, window_s: float | None = None,
                   stride_s: float | None = None, resume: bool = True,
                   segments_output: str | os.PathLike | None = None,
                   segment_settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Predict every video of ``source`` into ``output``; returns counts and timing.

    With ``resume`` (default) videos already in ``output`` are skipped; without it ``output`` is replaced.
    In window mode with ``segments_output`` each video's action segments (`vidlstm.inference.segments`, with
    ``segment_settings``) go there as JSONL.
    """
    paths = gather_inputs(source)
    if not resume:
        for stale in (output, segments_output):
            if stale is not None and Path(stale).exists():
                Path(stale).unlink()
    writer = PredictionWriter(output, windowed=window_s is not None)
    if window_s is not None and segments_output is not None:
        writer.segments = SegmentWriter(segments_output, writer.done)
        writer.segment_settings = segment_settings or {}
    todo = [p for p in paths if p not in writer.done]
    log.info("%d videos found, %d already in %s, %d to predict", len(paths), len(paths) - len(todo), output,
             len(todo))
    loader = DataLoader(_Clips(predictor, todo, window_s, stride_s), batch_size=batch_size,
                        num_workers=min(num_workers, len(todo)), collate_fn=list,
                        pin_memory=predictor.device.type == "cuda")
    pending: dict[int, list[dict[str, Any]]] = {}
    counts = {"ok": 0, "error": 0}
    threads = torch.get_num_threads()
    if predictor.device.type == "cpu" and loader.num_workers:
        # On a CPU the model and the decoding workers share cores: leave the workers theirs.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) - loader.num_workers))
    started = time.perf_counter()
    try:
        with progress() as bar:
            task = bar.add_task("Predicting", total=len(todo))
            for units in loader:
                _score(predictor, units, todo, pending, writer, counts)
                done = counts["ok"] + counts["error"]
                bar.update(task, completed=done,
                           description=f"Predicting ({done / max(time.perf_counter() - started, 1e-9):.1f} videos/s)")
    finally:
        writer.close()
        if writer.segments is not None:
            writer.segments.close()
        torch.set_num_threads(threads)
    elapsed = time.perf_counter() - started
    if writer.segments is not None:
        timeline = write_timeline(writer.segments.path, Path(output).with_suffix(".timeline.html"))
        log.info("Segments per video, as a page: %s", timeline)
    return {**counts, "skipped": len(paths) - len(todo), "seconds": round(elapsed, 2),
            "videos_per_s": round((counts["ok"] + counts["error"]) / max(elapsed, 1e-9), 3), "output": str(output)}


def _score(predictor: Predictor, units: list[Unit], paths: Sequence[str], pending: dict[int, list[dict]],
           writer: PredictionWriter, counts: dict[str, int]) -> None:
    """Run the model on the batch's clips and write every video whose last unit has now been scored."""
    good = [u for u in units if u.clips is not None]
    probs = predictor.probabilities(torch.stack([u.clips for u in good])) if good else []
    for unit, p in zip(good, probs, strict=True):
        rows = pending.setdefault(unit.video, [])
        rows.append({**predictor.row(paths[unit.video], p, unit.num_frames), "start_s": unit.start_s,
                     "end_s": unit.end_s, "_probs": p})
        if len(rows) == unit.windows:
            _finish(predictor, unit, pending.pop(unit.video), paths, writer, counts)
    for unit in units:
        if unit.clips is None:
            pending.pop(unit.video, None)
            writer.write([{**predictor.error_row(paths[unit.video], unit.error), "start_s": "", "end_s": ""}])
            counts["error"] += 1


def _finish(predictor: Predictor, unit: Unit, rows: list[dict], paths: Sequence[str], writer: PredictionWriter,
            counts: dict[str, int]) -> None:
    if unit.start_s != "":  # window mode: the windows, then the video-level row
        probs = torch.stack([r["_probs"] for r in rows]).mean(0)
        summary = predictor.row(paths[unit.video], probs, unit.video_frames)
        rows = sorted(rows, key=lambda r: r["start_s"])
        if writer.segments is not None:
            segments = segments_of([(r["start_s"], r["end_s"], r["_probs"]) for r in rows], predictor.class_names,
                                   **writer.segment_settings)
            writer.segments.write(paths[unit.video], segments)
        rows = [*rows, {**summary, "start_s": "", "end_s": ""}]
    writer.write([{k: v for k, v in r.items() if k != "_probs"} for r in rows])
    counts["ok"] += 1
