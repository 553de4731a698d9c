"""Run plots: learning curves, learning rate, the confusion matrix, per-class accuracy and top confusions."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np


def read_epoch_metrics(metrics_csv: str | Path) -> dict[str, dict[int, float]]:
    """{metric: {epoch: value}} from a Lightning CSVLogger file (rows without an epoch are skipped)."""
    series: dict[str, dict[int, float]] = defaultdict(dict)
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            if not row.get("epoch"):
                continue
            epoch = int(float(row["epoch"]))
            for key, value in row.items():
                if key not in ("epoch", "step") and value not in ("", None):
                    series[key][epoch] = float(value)
    return dict(series)


def plot_curves(metrics_csv: str | Path, out_png: str | Path) -> Path:
    """Loss and accuracy per epoch, train vs val."""
    series = read_epoch_metrics(metrics_csv)
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, quantity in zip(axes, ("loss", "acc"), strict=True):
        for split in ("train", "val"):
            points = series.get(f"{split}/{quantity}", {})
            if points:
                epochs = sorted(points)
                ax.plot(epochs, [points[e] for e in epochs], marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_title(quantity)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, out_png)


def plot_confusion_matrix(confusion: np.ndarray, class_names: Sequence[str], out_png: str | Path) -> Path:
    """Row-normalised confusion matrix (rows: true class, columns: predicted) with class names."""
    confusion = np.asarray(confusion, dtype=np.float64)
    normalised = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    n = len(class_names)
    fig, ax = plt.subplots(figsize=(max(5, 0.6 * n + 2), max(4, 0.6 * n + 1.5)))
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 30:
        for i in range(n):
            for j in range(n):
                colour = "white" if normalised[i, j] > 0.5 else "black"
                ax.text(j, i, f"{normalised[i, j]:.2f}", ha="center", va="center", fontsize=7, color=colour)
    return _save(fig, out_png)


def plot_attention(weights: np.ndarray, labels: Sequence[int], predictions: Sequence[int],
                   class_names: Sequence[str], out_png: str | Path) -> Path:
    """Attention over time (one row per clip, (N, T) weights) with each clip's true and predicted class."""
    n, steps = weights.shape
    fig, ax = plt.subplots(figsize=(max(6, steps * 0.4), 0.5 * n + 1.5))
    image = ax.imshow(weights, aspect="auto", cmap="viridis", vmin=0)
    ax.set_xlabel("time step (frame of the clip)")
    ax.set_yticks(range(n), [f"{class_names[t]} -> {class_names[p]}" for t, p in zip(labels, predictions,
                                                                                     strict=True)])
    ax.set_title("Attention over time (true -> predicted), validation clips")
    fig.colorbar(image, ax=ax, fraction=0.03)
    return _save(fig, out_png)


def plot_per_class_accuracy(per_class: dict[str, float], out_png: str | Path) -> Path:
    """Horizontal bars: accuracy of each class, in class order (worst classes stand out by length)."""
    names, values = list(per_class), [float(v) for v in per_class.values()]
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.3 * len(names) + 1)))
    ax.barh(range(len(names)), values, color="tab:blue")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("accuracy")
    ax.set_title("Per-class accuracy")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, out_png)


def top_confusions(confusion: np.ndarray, class_names: Sequence[str], k: int = 10) -> list[tuple[str, str, int]]:
    """The ``k`` most frequent (true, predicted, count) off-diagonal pairs of a confusion matrix, most first."""
    matrix = np.asarray(confusion, dtype=np.int64).copy()
    np.fill_diagonal(matrix, 0)
    order = np.argsort(-matrix, axis=None, kind="stable")[:k]
    pairs = [(int(i), int(j)) for i, j in zip(*np.unravel_index(order, matrix.shape), strict=True)]
    return [(class_names[i], class_names[j], int(matrix[i, j])) for i, j in pairs if matrix[i, j] > 0]


def plot_top_confusions(confusion: np.ndarray, class_names: Sequence[str], out_png: str | Path,
                        k: int = 10) -> Path:
    """Bars of the most frequent true -> predicted mistakes (an empty chart says there were none)."""
    pairs = top_confusions(confusion, class_names, k)
    fig, ax = plt.subplots(figsize=(6, max(2.5, 0.3 * len(pairs) + 1)))
    ax.barh(range(len(pairs)), [c for _, _, c in pairs], color="tab:red")
    ax.set_yticks(range(len(pairs)), [f"{t} -> {p}" for t, p, _ in pairs])
    ax.invert_yaxis()
    ax.set_xlabel("videos")
    ax.set_title("Top confusions (true -> predicted)" if pairs else "No confusions")
    return _save(fig, out_png)


def read_lr_series(metrics_csv: str | Path) -> dict[str, list[tuple[int, float]]]:
    """{column: [(step, lr)]} of the LearningRateMonitor's ``lr-*`` columns in a CSVLogger file."""
    series: dict[str, list[tuple[int, float]]] = defaultdict(list)
    with open(metrics_csv, newline="") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if key and key.startswith("lr-") and value not in ("", None):
                    series[key].append((int(float(row.get("step") or 0)), float(value)))
    return dict(series)


def plot_lr(metrics_csv: str | Path, out_png: str | Path) -> Path | None:
    """The learning rate over optimizer steps (one line per parameter group); None when none was logged."""
    series = read_lr_series(metrics_csv)
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, points in series.items():
        ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3, label=name)
    ax.set_xlabel("step")
    ax.set_ylabel("learning rate")
    ax.set_title("Learning rate")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, out_png)


def _save(fig: plt.Figure, out_png: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
