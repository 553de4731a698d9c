"""Recurrent sequence encoder over per-frame features, with a custom LSTM for the variants nn.LSTM lacks."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

RNN_CELLS: dict[str, type[nn.RNNBase]] = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "sigmoid": torch.sigmoid,
    "hard_sigmoid": F.hardsigmoid,
    "tanh": torch.tanh,
    "relu": torch.relu,
    "softsign": F.softsign,
    "identity": lambda x: x,
}
State = torch.Tensor | tuple[torch.Tensor, torch.Tensor]


def reverse_padded(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each (B, T, ...) sequence within its first ``lengths[b]`` steps; padding stays at the end."""
    steps = x.shape[1]
    if lengths is None:
        return x.flip(1)
    t = torch.arange(steps, device=x.device)[None, :]
    n = lengths.to(x.device)[:, None]
    index = torch.where(t < n, n - 1 - t, t)
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


class LSTMVariants(nn.Module):
    """A multi-layer (bi)LSTM with the options nn.LSTM lacks. Parameters use nn.LSTM's names and layouts
    (``weight_ih_l0`` (4H, D) with gate rows i, f, g, o; ``weight_hh_l0``; ``bias_ih_l0``; ``bias_hh_l0``;
    ``weight_hr_l0`` with proj_size; ``_reverse`` suffixes), so weights move to and from nn.LSTM.
    Extra parameters: ``peephole_l0`` (3, H) for i, f, o and ``gate_norm_weight_l0`` / ``gate_norm_bias_l0``
    (4H) for layer norm.

    Per step, with one fused matmul for all four gates (inputs projected for all steps at once):
        z = W_ih x_t + b_ih + b_hh + W_hh (h_{t-1} * m_h)   [m_h: variational recurrent dropout mask]
        z = LN(z) per gate                                  [layer_norm]
        i = act_g(z_i + p_i * c_{t-1}),  f = 1 - i [coupled] or act_g(z_f + p_f * c_{t-1})
        c_t = clip(f * c_{t-1} + i * act_c(z_g))            [cell_clip]
        o = act_g(z_o + p_o * c_t),  h_t = W_hr (o * act_h(c_t))
        c_t, h_t = zoneout: keep the previous value per unit with probability z (training), or mix
                   z * previous + (1 - z) * new (evaluation)
    Input dropout is variational too: one mask per sequence, the same on every step. Padded steps (past
    ``lengths[b]``) leave the state unchanged and output zeros.

    Input (B, T, D) batch-first; state (h0, c0) shaped like nn.LSTM's: (layers * dirs, B, H_out), (.., H).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bidirectional: bool = False,
                 dropout: float = 0.0, proj_size: int = 0, peephole: bool = False,
                 coupled_input_forget: bool = False, cell_clip: float | None = None, zoneout_cell: float = 0.0,
                 zoneout_hidden: float = 0.0, input_dropout: float = 0.0, recurrent_dropout: float = 0.0,
                 layer_norm: bool = False, gate_activation: str = "sigmoid", cell_activation: str = "tanh",
                 hidden_activation: str = "tanh") -> None:
        super().__init__()
        for name in (gate_activation, cell_activation, hidden_activation):
            if name not in ACTIVATIONS:
                raise ValueError(f"unknown activation {name!r}; choose from {sorted(ACTIVATIONS)}")
        for name, p in (("zoneout_cell", zoneout_cell), ("zoneout_hidden", zoneout_hidden),
                        ("input_dropout", input_dropout), ("recurrent_dropout", recurrent_dropout),
                        ("dropout", dropout)):
            if not 0.0 <= p < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {p}")
        if cell_clip is not None and cell_clip <= 0:
            raise ValueError(f"cell_clip must be positive, got {cell_clip}")
        self.input_size, self.hidden_size, self.num_layers = input_size, hidden_size, num_layers
        self.num_directions = 2 if bidirectional else 1
        self.proj_size, self.dropout = proj_size, dropout
        self.peephole, self.coupled_input_forget, self.cell_clip = peephole, coupled_input_forget, cell_clip
        self.zoneout_cell, self.zoneout_hidden = zoneout_cell, zoneout_hidden
        self.input_dropout, self.recurrent_dropout, self.layer_norm = input_dropout, recurrent_dropout, layer_norm
        self.activation_names = (gate_activation, cell_activation, hidden_activation)
        self.gate_act, self.cell_act, self.hidden_act = (ACTIVATIONS[n] for n in self.activation_names)
        self.output_size = proj_size or hidden_size
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else self.output_size * self.num_directions
            for sfx in self.suffixes(layer):
                self._add(f"weight_ih{sfx}", 4 * hidden_size, layer_input)
                self._add(f"weight_hh{sfx}", 4 * hidden_size, self.output_size)
                self._add(f"bias_ih{sfx}", 4 * hidden_size)
                self._add(f"bias_hh{sfx}", 4 * hidden_size)
                if proj_size:
                    self._add(f"weight_hr{sfx}", proj_size, hidden_size)
                if peephole:
                    self._add(f"peephole{sfx}", 3, hidden_size)
                if layer_norm:
                    self.register_parameter(f"gate_norm_weight{sfx}", nn.Parameter(torch.ones(4 * hidden_size)))
                    self.register_parameter(f"gate_norm_bias{sfx}", nn.Parameter(torch.zeros(4 * hidden_size)))

    def suffixes(self, layer: int) -> list[str]:
        return [f"_l{layer}", f"_l{layer}_reverse"][: self.num_directions]

    def _add(self, name: str, *shape: int) -> None:
        bound = 1.0 / math.sqrt(self.hidden_size)  # nn.LSTM's initialisation
        self.register_parameter(name, nn.Parameter(torch.empty(*shape).uniform_(-bound, bound)))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None,
                state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        batch = x.shape[0]
        if state is None:
            h0 = x.new_zeros(self.num_layers * self.num_directions, batch, self.output_size)
            c0 = x.new_zeros(self.num_layers * self.num_directions, batch, self.hidden_size)
        else:
            h0, c0 = state
        mask = None
        if lengths is not None:
            mask = (torch.arange(x.shape[1], device=x.device)[None, :] < lengths.to(x.device)[:, None])
            mask = mask.unsqueeze(-1).to(x.dtype)
        finals_h, finals_c = [], []
        for layer in range(self.num_layers):
            outputs = []
            for direction, sfx in enumerate(self.suffixes(layer)):
                k = layer * self.num_directions + direction
                seq = reverse_padded(x, lengths) if direction else x
                out, (h, c) = self._run(seq, mask, sfx, h0[k], c0[k])
                outputs.append(reverse_padded(out, lengths) if direction else out)
                finals_h.append(h)
                finals_c.append(c)
            x = torch.cat(outputs, dim=-1) if len(outputs) > 1 else outputs[0]
            if self.dropout and self.training and layer < self.num_layers - 1:
                x = F.dropout(x, self.dropout, training=True)
        return x, (torch.stack(finals_h), torch.stack(finals_c))

    def _mask(self, like: torch.Tensor, p: float) -> torch.Tensor:
        return torch.bernoulli(torch.full_like(like, 1.0 - p)) / (1.0 - p)

    def _run(self, x: torch.Tensor, mask: torch.Tensor | None, sfx: str, h: torch.Tensor, c: torch.Tensor
             ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One direction of one layer over (B, T, D) -> (B, T, H_out), final (h, c)."""
        p = dict(self.named_parameters(recurse=False))
        training = self.training
        if self.input_dropout and training:
            x = x * self._mask(x[:, :1], self.input_dropout)  # one mask per sequence, all steps
        b, steps, _ = x.shape
        projected = torch.addmm(p[f"bias_ih{sfx}"] + p[f"bias_hh{sfx}"], x.reshape(b * steps, -1),
                                p[f"weight_ih{sfx}"].t()).view(b, steps, -1).unbind(1)
        w_hh_t = p[f"weight_hh{sfx}"].t()
        w_hr_t = p[f"weight_hr{sfx}"].t() if self.proj_size else None
        peep = p[f"peephole{sfx}"] if self.peephole else None
        norm = (p[f"gate_norm_weight{sfx}"].view(4, -1), p[f"gate_norm_bias{sfx}"].view(4, -1)) \
            if self.layer_norm else None
        rec_mask = self._mask(h, self.recurrent_dropout) if self.recurrent_dropout and training else None
        zone_c = self._zoneout_weights(c, steps, self.zoneout_cell)
        zone_h = self._zoneout_weights(h, steps, self.zoneout_hidden)
        steps_mask = mask.unbind(1) if mask is not None else None
        hidden = self.hidden_size
        outputs = []
        # Written for few dispatcher calls per step (addcmul / lerp fuse two ops each): at these sizes the
        # per-op overhead, not arithmetic, decides the speed relative to nn.LSTM's fused kernel.
        for t in range(steps):
            gates = torch.addmm(projected[t], h if rec_mask is None else h * rec_mask, w_hh_t)
            if norm is not None:
                gates = torch.addcmul(norm[1], F.layer_norm(gates.view(b, 4, hidden), (hidden,)), norm[0]).view(b, -1)
            zi, zf, zg, zo = gates.chunk(4, dim=1)
            if peep is not None:
                zi, zf = torch.addcmul(zi, peep[0], c), torch.addcmul(zf, peep[1], c)
            i = self.gate_act(zi)
            f = 1.0 - i if self.coupled_input_forget else self.gate_act(zf)
            c_new = torch.addcmul(f * c, i, self.cell_act(zg))
            if self.cell_clip is not None:
                c_new = c_new.clamp(-self.cell_clip, self.cell_clip)
            if peep is not None:
                zo = torch.addcmul(zo, peep[2], c_new)
            h_new = self.gate_act(zo) * self.hidden_act(c_new)
            if w_hr_t is not None:
                h_new = h_new @ w_hr_t
            if zone_c is not None:
                c_new = torch.lerp(c_new, c, zone_c[t])
            if zone_h is not None:
                h_new = torch.lerp(h_new, h, zone_h[t])
            if steps_mask is not None:
                valid = steps_mask[t]
                c_new = torch.lerp(c, c_new, valid)
                h_new = torch.lerp(h, h_new, valid)
                outputs.append(h_new * valid)
            else:
                outputs.append(h_new)
            h, c = h_new, c_new
        return torch.stack(outputs, dim=1), (h, c)

    def _zoneout_weights(self, like: torch.Tensor, steps: int, rate: float) -> list[torch.Tensor | float] | None:
        """Per step, the weight of the previous value: a Bernoulli(rate) mask per unit while training (drawn
        for all steps at once), the expectation ``rate`` in evaluation, None when zoneout is off."""
        if not rate:
            return None
        if not self.training:
            return [rate] * steps
        return list(torch.bernoulli(like.new_full((steps, *like.shape), rate)).unbind(0))

    def extra_repr(self) -> str:
        on = [f"{k}={v}" for k, v in self.variant_settings().items()]
        return f"{self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, " + ", ".join(on)

    def variant_settings(self) -> dict[str, object]:
        settings = {"peephole": self.peephole, "coupled_input_forget": self.coupled_input_forget,
                    "cell_clip": self.cell_clip, "zoneout_cell": self.zoneout_cell,
                    "zoneout_hidden": self.zoneout_hidden, "input_dropout": self.input_dropout,
                    "recurrent_dropout": self.recurrent_dropout, "layer_norm": self.layer_norm,
                    "activations": self.activation_names}
        return {k: v for k, v in settings.items() if v and v != ("sigmoid", "tanh", "tanh")}


