"""CNN+LSTM: per-frame encoder -> temporal head -> logits."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vidlstm.models.encoders import FrameEncoder
from vidlstm.models.pooling import TemporalPooling
from vidlstm.models.recurrent import RecurrentEncoder


class TemporalHead(nn.Module):
    """(B, T, D) frame features -> (B, num_classes) logits: [recurrent] -> temporal pooling -> dropout -> linear.

    Args:
        input_size: D.
        num_classes: number of output classes.
        cell: "lstm" | "gru" | "rnn", or None for no recurrence (frame features pooled directly: the
            order-blind baseline).
        hidden_size / num_layers / bidirectional / dropout: passed to `RecurrentEncoder`.
        pooling: "last" | "mean" | "max" over time.
        classifier_dropout: dropout on the pooled features before the linear classifier.
    """

    def __init__(self, input_size: int, num_classes: int, cell: str | None = "lstm", hidden_size: int = 128,
                 num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0, pooling: str = "last",
                 classifier_dropout: float = 0.0) -> None:
        super().__init__()
        self.recurrent = (
            RecurrentEncoder(input_size, hidden_size, num_layers, cell, bidirectional, dropout)
            if cell else None
        )
        width = self.recurrent.output_size if self.recurrent else input_size
        directions = self.recurrent.num_directions if self.recurrent else 1
        self.pooling = TemporalPooling(pooling, directions)
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.recurrent is not None:
            features, _ = self.recurrent(features, lengths=lengths)
        return self.classifier(self.dropout(self.pooling(features, lengths)))


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

    def forward(self, clips: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.encoder(clips), lengths)
