"""CNN+LSTM: per-frame encoder -> temporal head -> logits."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vidlstm.models.encoders import FrameEncoder
from vidlstm.models.pooling import TemporalPooling, masked_mean, running_mean, valid_mask
from vidlstm.models.recurrent import RecurrentEncoder


class FeatureStandardizer(nn.Module):
    """(B, T, D) frame features [+ lengths (B,)] -> (B, T, D), each dimension standardised: BatchNorm1d without
    a learned scale or shift over the valid steps of the batch (padded steps neither count in the statistics
    nor change), its running mean and variance at evaluation. State: ``norm.running_mean``/``running_var`` (D,)."""

    def __init__(self, size: int, momentum: float = 0.1, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(size, eps=eps, momentum=momentum, affine=False)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        if not self.training or lengths is None:
            return self.norm(x.reshape(b * t, d)).reshape(b, t, d)
        mask = valid_mask(lengths, b, t, x.device)
        return x.masked_scatter(mask.unsqueeze(-1), self.norm(x[mask]))


class TemporalHead(nn.Module):
    """(B, T, D) frame features -> (B, num_classes) logits: [feature norm] -> [feature dropout] -> [recurrent]
    -> temporal pooling [++ mean of the frame features] -> dropout -> linear.

    With ``mean_path`` the classifier sees the recurrent summary (B, F) concatenated with the mean of the frame
    features over the valid steps (B, D), i.e. logits = W_r summary + W_m mean(features) + b: the frame
    average that `model/head=meanpool` classifies is always at hand, and the recurrent part only has to add
    what order tells (the recipe conf/model/head/residual_gru.yaml).

    Args:
        input_size: D.
        num_classes: number of output classes.
        cell: "lstm" | "gru" | "rnn", or None for no recurrence (frame features pooled directly: the
            order-blind baseline).
        hidden_size / num_layers / bidirectional / dropout: passed to `RecurrentEncoder`.
        pooling: "last" | "mean" | "max" | "attention" over time.
        classifier_dropout: dropout on the pooled features before the linear classifier.
        attention_size: hidden size of the attention scorer (pooling="attention").
        feature_norm: standardise each feature dimension before anything else (`FeatureStandardizer`: batch
            statistics over the valid steps while training, running averages at evaluation, like a linear
            probe's BatchNorm on frozen features). Frozen backbones' features come at very different scales
            (a random tiny CNN's ~0.01, a pretrained ResNet's ~1, dimensions differing by orders of magnitude),
            which otherwise decides how fast each part of the head can learn.
        mean_path: concatenate the mean of the frame features over valid steps with the pooled recurrent output
            before the classifier (needs a cell). Per-step logits get the running mean up to each step.
        feature_dropout: dropout on the frame features (B, T, D) entering the head (both the recurrent layer
            and the mean path see the same dropped-out features).
        **recurrent_options: any other `RecurrentEncoder` option (proj_size, reverse, forget_bias, peephole,
            coupled_input_forget, cell_clip, zoneout_cell, zoneout_hidden, input_dropout, recurrent_dropout,
            layer_norm, gate/cell/hidden_activation, implementation).
    """

    def __init__(self, input_size: int, num_classes: int, cell: str | None = "lstm", hidden_size: int = 128,
                 num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0, pooling: str = "last",
                 classifier_dropout: float = 0.0, attention_size: int = 64, feature_norm: bool = False,
                 mean_path: bool = False, feature_dropout: float = 0.0, **recurrent_options: object) -> None:
        super().__init__()
        if cell is None and recurrent_options:
            raise ValueError(f"recurrent options {sorted(recurrent_options)} need a cell (cell is null)")
        if cell is None and mean_path:
            raise ValueError("mean_path adds the frame average beside a recurrent summary: it needs a cell "
                             "(without one, pooling=mean already classifies the frame average)")
        if not 0.0 <= feature_dropout < 1.0:
            raise ValueError(f"feature_dropout must be in [0, 1), got {feature_dropout}")
        self.mean_path = mean_path
        self.feature_norm = FeatureStandardizer(input_size) if feature_norm else None
        self.feature_dropout = nn.Dropout(feature_dropout)
        self.recurrent = (
            RecurrentEncoder(input_size, hidden_size, num_layers, cell, bidirectional, dropout,
                             **recurrent_options)  # type: ignore[arg-type]
            if cell else None
        )
        width = self.recurrent.output_size if self.recurrent else input_size
        directions = self.recurrent.num_directions if self.recurrent else 1
        self.pooling = TemporalPooling(pooling, directions, input_size=width, attention_size=attention_size)
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(width + (input_size if mean_path else 0), num_classes)

    def sequence(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, F): the recurrent outputs (or the features themselves without recurrence)."""
        if self.recurrent is None:
            return features
        return self.recurrent(features, lengths=lengths)[0]

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None,
                per_step: bool = False) -> torch.Tensor:
        """Logits (B, num_classes); with ``per_step`` one prediction per time step, (B, T, num_classes),
        each seeing the frames up to it (both directions for a bidirectional head); zeros past a length.
        ``lengths`` (B,): valid steps per clip (padding after them is ignored); None: all T are valid."""
        if self.feature_norm is not None:
            features = self.feature_norm(features, lengths)
        features = self.feature_dropout(features)
        outputs = self.sequence(features, lengths)
        if per_step:
            mask = valid_mask(lengths, *outputs.shape[:2], outputs.device)
            if self.mean_path:
                outputs = torch.cat([outputs, running_mean(features, mask)], dim=-1)
            logits = self.classifier(self.dropout(outputs))
            return logits * mask.unsqueeze(-1)
        pooled = self.pooling(outputs, lengths)
        if self.mean_path:
            pooled = torch.cat([pooled, masked_mean(features, lengths)], dim=-1)
        return self.classifier(self.dropout(pooled))

    @property
    def attention_weights(self) -> torch.Tensor | None:
        """(B, T) attention over time from the latest forward pass (pooling="attention"), else None."""
        return self.pooling.last_weights


class CNNLSTM(nn.Module):
    """Video classifier: (B, T, 3, H, W) float clips [+ lengths (B,)] -> logits (B, num_classes).

    Args:
        encoder: the per-frame CNN.
        head: a module factory called as ``head(input_size=encoder.out_dim, num_classes=num_classes)``,
            e.g. ``functools.partial(TemporalHead, hidden_size=256)`` or a Hydra partial.
        num_classes: number of classes.
    """

    def __init__(self, encoder: FrameEncoder, head: Callable[..., nn.Module], num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head(input_size=encoder.out_dim, num_classes=num_classes)
        self.num_classes = num_classes

    def forward(self, clips: torch.Tensor, lengths: torch.Tensor | None = None,
                per_step: bool = False) -> torch.Tensor:
        """Logits (B, num_classes), or (B, T, num_classes) with ``per_step`` (see `TemporalHead.forward`)."""
        features = self.encoder(clips)
        return self.head(features, lengths, per_step=True) if per_step else self.head(features, lengths)
