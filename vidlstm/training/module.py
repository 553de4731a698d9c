"""LightningModule for clip classification with cross-entropy and torchmetrics accuracies."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MaxMetric, MeanMetric, SumMetric
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from vidlstm.common.metrics import accuracy_metrics
from vidlstm.training.optim import balanced_class_weights, build_scheduler, parameter_groups
from vidlstm.utils.seeding import derived_seed, seed_step


class VideoClassifier(L.LightningModule):
    """Trains a (B, T, 3, H, W) -> logits network; logs ``train/loss``, ``train/acc``, ``val/loss``,
    ``val/acc``, ``val/acc_best``, ``val/videos``, ``test/acc``, ``test/acc_top5``, ``test/mean_class_acc``,
    ``test/videos`` (videos scored; a video that fails to decode in validation or test is left out, never
    replaced, and reported by `vidlstm.training.callbacks.BadVideoMonitor`).

    Args:
        net: the network (e.g. `vidlstm.models.CNNLSTM`), or a factory ``(num_classes) -> network`` called in
            `setup` with the class list of the trainer's datamodule: under DDP that happens on every rank after
            rank 0 has prepared the data, so nothing touches the data before Lightning's hooks.
        optimizer: factory ``(params) -> Optimizer`` (a Hydra ``_partial_``).
        class_names: class names in label order (stored in every checkpoint); None: the datamodule's.
        scheduler: optional factory ``(optimizer) -> LRScheduler``.
        scheduler_interval: "epoch" or "step".
        scheduler_monitor: metric a plateau scheduler watches.
        label_smoothing: cross-entropy label smoothing.
        class_weights: per-class cross-entropy weights, or "auto" (N / (C * n_c) from the datamodule's
            training split, see `vidlstm.training.optim.balanced_class_weights`).
        param_groups: optimiser settings for the ``encoder`` and ``head`` parameter groups, e.g.
            ``{"encoder": {"lr": 1e-4}}`` (see `vidlstm.training.optim.parameter_groups`).
        config: plain-data run configuration stored in checkpoints so inference can rebuild the model.
        inputs: "clips" (frames through the whole net) or "features" (cached encoder trunk features
            (B, T, D) go through the encoder's projection and the head only; see `vidlstm.training.features`).
        seed: reseeds torch's generator before every training batch from (seed, epoch, batch, rank), so dropout
            and other in-step randomness are the same after a resume as in an uninterrupted run; None: none.
        hparams: hyperparameters given to every logger when fitting starts (parameter counts are added).
        fingerprint: identifies the run's data and model config in its checkpoints (``ckpt_path=last`` resumes
            only a matching run; see `vidlstm.training.train.config_fingerprint`).
        class_counts: training videos per class, for ``class_weights="auto"`` with a built ``net``.
        compile: run the network through ``torch.compile`` (compiled on first use; the first steps are slower,
            outputs equal eager mode up to float rounding). The parameters and checkpoints are the plain
            network's: a compiled run's checkpoint loads anywhere.
    """

    def __init__(
        self,
        net: nn.Module | Callable[[int], nn.Module],
        optimizer: Callable[..., torch.optim.Optimizer],
        class_names: Sequence[str] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        scheduler_monitor: str = "val/loss",
        label_smoothing: float = 0.0,
        class_weights: Sequence[float] | str | None = None,
        param_groups: Mapping[str, Mapping[str, Any] | None] | None = None,
        config: dict | None = None,
        inputs: str = "clips",
        seed: int | None = None,
        hparams: Mapping[str, Any] | None = None,
        fingerprint: str | None = None,
        class_counts: Sequence[int] | None = None,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.compile_net = compile
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if inputs not in ("clips", "features"):
            raise ValueError(f"inputs must be 'clips' or 'features', got {inputs!r}")
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.scheduler_interval, self.scheduler_monitor = scheduler_interval, scheduler_monitor
        self.param_groups = param_groups
        self.inputs = inputs
        self.label_smoothing, self.class_weights = label_smoothing, class_weights
        self.config = config
        self.seed = seed
        self.run_hparams = dict(hparams or {})
        self.fingerprint = fingerprint
        self.class_names: list[str] = []
        self.net: nn.Module | None = None
        self._net_factory: Callable[[int], nn.Module] | None = None
        if isinstance(net, nn.Module):
            if class_names is None:
                raise ValueError("a built network needs its class_names")
            self.net = net
            self._build(list(class_names), list(class_counts) if class_counts is not None else None)
        else:
            self._net_factory = net
            self.class_names = list(class_names or [])

    def setup(self, stage: str) -> None:
        if self.net is not None:
            return
        datamodule = self.trainer.datamodule
        names = self.class_names or list(datamodule.class_names)
        counts = list(datamodule.class_counts("train").values()) if self.class_weights == "auto" else None
        self.net = self._net_factory(len(names))
        self._build(names, counts)

    def _build(self, class_names: list[str], class_counts: list[int] | None) -> None:
        """Everything that depends on the class list: loss weights and metrics."""
        self.class_names = class_names
        num_classes = len(class_names)
        weight = None
        if self.class_weights == "auto":
            if class_counts is None:
                raise ValueError("class_weights=auto needs the training set's class counts")
            weight = balanced_class_weights(class_counts)
        elif self.class_weights is not None:
            weight = torch.as_tensor([float(w) for w in self.class_weights], dtype=torch.float32)
            if weight.shape != (num_classes,):
                raise ValueError(f"class_weights has {weight.numel()} values for {num_classes} classes")
        self.criterion = nn.CrossEntropyLoss(weight=weight, label_smoothing=self.label_smoothing)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_metrics = accuracy_metrics(num_classes, "val/")
        self.test_metrics = accuracy_metrics(num_classes, "test/")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.val_videos, self.test_videos = SumMetric(), SumMetric()
        self.test_per_class = MulticlassAccuracy(num_classes, average="none")
        self.test_confusion = MulticlassConfusionMatrix(num_classes)
        self.val_acc_best = MaxMetric()
        self.val_acc_best.persistent(True)  # saved in checkpoints: a resumed run remembers the best so far

    def _eager(self, x: torch.Tensor) -> torch.Tensor:
        if self.inputs == "features":
            return self.net.head(self.net.encoder.project(x))
        return self.net(x)

    def _net(self, x: torch.Tensor) -> torch.Tensor:
        if not self.compile_net:
            return self._eager(x)
        compiled = self.__dict__.get("_compiled")
        if compiled is None:  # kept out of the module tree: parameters and state_dict keys stay the network's
            compiled = self.__dict__["_compiled"] = torch.compile(self._eager)
        return compiled(x)

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
        clips, labels = batch[0], batch[1]  # a ClipBatch also carries the failures
        logits = self(clips)
        return self.criterion(logits, labels), logits, labels

    def on_fit_start(self) -> None:
        params = list(self.parameters())
        counts = {"params/total": sum(p.numel() for p in params),
                  "params/trainable": sum(p.numel() for p in params if p.requires_grad)}
        for logger in self.loggers:
            logger.log_hyperparams({**self.run_hparams, **counts})

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self.seed is not None:
            # (epoch, batch) rather than global_step: micro-batches of one accumulated step differ too
            seed_step(derived_seed(self.seed, "step", self.current_epoch, batch_idx, self.global_rank))

    def training_step(self, batch: Sequence[Any], batch_idx: int) -> torch.Tensor:
        loss, logits, labels = self._step(batch)
        self.train_acc(logits, labels)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(labels))
        return loss

    def validation_step(self, batch: Sequence[Any], batch_idx: int) -> None:
        if batch[0] is None:  # every video of the batch failed to decode (reported by BadVideoMonitor)
            return
        loss, logits, labels = self._step(batch)
        self.val_metrics.update(logits, labels)
        self.val_loss.update(loss, weight=len(labels))
        self.val_videos.update(len(labels))

    def on_validation_epoch_end(self) -> None:
        # Metric objects sync across ranks in compute(): every rank gets the totals of all ranks.
        metrics = self.val_metrics.compute()
        self.log_dict({**metrics, "val/loss": self.val_loss.compute(), "val/videos": self.val_videos.compute()},
                      prog_bar=True)
        for metric in (self.val_metrics, self.val_loss, self.val_videos):
            metric.reset()
        if not self.trainer.sanity_checking:
            self.val_acc_best(metrics["val/acc"])
            self.log("val/acc_best", self.val_acc_best.compute())

    def test_step(self, batch: Sequence[Any], batch_idx: int) -> None:
        if batch[0] is None:
            return
        loss, logits, labels = self._step(batch)
        for metric in (self.test_metrics, self.test_per_class, self.test_confusion):
            metric.update(logits, labels)
        self.test_loss.update(loss, weight=len(labels))
        self.test_videos.update(len(labels))

    def on_test_epoch_start(self) -> None:
        for metric in (self.test_metrics, self.test_per_class, self.test_confusion, self.test_loss,
                       self.test_videos):
            metric.reset()

    def on_test_epoch_end(self) -> None:
        self.log_dict({**self.test_metrics.compute(), "test/loss": self.test_loss.compute(),
                       "test/videos": self.test_videos.compute()})

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
        checkpoint["vidlstm"] = {"class_names": self.class_names, "config": self.config,
                                 "fingerprint": self.fingerprint, "seed": self.seed}