# Options that need `LSTMVariants`; each value here means "off".
VARIANT_DEFAULTS: dict[str, object] = {
    "peephole": False, "coupled_input_forget": False, "cell_clip": None, "zoneout_cell": 0.0,
    "zoneout_hidden": 0.0, "input_dropout": 0.0, "recurrent_dropout": 0.0, "layer_norm": False,
    "gate_activation": "sigmoid", "cell_activation": "tanh", "hidden_activation": "tanh",
}


class RecurrentEncoder(nn.Module):
    """(B, T, D) features [+ lengths or mask] [+ initial state] -> outputs (B, T, H_out * dirs), final state.

    With no variant option on it IS torch.nn.LSTM / GRU / RNN (cuDNN / oneDNN kernels) and keeps their
    state_dict key names (``weight_ih_l0``, ``bias_hh_l0_reverse``, ...). Any LSTM variant option switches to
    `LSTMVariants`, which uses the same names and layouts, so weights move freely between all of them.

    Args:
        input_size: feature size D.
        hidden_size: H per direction.
        num_layers: stacked layers.
        cell: "lstm", "gru" or "rnn".
        bidirectional: run a second, time-reversed direction and concatenate.
        dropout: dropout between stacked layers (inactive for one layer).
        batch_first: inputs are (B, T, D) if True, (T, B, D) otherwise.
        proj_size: LSTM only; project h to this size (H_out = proj_size), as nn.LSTM's proj_size.
        reverse: read each sequence backwards (within its length); outputs are returned in input order.
        forget_bias: initial value of the forget-gate bias (split as ``bias_ih`` = value, ``bias_hh`` = 0);
            None keeps the default init. 1.0 is the common choice (Jozefowicz et al. 2015).
        implementation: "auto" (torch where possible) or "custom" (always `LSTMVariants`; LSTM only).
        **variants: LSTM options, see `VARIANT_DEFAULTS` and `LSTMVariants`: peephole, coupled_input_forget,
            cell_clip, zoneout_cell, zoneout_hidden, input_dropout, recurrent_dropout (both variational),
            layer_norm, gate_activation, cell_activation, hidden_activation.
    """

    def __init__(self, input_size: int, hidden_size: int = 128, num_layers: int = 1, cell: str = "lstm",
                 bidirectional: bool = False, dropout: float = 0.0, batch_first: bool = True, proj_size: int = 0,
                 reverse: bool = False, forget_bias: float | None = None, implementation: str = "auto",
                 **variants: object) -> None:
        super().__init__()
        if cell not in RNN_CELLS:
            raise ValueError(f"unknown recurrent cell {cell!r}; choose from {sorted(RNN_CELLS)}")
        unknown = sorted(set(variants) - set(VARIANT_DEFAULTS))
        if unknown:
            raise TypeError(f"unknown recurrent option(s) {unknown}; known: {sorted(VARIANT_DEFAULTS)}")
        if implementation not in ("auto", "custom"):
            raise ValueError(f"implementation must be 'auto' or 'custom', got {implementation!r}")
        active = {k: v for k, v in variants.items() if v != VARIANT_DEFAULTS[k]}
        self.custom = bool(active) or implementation == "custom"
        if cell != "lstm" and (self.custom or proj_size or forget_bias is not None):
            options = sorted(active) + ["proj_size"] * bool(proj_size) + ["forget_bias"] * (forget_bias is not None)
            raise ValueError(f"{options or ['implementation=custom']} need cell='lstm', not {cell!r}")
        self.cell, self.batch_first, self.reverse = cell, batch_first, reverse
        self.num_directions = 2 if bidirectional else 1
        self.output_size = (proj_size or hidden_size) * self.num_directions
        layer_dropout = dropout if num_layers > 1 else 0.0
        if self.custom:
            self.rnn: nn.Module = LSTMVariants(input_size, hidden_size, num_layers, bidirectional, layer_dropout,
                                               proj_size, **variants)
        else:
            extra = {"proj_size": proj_size} if cell == "lstm" else {}
            self.rnn = RNN_CELLS[cell](input_size, hidden_size, num_layers, batch_first=True,
                                       dropout=layer_dropout, bidirectional=bidirectional, **extra)
        if forget_bias is not None:
            with torch.no_grad():
                for name, param in self.rnn.named_parameters():
                    if name.startswith(("bias_ih", "bias_hh")):
                        param[hidden_size: 2 * hidden_size] = forget_bias if name.startswith("bias_ih") else 0.0
        self.register_state_dict_post_hook(_drop_rnn_prefix)
        self.register_load_state_dict_pre_hook(_add_rnn_prefix)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                state: State | None = None) -> tuple[torch.Tensor, State]:
        """``lengths`` (B,) valid steps per sequence, or ``mask`` (B, T) True on valid (leading) steps.
        Outputs past a sequence's length are zero. ``state``: as nn.LSTM's (h0, c0) / nn.GRU's h0."""
        if not self.batch_first:
            x = x.transpose(0, 1)
            mask = mask.transpose(0, 1) if mask is not None else None
        if lengths is None and mask is not None:
            lengths = mask.sum(dim=1)
        if self.reverse:
            x = reverse_padded(x, lengths)
        out, state = self._run(x, lengths, state)
        if self.reverse:
            out = reverse_padded(out, lengths)
        return (out if self.batch_first else out.transpose(0, 1)), state

    def _run(self, x: torch.Tensor, lengths: torch.Tensor | None, state: State | None) -> tuple[torch.Tensor, State]:
        if self.custom:
            return self.rnn(x, lengths, state)
        if lengths is None:
            return self.rnn(x, state)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, state = self.rnn(packed, state)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out, state


def _drop_rnn_prefix(module: nn.Module, state_dict: dict, prefix: str, local_metadata: dict) -> None:
    for key in [k for k in state_dict if k.startswith(prefix + "rnn.")]:
        state_dict[prefix + key[len(prefix) + 4:]] = state_dict.pop(key)


def _add_rnn_prefix(module: nn.Module, state_dict: dict, prefix: str, *args: object) -> None:
    for name, _ in module.rnn.named_parameters():
        if prefix + name in state_dict:
            state_dict[prefix + "rnn." + name] = state_dict.pop(prefix + name)
