"""Run plots: learning curves from metrics.csv and the test confusion matrix."""

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
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


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
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)


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
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return Path(out_png)
