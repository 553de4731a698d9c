"""RecurrentEncoder: equal to torch.nn.LSTM/GRU where it should be, and each LSTM variant does what its
formula says (checked against a step written out by hand), with exact float64 gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vidlstm.models.recurrent import RecurrentEncoder, reverse_padded

IMPLEMENTATIONS = ["auto", "custom"]


def _copy_and_compare(ours: RecurrentEncoder, reference: nn.RNNBase, x: torch.Tensor,
                      lengths: torch.Tensor | None = None) -> None:
    assert list(ours.state_dict()) == list(reference.state_dict())
    ours.load_state_dict(reference.state_dict())
    out, state = ours(x, lengths=lengths)
    if lengths is None:
        ref_out, ref_state = reference(x)
    else:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        ref_out, ref_state = reference(packed)
        ref_out, _ = nn.utils.rnn.pad_packed_sequence(ref_out, batch_first=True, total_length=x.shape[1])
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=0)
    for a, b in zip(state if isinstance(state, tuple) else (state,),
                    ref_state if isinstance(ref_state, tuple) else (ref_state,), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    out.square().sum().backward()
    ref_out.square().sum().backward()
    for (name, p), (_, q) in zip(ours.rnn.named_parameters(), reference.named_parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize(("layers", "bidirectional"), [(1, False), (1, True), (2, False), (3, True)])
def test_recurrent_encoder_equals_torch_reference(cell: str, layers: int, bidirectional: bool) -> None:
    torch.manual_seed(0)
    reference = (nn.LSTM if cell == "lstm" else nn.GRU)(10, 12, layers, batch_first=True,
                                                         bidirectional=bidirectional)
    ours = RecurrentEncoder(10, 12, layers, cell=cell, bidirectional=bidirectional)
    assert not ours.custom
    _copy_and_compare(ours, reference, torch.randn(4, 7, 10))


@pytest.mark.parametrize(("layers", "bidirectional", "proj_size"),
                         [(1, False, 0), (1, True, 0), (2, False, 0), (3, True, 0), (2, True, 5)])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_custom_cell_with_options_off_equals_nn_lstm(layers: int, bidirectional: bool, proj_size: int,
                                                     with_lengths: bool) -> None:
    torch.manual_seed(0)
    reference = nn.LSTM(10, 12, layers, batch_first=True, bidirectional=bidirectional, proj_size=proj_size)
    ours = RecurrentEncoder(10, 12, layers, bidirectional=bidirectional, proj_size=proj_size,
                            implementation="custom")
    assert ours.custom
    lengths = torch.tensor([7, 3, 5, 1]) if with_lengths else None
    _copy_and_compare(ours, reference, torch.randn(4, 7, 10), lengths)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_weights_load_into_plain_lstm(implementation: str) -> None:
    ours = RecurrentEncoder(6, 5, 2, bidirectional=True, implementation=implementation)
    reference = nn.LSTM(6, 5, 2, batch_first=True, bidirectional=True)
    reference.load_state_dict(ours.state_dict())
    x = torch.randn(2, 3, 6)
    torch.testing.assert_close(ours(x)[0], reference(x)[0], atol=1e-6, rtol=0)


VARIANTS = {
    "plain": {},
    "peephole": {"peephole": True},
    "coupled": {"coupled_input_forget": True},
    "cell_clip": {"cell_clip": 0.3},
    "layer_norm": {"layer_norm": True},
    "activations": {"gate_activation": "hard_sigmoid", "cell_activation": "softsign", "hidden_activation": "relu"},
    "proj": {"proj_size": 3},
    "everything": {"peephole": True, "coupled_input_forget": True, "cell_clip": 0.5, "layer_norm": True,
                   "proj_size": 3, "zoneout_cell": 0.3, "zoneout_hidden": 0.2},
}


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("variant", ["plain", "everything"])
def test_variable_lengths_match_running_each_sequence_alone(implementation: str, bidirectional: bool,
                                                            variant: str) -> None:
    if variant != "plain" and implementation == "auto":
        pytest.skip("variants always use the custom cell")
    torch.manual_seed(1)
    ours = RecurrentEncoder(4, 6, 2, bidirectional=bidirectional, implementation=implementation,
                            **VARIANTS[variant]).eval()
    x = torch.randn(3, 9, 4)
    lengths = torch.tensor([9, 4, 6])
    out, (h, c) = ours(x, lengths=lengths)
    out_mask, _ = ours(x, mask=torch.arange(9)[None] < lengths[:, None])
    torch.testing.assert_close(out, out_mask)
    for b, n in enumerate(lengths.tolist()):
        alone, (h_alone, c_alone) = ours(x[b: b + 1, :n])
        torch.testing.assert_close(out[b, :n], alone[0], atol=1e-5, rtol=0)
        assert torch.all(out[b, n:] == 0)
        torch.testing.assert_close(h[:, b], h_alone[:, 0], atol=1e-5, rtol=0)
        torch.testing.assert_close(c[:, b], c_alone[:, 0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_initial_state_is_used(implementation: str) -> None:
    ours = RecurrentEncoder(3, 4, implementation=implementation)
    x = torch.randn(2, 5, 3)
    state = (torch.randn(1, 2, 4), torch.randn(1, 2, 4))
    reference = nn.LSTM(3, 4, batch_first=True)
    reference.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x, state=state)[0], reference(x, state)[0], atol=1e-6, rtol=0)
    assert not torch.allclose(ours(x, state=state)[0], ours(x)[0])


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_time_major_inputs(implementation: str) -> None:
    ours = RecurrentEncoder(3, 4, implementation=implementation, batch_first=False)
    x = torch.randn(5, 2, 3)  # (T, B, D)
    reference = nn.LSTM(3, 4)
    reference.load_state_dict(ours.state_dict())
    torch.testing.assert_close(ours(x)[0], reference(x)[0], atol=1e-6, rtol=0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_reverse_reads_each_sequence_backwards(implementation: str) -> None:
    torch.manual_seed(2)
    forward = RecurrentEncoder(3, 4, implementation=implementation)
    backward = RecurrentEncoder(3, 4, implementation=implementation, reverse=True)
    backward.load_state_dict(forward.state_dict())
    x, lengths = torch.randn(2, 6, 3), torch.tensor([6, 4])
    out, (h, _) = backward(x, lengths)
    expected, (h_expected, _) = forward(reverse_padded(x, lengths), lengths)
    torch.testing.assert_close(out, reverse_padded(expected, lengths))
    torch.testing.assert_close(h, h_expected)
    assert torch.equal(reverse_padded(x, lengths)[1, :4], x[1, :4].flip(0))


def test_forget_bias_initialises_the_forget_gate() -> None:
    for implementation in IMPLEMENTATIONS:
        ours = RecurrentEncoder(3, 4, implementation=implementation, forget_bias=1.0)
        state = ours.state_dict()
        assert torch.all(state["bias_ih_l0"][4:8] == 1.0) and torch.all(state["bias_hh_l0"][4:8] == 0.0)
        assert not torch.all(state["bias_ih_l0"][:4] == 1.0)


@pytest.mark.parametrize("implementation", IMPLEMENTATIONS)
def test_burn_worked_example(implementation: str) -> None:
    """burn's LSTM docs: gate weights 0.5/0.7/0.9/1.1 (input/forget/cell/output), biases 0, x = 0.1, zero
    state -> c = 0.046001, h = 0.024247."""
    lstm = RecurrentEncoder(1, 1, implementation=implementation)
    with torch.no_grad():
        for param in lstm.rnn.parameters():
            param.zero_()
        lstm.rnn.weight_ih_l0.copy_(torch.tensor([[0.5], [0.7], [0.9], [1.1]]))
    out, (h, c) = lstm(torch.full((1, 1, 1), 0.1))
    assert c.item() == pytest.approx(0.046001, abs=5e-7)
    assert h.item() == pytest.approx(0.024247, abs=5e-7)
    assert out.item() == h.item()


def _reference_steps(enc: RecurrentEncoder, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor,
                     **opt: object) -> tuple[torch.Tensor, torch.Tensor]:
    """The formulas, one unfused step at a time (one layer, one direction, evaluation mode)."""
    p = dict(enc.rnn.named_parameters())
    act = {"sigmoid": torch.sigmoid, "hard_sigmoid": F.hardsigmoid, "tanh": torch.tanh, "relu": torch.relu,
           "softsign": F.softsign}
    gate, cell, hidden = (act[str(opt.get(k, d))] for k, d in (("gate_activation", "sigmoid"),
                                                            ("cell_activation", "tanh"),
                                                            ("hidden_activation", "tanh")))
    H = c.shape[-1]
    for t in range(x.shape[1]):
        z = x[:, t] @ p["weight_ih_l0"].T + p["bias_ih_l0"] + h @ p["weight_hh_l0"].T + p["bias_hh_l0"]
        if opt.get("layer_norm"):
            parts = [(z[:, k * H:(k + 1) * H] - z[:, k * H:(k + 1) * H].mean(1, keepdim=True))
                     / torch.sqrt(z[:, k * H:(k + 1) * H].var(1, unbiased=False, keepdim=True) + 1e-5)
                     for k in range(4)]
            z = torch.cat(parts, 1) * p["gate_norm_weight_l0"] + p["gate_norm_bias_l0"]
        zi, zf, zg, zo = z[:, :H], z[:, H:2 * H], z[:, 2 * H:3 * H], z[:, 3 * H:]
        peep = p["peephole_l0"] if opt.get("peephole") else torch.zeros(3, H, dtype=x.dtype)
        i = gate(zi + peep[0] * c)
        f = 1 - i if opt.get("coupled_input_forget") else gate(zf + peep[1] * c)
        c_new = f * c + i * cell(zg)
        if opt.get("cell_clip"):
            c_new = torch.clamp(c_new, -opt["cell_clip"], opt["cell_clip"])
        o = gate(zo + peep[2] * c_new)
        h_new = o * hidden(c_new)
        if opt.get("proj_size"):
            h_new = h_new @ p["weight_hr_l0"].T
        zc, zh = float(opt.get("zoneout_cell", 0)), float(opt.get("zoneout_hidden", 0))
        c, h = zc * c + (1 - zc) * c_new, zh * h + (1 - zh) * h_new
    return h, c


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_each_variant_follows_its_formula(variant: str) -> None:
    torch.manual_seed(3)
    opt = VARIANTS[variant]
    enc = RecurrentEncoder(3, 4, implementation="custom", **opt).double().eval()
    with torch.no_grad():  # make the extra parameters non-trivial
        for name, param in enc.rnn.named_parameters():
            if "norm" in name or "peephole" in name:
                param.uniform_(-1.5, 1.5)
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    h0 = torch.randn(1, 2, opt.get("proj_size") or 4, dtype=torch.float64)
    c0 = torch.randn(1, 2, 4, dtype=torch.float64)
    out, (h, c) = enc(x, state=(h0, c0))
    h_ref, c_ref = _reference_steps(enc, x, h0[0], c0[0], **opt)
    torch.testing.assert_close(h[0], h_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(c[0], c_ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(out[:, -1], h_ref, atol=1e-10, rtol=0)


def test_cell_clip_bounds_the_cell_state() -> None:
    torch.manual_seed(4)
    free = RecurrentEncoder(3, 8, implementation="custom", forget_bias=5.0)
    clipped = RecurrentEncoder(3, 8, cell_clip=0.25)
    clipped.load_state_dict(free.state_dict())
    x = torch.randn(2, 30, 3) * 3
    assert free(x)[1][1].abs().max() > 0.5
    for t in range(1, 31):
        assert clipped(x[:, :t])[1][1].abs().max() <= 0.25 + 1e-7


def test_coupled_gates_ignore_the_forget_rows() -> None:
    """f = 1 - i: the forget gate's own weights have no effect."""
    torch.manual_seed(5)
    enc = RecurrentEncoder(3, 4, coupled_input_forget=True)
    x = torch.randn(2, 6, 3)
    before = enc(x)[0]
    with torch.no_grad():
        enc.rnn.weight_ih_l0[4:8] += 10.0
        enc.rnn.bias_hh_l0[4:8] -= 3.0
    torch.testing.assert_close(enc(x)[0], before)


