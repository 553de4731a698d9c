"""LightningModule for clip classification with cross-entropy and torchmetrics accuracies."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MaxMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from vidlstm.training.optim import build_scheduler, parameter_groups


def accuracy_metrics(num_classes: int, prefix: str) -> MetricCollection:
    """top-1 (``acc``), top-5 where there are more than 5 classes, and mean per-class accuracy."""
    metrics = {
        "acc": MulticlassAccuracy(num_classes, top_k=1, average="micro"),
        "mean_class_acc": MulticlassAccuracy(num_classes, average="macro"),
    }
    if num_classes > 5:
        metrics["acc_top5"] = MulticlassAccuracy(num_classes, top_k=5, average="micro")
    # compute_groups=False: torchmetrics would otherwise fuse metrics whose states match after the first batch
    # (top-1 and top-5 do when that batch is all correct) and report one metric's value under the other's name.
    return MetricCollection(metrics, prefix=prefix, compute_groups=False)


class VideoClassifier(L.LightningModule):
    """Trains a (B, T, 3, H, W) -> logits network; logs ``train/loss``, ``train/acc``, ``val/acc``,
    ``val/acc_best``, ``test/acc``, ``test/acc_top5``, ``test/mean_class_acc``.

    Args:
        net: the network (e.g. `vidlstm.models.CNNLSTM`).
        optimizer: factory ``(params) -> Optimizer`` (a Hydra ``_partial_``).
        scheduler: optional factory ``(optimizer) -> LRScheduler``.
        scheduler_interval: "epoch" or "step".
        scheduler_monitor: metric a plateau scheduler watches.
        class_names: class names in label order; stored in every checkpoint.
        label_smoothing: cross-entropy label smoothing.
        class_weights: per-class cross-entropy weights (see `vidlstm.training.optim.balanced_class_weights`).
        param_groups: optimiser settings for the ``encoder`` and ``head`` parameter groups, e.g.
            ``{"encoder": {"lr": 1e-4}}`` (see `vidlstm.training.optim.parameter_groups`).
        config: plain-data run configuration stored in checkpoints so inference can rebuild the model.
        inputs: "clips" (frames through the whole net) or "features" (cached encoder trunk features
            (B, T, D) go through the encoder's projection and the head only; see `vidlstm.data.features`).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        class_names: Sequence[str],
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | None = None,
        param_groups: Mapping[str, Mapping[str, Any] | None] | None = None,
        config: dict | None = None,
        inputs: str = "clips",
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval, self.scheduler_monitor = scheduler_interval, scheduler_monitor
        self.param_groups = param_groups
        if inputs not in ("clips", "features"):
            raise ValueError(f"inputs must be 'clips' or 'features', got {inputs!r}")
        self.inputs = inputs
        self.class_names = list(class_names)
        self.config = config
        num_classes = len(self.class_names)
        weight = None
        if class_weights is not None:
            weight = torch.as_tensor(list(class_weights), dtype=torch.float32)
            if weight.shape != (num_classes,):
                raise ValueError(f"class_weights has {weight.numel()} values for {num_classes} classes")
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_metrics = accuracy_metrics(num_classes, "val/")
        self.test_metrics = accuracy_metrics(num_classes, "test/")
        self.test_per_class = MulticlassAccuracy(num_classes, average="none")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.val_acc_best = MaxMetric()

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        if self.inputs == "features":
            return self.net.head(self.net.encoder.project(x))
        return self.net(x)

    def forward(self, clips: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> logits; (B, N, T, 3, H, W) (N clips per video) -> log of the clip-averaged
        class probabilities, which cross-entropy and the accuracies treat like logits. With
        ``inputs="features"`` the same with (B, [N,] T, D) features."""
        single = 3 if self.inputs == "features" else 5
        if clips.dim() == single:
            return self._net(clips)
        b, n = clips.shape[:2]
        probs = self._net(clips.flatten(0, 1)).view(b, n, -1).softmax(dim=-1).mean(dim=1)
        return probs.clamp_min(1e-12).log()

    def _step(self, batch: Sequence[Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        clips, labels = batch[0], batch[1]  # a ClipBatch also carries the failures of replaced videos
        logits = self(clips)
        return self.criterion(logits, labels), logits, labels

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        loss, logits, labels = self._step(batch)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def on_train_start(self) -> None:
        self.val_acc_best.reset()

    def validation_step(self, batch: Sequence[Any], batch_idx: int) -> None:
        loss, logits, labels = self._step(batch)
        self.val_metrics.update(logits, labels)
        self.log("val/loss", loss, on_step=False, on_epoch=True, prog_bar=True)

    def on_validation_epoch_end(self) -> None:
        metrics = self.val_metrics.compute()
        self.val_metrics.reset()
        self.log_dict(metrics, prog_bar=True)
        self.val_acc_best(metrics["val/acc"])  # reset in on_train_start, so sanity-check batches don't count
        self.log("val/acc_best", self.val_acc_best.compute())

    def test_step(self, batch: Sequence[Any], batch_idx: int) -> None:
        loss, logits, labels = self._step(batch)
        self.test_metrics.update(logits, labels)
        self.test_per_class.update(logits, labels)
        self.test_confusion.update(logits, labels)
        self.log("test/loss", loss, on_step=False, on_epoch=True)

    def on_test_epoch_start(self) -> None:
        self.test_per_class.reset()
        self.test_confusion.reset()

    def on_test_epoch_end(self) -> None:
        self.log_dict(self.test_metrics.compute())
        self.test_metrics.reset()

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=parameter_groups(self.net, self.param_groups))
        if self.scheduler_factory is None:
            return optimizer
        total_steps = int(self.trainer.estimated_stepping_batches)
        intervals = total_steps if self.scheduler_interval == "step" else int(self.trainer.max_epochs)
        scheduler = build_scheduler(self.scheduler_factory, optimizer, total_steps, intervals)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval,
                                 "monitor": self.scheduler_monitor}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["vidlstm"] = {"class_names": self.class_names, "config": self.config}
