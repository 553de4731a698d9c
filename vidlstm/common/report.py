"""report.html: one self-contained page per training or evaluation run (plots inlined as data: URIs, no network
needed, a Content-Security-Policy that forbids any) and the timeline page of predict's window mode.

Everything that comes from data (paths, labels, reasons, the config) is HTML-escaped."""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from omegaconf import OmegaConf

from vidlstm.common import plots
from vidlstm.utils.textfiles import open_paths

log = logging.getLogger(__name__)

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"
PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{csp}">
<title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1100px; color: #222; }}
h1 {{ font-size: 1.5em; }} h2 {{ border-bottom: 1px solid #ccc; margin-top: 1.6em; }}
.cards {{ display: flex; gap: 1em; flex-wrap: wrap; }}
.card {{ border: 1px solid #ccc; border-radius: 6px; padding: .6em 1em; }}
.card b {{ display: block; font-size: 1.6em; }}
table {{ border-collapse: collapse; }} td, th {{ border: 1px solid #ddd; padding: .25em .6em; text-align: left; }}
th {{ background: #f3f3f3; cursor: pointer; }} img {{ max-width: 100%; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }} .muted {{ color: #777; }}
</style></head><body>
<h1>{title}</h1>
{body}
<script>
for (const th of document.querySelectorAll("table.sortable th")) {{
  th.addEventListener("click", () => {{
    const body = th.closest("table").tBodies[0], i = th.cellIndex;
    const key = r => {{ const t = r.cells[i].textContent, n = parseFloat(t); return isNaN(n) ? t : n; }};
    [...body.rows].sort((a, b) => key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0).forEach(r => body.append(r));
  }});
}}
</script>
</body></html>
"""
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
           "#17becf")


@dataclass
class RunPage:
    """What a run's page shows; ``examples`` maps (true, predicted) to paths of misclassified videos."""

    title: str
    headline: dict[str, Any]
    class_names: list[str]
    confusion: np.ndarray | None
    failed: list[dict[str, Any]]
    config_yaml: str
    timing: dict[str, Any]
    images: dict[str, Path] = field(default_factory=dict)
    examples: dict[tuple[str, str], list[str]] = field(default_factory=dict)


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str, sortable: bool = False) -> str:
    head = "".join(f"<th>{escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    cls = ' class="sortable"' if sortable else ""
    return f"<table id=\"{table_id}\"{cls}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _number(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else escape(str(value))


def filmstrip(path: str, frames: int = 4, height: int = 72) -> str | None:
    """A data: URI of ``frames`` evenly spaced frames of the video side by side (None when it cannot be read)."""
    from PIL import Image

    from vidlstm.data.video import open_video

    try:
        with open_video(path) as reader:
            indices = np.linspace(0, max(reader.num_frames - 1, 0), frames).round().astype(int).tolist()
            strip = torch.cat(list(reader.get_frames(indices)), dim=2).permute(1, 2, 0).numpy()  # (H, T*W, 3)
    except Exception as err:  # a report never fails over an example clip
        log.warning("No filmstrip for %s: %s", path, err)
        return None
    image = Image.fromarray(strip)
    image = image.resize((max(1, round(image.width * height / image.height)), height))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return _data_uri(buffer.getvalue())


def _per_class_rows(confusion: np.ndarray, names: Sequence[str]) -> list[list[Any]]:
    totals, correct = confusion.sum(axis=1), confusion.diagonal()
    return [[name, int(totals[i]), int(correct[i]), f"{correct[i] / totals[i]:.4f}" if totals[i] else "n/a"]
            for i, name in enumerate(names)]


def _confused(page: RunPage, pairs: int = 3, clips: int = 2) -> str:
    rows = plots.top_confusions(page.confusion, page.class_names, pairs) if page.confusion is not None else []
    if not rows:
        return "<p>No misclassified videos.</p>"
    parts = []
    for true, predicted, count in rows:
        strips = []
        for path in page.examples.get((true, predicted), [])[:clips]:
            uri = filmstrip(path)
            image = f'<img src="{uri}" alt="frames of {escape(path)}"><br>' if uri else ""
            strips.append(f"<figure>{image}<figcaption>{escape(path)}</figcaption></figure>")
        parts.append(f"<h3>{escape(true)} &rarr; {escape(predicted)}: {count} video{'s' if count != 1 else ''}</h3>"
                     + ("".join(strips) or '<p class="muted">no example clip recorded</p>'))
    return "".join(parts)


def _sections(page: RunPage) -> tuple[str, str, str]:
    """The per-class, failed-video and timing tables (or a line saying there is nothing to show)."""
    per_class = "<p>No test results.</p>"
    if page.confusion is not None:
        rows = _per_class_rows(page.confusion, page.class_names)
        per_class = _table(["class", "videos", "correct", "accuracy"], rows, "per-class", True)
    failed = "<p>No video failed to decode.</p>"
    if page.failed:
        rows = [[f.get("path", ""), f.get("reason", ""), f.get("where", "")] for f in page.failed]
        failed = _table(["path", "reason", "where"], rows, "failed", True)
    timing = "<p>No timing was recorded.</p>"
    if page.timing:
        timing = _table(["measure", "value"], [[k, _number(v)] for k, v in page.timing.items()], "timing")
    return per_class, failed, timing


def render(page: RunPage) -> str:
    """The page as HTML."""
    cards = "".join(f'<div class="card">{escape(k)}<b>{_number(v)}</b></div>' for k, v in page.headline.items())
    images = "".join(f"<h3>{escape(caption)}</h3><img src=\"{_data_uri(Path(png).read_bytes())}\" "
                     f"alt=\"{escape(caption)}\">" for caption, png in page.images.items() if Path(png).is_file())
    per_class, failed, timing = _sections(page)
    body = (f'<div class="cards">{cards}</div><h2>Plots</h2>{images}<h2>Per-class accuracy</h2>{per_class}'
            f"<h2>Most confused pairs</h2>{_confused(page)}<h2>Videos that failed</h2>{failed}"
            f"<h2>Timing</h2>{timing}<h2>Config</h2><pre>{escape(page.config_yaml)}</pre>")
    return PAGE.format(csp=CSP, title=escape(page.title), body=body)


def config_yaml(cfg: Any) -> str:
    """The resolved config as YAML, less Hydra's own section (unresolved when an interpolation cannot be)."""
    try:
        plain = OmegaConf.to_container(cfg, resolve=True)
    except Exception:
        plain = OmegaConf.to_container(cfg, resolve=False)
    if isinstance(plain, dict):
        plain.pop("hydra", None)
    return OmegaConf.to_yaml(plain)


def write_page(page: RunPage, out_html: str | Path) -> Path:
    Path(out_html).write_text(render(page), encoding="utf-8", errors="backslashreplace")  # undecodable names shown
    return Path(out_html)


def _plots(output_dir: Path, confusion: np.ndarray | None, names: list[str]) -> dict[str, Path]:
    """The plots beside the page: curves and learning rate (from metrics.csv), confusions, per-class bars."""
    images: dict[str, Path] = {}
    metrics = output_dir / "metrics.csv"
    curves, matrix = output_dir / "curves.png", output_dir / "confusion_matrix.png"  # reused when the run wrote them
    if metrics.is_file():
        images["Loss and accuracy"] = curves if curves.is_file() else plots.plot_curves(metrics, curves)
        lr = plots.plot_lr(metrics, output_dir / "learning_rate.png")
        if lr:
            images["Learning rate"] = lr
    if confusion is not None:
        accuracy = (confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)).tolist()
        if not matrix.is_file():
            plots.plot_confusion_matrix(confusion, names, matrix)
        images["Confusion matrix"] = matrix
        images["Per-class accuracy"] = plots.plot_per_class_accuracy(dict(zip(names, accuracy, strict=True)),
                                                                     output_dir / "per_class_acc.png")
        images["Top confusions"] = plots.plot_top_confusions(confusion, names, output_dir / "top_confusions.png")
    return images


def _bad_videos_csv(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with open_paths(path) as f:
        return [{"path": r["path"], "reason": r["reason"],
                 "where": f"{r['stage']}" + (f" epoch {r['epoch']}" if r.get("epoch") else "")}
                for r in csv.DictReader(f)]


EVAL_TIMING = {"decode_wait_s": "waiting for decoded batches (s)", "compute_s": "model compute (s)"}
TRAIN_TIMING = {"wall_time_s": "run wall time (s)", "fit_time_s": "fit time (s)", "epoch_time_s":
                "median epoch time (s)", "train/clips_per_s": "training clips/s",
                "train/data_wait_share": "share of training time waiting for decoded data",
                "feature_extraction_s": "feature extraction (s)"}


def training_report(output_dir: str | Path, summary: dict[str, Any], config_yaml: str,
                    examples: dict[tuple[str, str], list[str]] | None = None) -> Path:
    """``output_dir/report.html`` of a training run from its summary.json contents and files."""
    output_dir = Path(output_dir)
    names = list(summary.get("class_names") or summary.get("test/per_class_acc", {}))
    confusion = np.asarray(summary["test/confusion_matrix"]) if "test/confusion_matrix" in summary else None
    failed = [{**f, "where": f"{f.get('split', '')} ({f.get('stage', '')})"} for f in summary.get("failed_videos", [])]
    seen = {f["path"] for f in failed}
    failed += [f for f in _bad_videos_csv(output_dir / "bad_videos.csv") if f["path"] not in seen]
    headline = {k: summary[k] for k in ("test/acc", "val/acc_best", "test/acc_top5", "test/mean_class_acc")
                if k in summary}
    headline["test videos"] = int(confusion.sum()) if confusion is not None else summary.get("test/videos", "n/a")
    headline["failed videos"] = len(failed)
    timing = {label: summary[k] for k, label in TRAIN_TIMING.items() if k in summary}
    if "train/data_wait_share" in summary:  # the rest of a training step is the model's forward/backward
        timing["share of training time computing"] = round(1 - summary["train/data_wait_share"], 6)
    page = RunPage(f"Training run {output_dir.name}", headline, names, confusion, failed, config_yaml, timing,
                   _plots(output_dir, confusion, names), examples or {})
    return write_page(page, output_dir / "report.html")


def evaluation_report(output_dir: str | Path, results: dict[str, Any], class_names: list[str], config_yaml: str,
                      examples: dict[tuple[str, str], list[str]] | None = None) -> Path:
    """``output_dir/report.html`` of an evaluation from its evaluation.json contents."""
    output_dir = Path(output_dir)
    confusion = np.asarray(results["confusion_matrix"])
    headline = {k: results[k] for k in ("video/acc", "video/acc_top5", "video/mean_class_acc", "clip/acc")
                if k in results}
    headline.update({"videos": results["videos"], "failed videos": results["videos_failed"]})
    failed = [{**f, "where": "evaluation"} for f in results.get("failed_videos", [])]
    page = RunPage(f"Evaluation {output_dir.name}", headline, class_names, confusion, failed, config_yaml,
                   {label: results["timing"][k] for k, label in EVAL_TIMING.items() if k in results.get("timing", {})},
                   _plots(output_dir, confusion, class_names), examples or {})
    return write_page(page, output_dir / "report.html")


class ExampleCollector:
    """Misclassified videos per (true, predicted) pair, from an evaluation pass that scores ``records`` in order
    (videos that fail to decode are missing from a batch and named in its failures). Stops collecting when the
    batches stop lining up with the records (checked by label)."""

    def __init__(self, records: Sequence[Any], class_names: Sequence[str], per_pair: int = 2) -> None:
        self.records, self.names, self.per_pair = records, list(class_names), per_pair
        self.position, self.aligned = 0, True
        self._found: dict[tuple[str, str], list[str]] = {}

    @property
    def examples(self) -> dict[tuple[str, str], list[str]]:
        return self._found if self.aligned else {}

    def update(self, labels: Sequence[int], predictions: Sequence[int], failed_paths: Sequence[str]) -> None:
        count = len(labels) + len(failed_paths)
        failed = set(failed_paths)
        chunk = [r for r in self.records[self.position:self.position + count] if r.path not in failed]
        self.position += count
        if not self.aligned or [r.label for r in chunk] != [self.names[int(t)] for t in labels]:
            self.aligned = False
            return
        for record, true, predicted in zip(chunk, labels, predictions, strict=True):
            if int(true) != int(predicted):
                paths = self._found.setdefault((self.names[int(true)], self.names[int(predicted)]), [])
                if len(paths) < self.per_pair:
                    paths.append(record.path)


class TestExamples(L.Callback):
    """Records misclassified test videos for the report from the test pass's own forward calls (no extra
    decoding or compute). Single process, video inputs only; elsewhere the report shows no example clips."""

    def __init__(self) -> None:
        self.collector: ExampleCollector | None = None
        self._hook: Any = None
        self._logits: torch.Tensor | None = None

    @property
    def examples(self) -> dict[tuple[str, str], list[str]]:
        return self.collector.examples if self.collector else {}

    def on_test_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        loader = trainer.test_dataloaders
        loader = loader[0] if isinstance(loader, list | tuple) else loader
        records = getattr(getattr(loader, "dataset", None), "records", None)
        if trainer.world_size > 1 or records is None or getattr(pl_module, "inputs", "videos") == "features":
            return
        self.collector = ExampleCollector(records, pl_module.class_names)
        self._hook = pl_module.register_forward_hook(lambda _m, _i, out: setattr(self, "_logits", out.detach()))

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        if self.collector is None:
            return
        failed = [f.path for f in (batch[2] if len(batch) > 2 else [])]
        predictions = self._logits.argmax(-1).tolist() if batch[0] is not None and self._logits is not None else []
        self.collector.update(batch[1].tolist(), predictions, failed)
        self._logits = None

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def _timeline_svg(segments: list[dict[str, Any]], colours: dict[str, str], width: int = 900) -> str:
    end = max((float(s["end_s"]) for s in segments), default=0.0) or 1.0
    rects = []
    for s in segments:
        x, w = width * float(s["start_s"]) / end, width * (float(s["end_s"]) - float(s["start_s"])) / end
        tip = f"{s['label']}: {float(s['start_s']):.2f}-{float(s['end_s']):.2f} s, score {float(s['score']):.3f}"
        rects.append(f'<rect x="{x:.1f}" y="0" width="{max(w, 1):.1f}" height="24" '
                     f'fill="{colours[str(s["label"])]}"><title>{escape(tip)}</title></rect>')
    return (f'<svg width="{width}" height="40" viewBox="0 0 {width} 40" role="img">{"".join(rects)}'
            f'<text x="0" y="37" font-size="11">0 s</text><text x="{width}" y="37" font-size="11" '
            f'text-anchor="end">{end:.1f} s</text></svg>')


def write_timeline(segments_jsonl: str | Path, out_html: str | Path) -> Path:
    """A self-contained page with one bar per video: its action segments coloured by label (hover for label,
    start, end and score) and a legend."""
    videos: dict[str, list[dict[str, Any]]] = {}
    for line in Path(segments_jsonl).read_text().splitlines():
        if line.strip():
            segment = json.loads(line)
            videos.setdefault(segment["path"], []).append(segment)
    labels = sorted({str(s["label"]) for segments in videos.values() for s in segments})
    colours = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}
    legend = " ".join(f'<span style="display:inline-block;width:1em;height:1em;background:{colours[label]}">'
                      f"</span> {escape(label)}" for label in labels)
    rows = "".join(f"<h3>{escape(path)}</h3>{_timeline_svg(segments, colours)}" for path, segments in videos.items())
    body = (f"<p>{len(videos)} videos, {sum(map(len, videos.values()))} segments. Legend: {legend}</p>"
            + (rows or "<p>No segments.</p>"))
    Path(out_html).write_text(PAGE.format(csp=CSP, title=escape(f"Segments: {Path(segments_jsonl).name}"),
                                          body=body), encoding="utf-8", errors="backslashreplace")
    return Path(out_html)
