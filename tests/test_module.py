"""The LightningModule's metrics against hand-computed references."""

from __future__ import annotations

import torch

from vidlstm.common.metrics import accuracy_metrics


def _logits_for(predicted: list[int], num_classes: int) -> torch.Tensor:
    logits = torch.zeros(len(predicted), num_classes)
    logits[torch.arange(len(predicted)), torch.tensor(predicted)] = 5.0
    logits += torch.arange(num_classes) * 0.01  # fixed ranking for the non-predicted classes
    return logits


def test_accuracy_metrics_match_hand_computed_values_when_the_first_batch_is_perfect() -> None:
    """Regression: with compute groups, a perfect first batch fused top-1/top-5/mean-class states."""
    metrics = accuracy_metrics(8, "test/")
    labels_1, predicted_1 = [0, 1, 2, 3], [0, 1, 2, 3]
    labels_2, predicted_2 = [4, 4, 5, 6, 7, 7], [4, 0, 1, 6, 7, 2]
    metrics.update(_logits_for(predicted_1, 8), torch.tensor(labels_1))
    metrics.update(_logits_for(predicted_2, 8), torch.tensor(labels_2))
    values = {k: v.item() for k, v in metrics.compute().items()}

    labels, predicted = labels_1 + labels_2, predicted_1 + predicted_2
    top1 = sum(p == t for p, t in zip(predicted, labels, strict=True)) / len(labels)
    per_class = [
        sum(p == t for p, t in zip(predicted, labels, strict=True) if t == c) / labels.count(c) for c in range(8)
    ]
    logits = torch.cat([_logits_for(predicted_1, 8), _logits_for(predicted_2, 8)])
    top5 = (logits.topk(5).indices == torch.tensor(labels)[:, None]).any(1).float().mean().item()
    assert abs(values["test/acc"] - top1) < 1e-6
    assert abs(values["test/mean_class_acc"] - sum(per_class) / 8) < 1e-6
    assert abs(values["test/acc_top5"] - top5) < 1e-6
    assert len({round(v, 6) for v in values.values()}) == 3, values
