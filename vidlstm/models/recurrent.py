"""Recurrent sequence encoder over per-frame features."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

RNN_CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


class RecurrentEncoder(nn.Module):
    """(B, T, D) features [+ lengths or mask] [+ initial state] -> outputs (B, T, H * dirs), final state.

    Wraps torch.nn.LSTM / GRU / RNN (so cuDNN / oneDNN kernels run) and keeps their state_dict key names
    (``weight_ih_l0``, ``bias_hh_l0_reverse``, ...): weights move freely between this and a plain nn.LSTM.

    Args:
        input_size: feature size D.
        hidden_size: H per direction.
        num_layers: stacked layers.
        cell: "lstm", "gru" or "rnn".
        bidirectional: run a second, time-reversed direction and concatenate.
        dropout: dropout between stacked layers (inactive for one layer).
        batch_first: inputs are (B, T, D) if True, (T, B, D) otherwise.
    """

    def __init__(self, input_size: int, hidden_size: int = 128, num_layers: int = 1, cell: str = "lstm",
                 bidirectional: bool = False, dropout: float = 0.0, batch_first: bool = True) -> None:
        super().__init__()
        if cell not in RNN_CELLS:
            raise ValueError(f"unknown recurrent cell {cell!r}; choose from {sorted(RNN_CELLS)}")
        self.cell, self.batch_first = cell, batch_first
        self.num_directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.num_directions
        self.rnn = RNN_CELLS[cell](input_size, hidden_size, num_layers, batch_first=batch_first,
                                   dropout=dropout if num_layers > 1 else 0.0, bidirectional=bidirectional)
        self.register_state_dict_post_hook(_drop_rnn_prefix)
        self.register_load_state_dict_pre_hook(_add_rnn_prefix)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                state: State | None = None) -> tuple[torch.Tensor, State]:
        """``lengths`` (B,) valid steps per sequence, or ``mask`` (B, T) True on valid (leading) steps.
        Outputs past a sequence's length are zero."""
        if lengths is None and mask is not None:
            lengths = mask.sum(dim=1 if self.batch_first else 0)
        if lengths is None:
            return self.rnn(x, state)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=self.batch_first, enforce_sorted=False)
        out, state = self.rnn(packed, state)
        total = x.shape[1] if self.batch_first else x.shape[0]
        out, _ = pad_packed_sequence(out, batch_first=self.batch_first, total_length=total)
        return out, state


def _drop_rnn_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "rnn.")]:
        state_dict[prefix + key[len(prefix) + 4:]] = state_dict.pop(key)


def _add_rnn_prefix(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    for name, _ in module.rnn.named_parameters():
        if prefix + name in state_dict:
            state_dict[prefix + "rnn." + name] = state_dict.pop(prefix + name)