def test_zoneout_keeps_each_unit_or_updates_it_while_training() -> None:
    torch.manual_seed(6)
    enc = RecurrentEncoder(3, 64, zoneout_cell=0.5)
    h0, c0 = torch.randn(1, 2, 64), torch.randn(1, 2, 64)
    x = torch.randn(2, 1, 3)
    updated = _reference_steps(enc, x, h0[0], c0[0])[1]
    _, (_, c) = enc.train()(x, state=(h0, c0))
    kept = torch.isclose(c[0], c0[0])
    assert torch.all(kept | torch.isclose(c[0], updated)), "each unit is either kept or updated"
    assert 0.3 < kept.float().mean() < 0.7, "about half the units are kept at rate 0.5"


def test_variational_input_dropout_uses_one_mask_for_all_steps() -> None:
    """With the forget gate shut and no recurrence, h_t depends on x_t alone: a constant input gives the same
    output at every step only if every step sees the same dropout mask."""
    torch.manual_seed(7)
    enc = RecurrentEncoder(16, 8, input_dropout=0.5, forget_bias=-1e4).train()
    with torch.no_grad():
        enc.rnn.weight_hh_l0.zero_()
        enc.rnn.bias_hh_l0.zero_()
    x = torch.randn(4, 1, 16).expand(4, 10, 16)
    out = enc(x)[0]
    torch.testing.assert_close(out, out[:, :1].expand_as(out))
    assert not torch.allclose(out, enc.eval()(x)[0]), "dropout is active while training"


