"""Accuracy metrics shared by training (val/test) and evaluation (clip/video level)."""

from __future__ import annotations

from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy


def accuracy_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """top-1 (``acc``), top-5 where there are more than 5 classes, and mean per-class accuracy; updated with
    logits or probabilities (B, num_classes) and labels (B,)."""
    metrics = {
        "acc": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
        "mean_class_acc": MulticlassAccuracy(num_classes, average="macro"),
    }
    if num_classes > 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    # compute_groups=False: torchmetrics would otherwise fuse metrics whose states match after the first batch
    # (top-1 and top-5 do when that batch is all correct) and report one metric's value under the other's name.
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)
