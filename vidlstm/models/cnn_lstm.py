"""CNN+LSTM: per-frame encoder -> temporal head -> logits."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vidlstm.models.encoders import FrameEncoder
from vidlstm.models.pooling import TemporalPooling, valid_mask
from vidlstm.models.recurrent import RecurrentEncoder


class TemporalHead(nn.Module):
    """(B, T, D) frame features -> (B, num_classes) logits: [recurrent] -> temporal pooling -> dropout -> linear.

    Args:
        input_size: D.
        num_classes: number of output classes.
        cell: "lstm" | "gru" | "rnn", or None for no recurrence (frame features pooled directly: the
            order-blind baseline).
        hidden_size / num_layers / bidirectional / dropout: passed to `RecurrentEncoder`.
        pooling: "last" | "mean" | "max" | "attention" over time.
        classifier_dropout: dropout on the pooled features before the linear classifier.
        attention_size: hidden size of the attention scorer (pooling="attention").
        **recurrent_options: any other `RecurrentEncoder` option (proj_size, reverse, forget_bias, peephole,
            coupled_input_forget, cell_clip, zoneout_cell, zoneout_hidden, input_dropout, recurrent_dropout,
            layer_norm, gate/cell/hidden_activation, implementation).
    """

    def __init__(self, input_size: int, num_classes: int, cell: str | None = "lstm", hidden_size: int = 128,
                 num_layers: int = 1, bidirectional: bool = False, dropout: float = 0.0, pooling: str = "last",
                 classifier_dropout: float = 0.0, attention_size: int = 64, **recurrent_options: object) -> None:
        super().__init__()
        if cell is None and recurrent_options:
            raise ValueError(f"recurrent options {sorted(recurrent_options)} need a cell (cell is null)")
        self.recurrent = (
            RecurrentEncoder(input_size, hidden_size, num_layers, cell, bidirectional, dropout,
                             **recurrent_options)  # type: ignore[arg-type]
            if cell else None
        )
        width = self.recurrent.output_size if self.recurrent else input_size
        directions = self.recurrent.num_directions if self.recurrent else 1
        self.pooling = TemporalPooling(pooling, directions, input_size=width, attention_size=attention_size)
        self.dropout = nn.Dropout(classifier_dropout)
        self.classifier = nn.Linear(width, num_classes)

    def sequence(self, features: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T, D) -> (B, T, F): the recurrent outputs (or the features themselves without recurrence)."""
        if self.recurrent is None:
            return features
        return self.recurrent(features, lengths=lengths)[0]

    def forward(self, features: torch.Tensor, lengths: torch.Tensor | None = None,
                per_step: bool = False) -> torch.Tensor:
        """Logits (B, num_classes); with ``per_step`` one prediction per time step, (B, T, num_classes),
        each seeing the frames up to it (both directions for a bidirectional head); zeros past a length."""
        outputs = self.sequence(features, lengths)
        if per_step:
            logits = self.classifier(self.dropout(outputs))
            mask = valid_mask(lengths, *outputs.shape[:2], outputs.device)
            return logits * mask.unsqueeze(-1)
        return self.classifier(self.dropout(self.pooling(outputs, lengths)))

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