@pytest.mark.parametrize("option", ["input_dropout", "recurrent_dropout", "zoneout_hidden"])
def test_stochastic_options_are_off_in_evaluation_and_seeded_in_training(option: str) -> None:
    torch.manual_seed(8)
    enc = RecurrentEncoder(5, 6, **{option: 0.4})
    plain = RecurrentEncoder(5, 6, implementation="custom")
    plain.load_state_dict(enc.state_dict())
    x = torch.randn(3, 7, 5)
    if option == "zoneout_hidden":  # evaluation uses the expectation, not the plain cell
        assert not torch.allclose(enc.eval()(x)[0], plain.eval()(x)[0])
    else:
        torch.testing.assert_close(enc.eval()(x)[0], plain.eval()(x)[0])
    enc.train()
    torch.manual_seed(0)
    first = enc(x)[0]
    torch.manual_seed(0)
    torch.testing.assert_close(enc(x)[0], first)
    assert not torch.allclose(first, plain(x)[0])


GRADCHECK_CASES = {
    **{name: (opt, "eval") for name, opt in VARIANTS.items()},
    "zoneout_training": ({"zoneout_cell": 0.3, "zoneout_hidden": 0.3}, "train"),
    "variational_dropout_training": ({"input_dropout": 0.3, "recurrent_dropout": 0.3}, "train"),
    "bidirectional_stacked_reverse": ({"peephole": True, "num_layers": 2, "bidirectional": True,
                                       "reverse": True, "dropout": 0.2}, "train"),
}


