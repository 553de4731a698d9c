"""Evaluation of a checkpoint on a labelled source: clip-level and video-level accuracies, per-class table and
confusion matrix, computed in one decoding pass (every clip scored alone, then averaged per video)."""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from vidlstm.common.metrics import accuracy_metrics
from vidlstm.common.plots import plot_confusion_matrix
from vidlstm.common.report import ExampleCollector, evaluation_report
from vidlstm.data.dataset import VideoClipDataset, collate_clips
from vidlstm.data.index import VideoRecord
from vidlstm.data.sampling import MultiClipSampler
from vidlstm.inference.predictor import Predictor
from vidlstm.utils.progress import progress

log = logging.getLogger(__name__)


def evaluate(predictor: Predictor, records: Sequence[VideoRecord], output_dir: str | Path, batch_size: int = 8,
             num_workers: int = 2, config: str = "") -> dict[str, Any]:
    """Score every video of ``records`` (labels must be among the checkpoint's classes) and write
    ``evaluation.json``, ``per_class.csv`` and ``confusion_matrix.png`` to ``output_dir``. A video that fails
    to decode is left out of every metric (never replaced) and listed in ``failed_videos`` with its reason;
    ``videos`` counts the videos scored, ``videos_failed`` the others. ``report.html`` shows it all with
    ``config`` (YAML text) and the time spent waiting for decoding vs computing."""
    names = predictor.class_names
    unknown = sorted({r.label for r in records} - set(names))
    if unknown:
        raise ValueError(f"labels {unknown[:5]} are not classes of this checkpoint ({len(names)} classes)")
    num_classes = len(names)
    sampler = MultiClipSampler(predictor.num_frames, predictor.num_clips)
    # uint8 clips from the workers, converted on the model's device (`Predictor.clip_probabilities`).
    dataset = VideoClipDataset(records, names, sampler, predictor.uint8_transform, predictor.backend,
                               timeout_s=predictor.timeout_s)
    clip_metrics, video_metrics = accuracy_metrics(num_classes, "clip/"), accuracy_metrics(num_classes, "video/")
    per_class = MulticlassAccuracy(num_classes, average="none")
    confusion = MulticlassConfusionMatrix(num_classes)
    failures = []
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_clips)
    examples = ExampleCollector(records, names)  # misclassified videos for report.html's filmstrips
    timing = {"decode_wait_s": 0.0, "compute_s": 0.0}  # waiting for decoded batches vs the model
    with progress() as bar:
        task = bar.add_task("Evaluating", total=len(dataset))
        clock = time.perf_counter()
        for batch in loader:
            timing["decode_wait_s"] += time.perf_counter() - clock
            clock = time.perf_counter()
            failures += batch.failures
            bar.advance(task, len(batch.labels) + len(batch.failures))
            predictions = []
            if batch.clips is not None:  # else every video of the batch failed: left out, listed below
                n = batch.clips.shape[1]
                clip_probs = predictor.clip_probabilities(batch.clips)  # (B, N, C)
                clip_metrics.update(clip_probs.flatten(0, 1), batch.labels.repeat_interleave(n))
                video_probs = clip_probs.mean(dim=1)
                for metric in (video_metrics, per_class, confusion):
                    metric.update(video_probs, batch.labels)
                predictions = video_probs.argmax(dim=-1).tolist()
            examples.update(batch.labels.tolist(), predictions, [f.path for f in batch.failures])
            timing["compute_s"] += time.perf_counter() - clock
            clock = time.perf_counter()
    results: dict[str, Any] = {k: round(float(v), 6) for k, v in
                               {**clip_metrics.compute(), **video_metrics.compute()}.items()}
    matrix = confusion.compute().numpy()
    if failures:
        log.warning("%d of %d videos failed to decode and were left out of the metrics: %s", len(failures),
                    len(dataset), "; ".join(f"{f.path}: {f.reason}" for f in failures[:5]))
    results.update({"videos": int(matrix.sum()), "videos_failed": len(failures),
                    "clips_per_video": predictor.num_clips,
                    "per_class_acc": dict(zip(names, [round(v, 6) for v in per_class.compute().tolist()],
                                              strict=True)),
                    "confusion_matrix": matrix.tolist(), "failed_videos": [f._asdict() for f in failures],
                    "timing": {k: round(v, 3) for k, v in timing.items()}})
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "evaluation.json").write_text(json.dumps(results, indent=2))
    with open(output_dir / "per_class.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["class", "videos", "video_acc"])
        for i, name in enumerate(names):
            writer.writerow([name, int(matrix[i].sum()), results["per_class_acc"][name]])
    plot_confusion_matrix(matrix, names, output_dir / "confusion_matrix.png")
    try:
        evaluation_report(output_dir, results, names, config, examples.examples)
    except Exception:  # the results are written: a report bug must not lose them
        log.exception("report.html could not be written")
    return results


def format_report(results: dict[str, Any]) -> str:
    """The headline metrics and the per-class table as text."""
    lines = [f"{results['videos']} videos scored, {results['clips_per_video']} clips each"
             + (f"; {results['videos_failed']} failed to decode (left out, listed in evaluation.json)"
                if results.get("videos_failed") else "")]
    for level in ("clip", "video"):
        parts = [f"{k.split('/')[1]}={results[k]:.4f}" for k in results if k.startswith(f"{level}/")]
        lines.append(f"  {level:<6} " + "  ".join(parts))
    width = max(len(name) for name in results["per_class_acc"])
    lines.append(f"  {'class':<{width}}  video_acc")
    lines += [f"  {name:<{width}}  {acc:.4f}" for name, acc in results["per_class_acc"].items()]
    return "\n".join(lines)