@pytest.mark.parametrize("case", sorted(GRADCHECK_CASES))
def test_gradcheck_float64(case: str) -> None:
    opt, mode = GRADCHECK_CASES[case]
    torch.manual_seed(9)
    enc = RecurrentEncoder(3, 4, implementation="custom", **opt).double().train(mode == "train")
    params = [p for p in enc.parameters()]
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 3])
    names = [n for n, _ in enc.named_parameters()]

    def run(inputs: torch.Tensor, *weights: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(0)  # the same dropout / zoneout masks on every evaluation
        out = torch.func.functional_call(enc, dict(zip(names, weights, strict=True)), (inputs, lengths))
        return out[0]

    weights = [p.detach().clone().requires_grad_(True) for p in params]
    assert torch.autograd.gradcheck(run, (x, *weights), eps=1e-6, atol=1e-5)


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(TypeError, match=r"unknown recurrent option.*peepholes"):
        RecurrentEncoder(3, 4, peepholes=True)
    with pytest.raises(ValueError, match=r"\['peephole'\] need cell='lstm', not 'gru'"):
        RecurrentEncoder(3, 4, cell="gru", peephole=True)
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        RecurrentEncoder(3, 4, cell_activation="swish")
    with pytest.raises(ValueError, match=r"zoneout_cell must be in \[0, 1\)"):
        RecurrentEncoder(3, 4, zoneout_cell=1.0)


def test_zoneout_draws_a_new_mask_every_step() -> None:
    """With the forget gate shut and no recurrence, the cell's update at step t depends on x_t alone. A unit
    kept at some steps and updated at others ends on an intermediate step's value, which only per-step masks
    produce (one mask per sequence would leave each unit either untouched or at the last step's value)."""
    torch.manual_seed(10)
    enc = RecurrentEncoder(3, 64, zoneout_cell=0.5, forget_bias=-1e4).train()
    with torch.no_grad():
        enc.rnn.weight_hh_l0.zero_()
        enc.rnn.bias_hh_l0.zero_()
    plain = RecurrentEncoder(3, 64, implementation="custom", forget_bias=-1e4)
    plain.load_state_dict(enc.state_dict())
    x = torch.randn(1, 6, 3)
    c0 = torch.full((1, 1, 64), 7.0)
    state = (torch.zeros(1, 1, 64), c0)
    updates = [plain(x[:, t: t + 1], state=state)[1][1][0, 0] for t in range(6)]
    c_final = enc(x, state=state)[1][1][0, 0]
    source = [next((t for t in range(6) if torch.isclose(c_final[u], updates[t][u])), None)
              if not torch.isclose(c_final[u], torch.tensor(7.0)) else "kept" for u in range(64)]
    assert None not in source, "every unit ends on its initial value or on one step's update"
    assert any(s not in ("kept", 5) for s in source), "some units end on an earlier step's update"
