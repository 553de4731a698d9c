"""Models: shapes, the recurrent wrapper against torch.nn.LSTM/GRU, pooling semantics."""

from __future__ import annotations

import functools

import pytest
import torch
import torchvision
from torch import nn

from vidlstm.models import CNNLSTM, FrameEncoder, TemporalHead, TemporalPooling


@pytest.mark.parametrize(
    ("backbone", "grid", "channels"),
    [("tiny", 4, 64), ("tiny", 1, 64), ("resnet18", 1, 512), ("mobilenet_v3_small", 2, 576)],
)
def test_cnn_lstm_output_shapes(backbone: str, grid: int, channels: int) -> None:
    encoder = FrameEncoder(backbone, spatial_grid=grid)
    assert encoder.out_dim == channels * grid * grid
    clips = torch.randn(2, 5, 3, 64, 64)
    assert encoder(clips).shape == (2, 5, encoder.out_dim)
    model = CNNLSTM(encoder, functools.partial(TemporalHead, hidden_size=16, bidirectional=True), num_classes=7)
    assert model(clips).shape == (2, 7)


def test_encoder_runs_all_frames_through_the_cnn_at_once() -> None:
    encoder = FrameEncoder("tiny", spatial_grid=2).eval()
    clips = torch.randn(3, 4, 3, 32, 32)
    calls = []
    encoder.trunk.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    batched = encoder(clips)
    assert calls == [12]
    one_by_one = torch.stack([encoder(clips[:, t : t + 1])[:, 0] for t in range(4)], dim=1)
    torch.testing.assert_close(batched, one_by_one, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("backbone", ["tiny", "resnet18"])
def test_channels_last_gives_the_same_features(backbone: str) -> None:
    torch.manual_seed(0)
    nchw = FrameEncoder(backbone, spatial_grid=2).eval()
    nhwc = FrameEncoder(backbone, spatial_grid=2, channels_last=True).eval()
    nhwc.load_state_dict(nchw.state_dict())
    clips = torch.randn(2, 3, 3, 64, 64)
    assert nhwc.trunk(clips[0]).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nhwc(clips), nchw(clips), atol=1e-4, rtol=1e-4)


def test_encoder_loads_local_weights_file(tmp_path) -> None:
    """A full torchvision classifier's state dict (with fc), nested in a checkpoint as training scripts save it."""
    source = FrameEncoder("resnet18")
    reference = torchvision.models.resnet18(num_classes=1000)
    torch.save({"state_dict": reference.state_dict()}, tmp_path / "r18.pth")
    loaded = FrameEncoder("resnet18", weights=str(tmp_path / "r18.pth"))
    torch.testing.assert_close(loaded.trunk.body.conv1.weight, reference.conv1.weight)
    assert not torch.equal(source.trunk.body.conv1.weight, reference.conv1.weight)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        FrameEncoder("resnet18", weights=str(tmp_path / "missing.pth"))


def test_global_pooling_loses_position_grid_pooling_keeps_it() -> None:
    """Why the demo uses spatial_grid > 1: a blob on the left vs on the right."""
    left, right = torch.zeros(1, 1, 3, 32, 32), torch.zeros(1, 1, 3, 32, 32)
    left[..., 8:16, 2:10] = 1.0
    right[..., 8:16, 22:30] = 1.0
    conv = nn.Conv2d(3, 4, 1)
    gap, grid = FrameEncoder("tiny", spatial_grid=1).eval(), FrameEncoder("tiny", spatial_grid=4).eval()
    for encoder in (gap, grid):
        encoder.trunk = conv
        encoder.pool = nn.AdaptiveAvgPool2d(encoder.spatial_grid)
    torch.testing.assert_close(gap(left), gap(right))
    assert not torch.allclose(grid(left), grid(right))


def test_last_pooling_bidirectional_takes_forward_last_and_backward_first() -> None:
    x = torch.arange(2 * 4 * 6, dtype=torch.float32).view(2, 4, 6)
    lengths = torch.tensor([4, 2])
    pooled = TemporalPooling("last", num_directions=2)(x, lengths)
    torch.testing.assert_close(pooled[0], torch.cat([x[0, 3, :3], x[0, 0, 3:]]))
    torch.testing.assert_close(pooled[1], torch.cat([x[1, 1, :3], x[1, 0, 3:]]))


def test_mean_and_max_pooling_ignore_padding() -> None:
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    lengths = torch.tensor([2])
    assert TemporalPooling("mean")(x, lengths).item() == 2.0
    assert TemporalPooling("max")(x, lengths).item() == 3.0
    with pytest.raises(ValueError, match="unknown temporal pooling"):
        TemporalPooling("median")


def test_meanpool_head_is_blind_to_frame_order_and_lstm_head_is_not() -> None:
    torch.manual_seed(0)
    features = torch.randn(2, 6, 8)
    reversed_features = features.flip(1)
    meanpool = TemporalHead(8, 3, cell=None, pooling="mean").eval()
    lstm = TemporalHead(8, 3, cell="lstm", hidden_size=5).eval()
    torch.testing.assert_close(meanpool(features), meanpool(reversed_features))
    assert not torch.allclose(lstm(features), lstm(reversed_features))


def _bn_stats(module: nn.Module) -> list[torch.Tensor]:
    return [m.running_mean.clone() for m in module.modules() if isinstance(m, nn.BatchNorm2d)]


def test_encoder_loads_the_trunk_of_a_vidlstm_checkpoint(tmp_path) -> None:
    trained = CNNLSTM(FrameEncoder("tiny", spatial_grid=2), TemporalHead, num_classes=3)
    state = {f"model.{k}": v for k, v in trained.state_dict().items()}  # as VideoClassifier saves it
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "run.ckpt")
    reused = FrameEncoder("tiny", weights=str(tmp_path / "run.ckpt"))
    for key, value in trained.encoder.trunk.state_dict().items():
        torch.testing.assert_close(reused.trunk.state_dict()[key], value)


def test_freeze_all_makes_a_fixed_feature_extractor() -> None:
    encoder = FrameEncoder("resnet18", freeze="all", projection_size=8).train()
    assert not any(p.requires_grad for p in encoder.trunk.parameters())
    assert all(p.requires_grad for p in encoder.projection.parameters())
    before = _bn_stats(encoder)
    clips = torch.randn(2, 3, 3, 64, 64)
    features = encoder(clips)
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(encoder), strict=True))
    torch.testing.assert_close(features, encoder.eval()(clips))  # train mode computes what eval mode does
    assert features.shape == (2, 3, 8)


def test_freeze_all_but_last_trains_only_the_last_stages() -> None:
    encoder = FrameEncoder("resnet18", freeze="all_but_last", trainable_stages=2).train()
    trainable = {".".join(name.split(".")[:2]) for name, p in encoder.trunk.named_parameters() if p.requires_grad}
    assert trainable == {"body.layer3", "body.layer4"}  # resnet18 stages: conv1+bn1, layer1..layer4
    body = encoder.trunk.body
    assert body.conv1.training is False and body.get_submodule("layer4.0.bn1").training is True
    before = _bn_stats(encoder.trunk.body.layer1)
    encoder(torch.randn(1, 2, 3, 64, 64))
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(encoder.trunk.body.layer1), strict=True))


def test_freeze_bn_keeps_statistics_but_trains_weights() -> None:
    encoder = FrameEncoder("tiny", freeze_bn=True).train()
    before = _bn_stats(encoder)
    encoder(torch.randn(2, 2, 3, 32, 32)).sum().backward()
    assert all(torch.equal(a, b) for a, b in zip(before, _bn_stats(encoder), strict=True))
    assert all(p.grad is not None for p in encoder.trunk.parameters())
    unfrozen = FrameEncoder("tiny").train()
    unfrozen(torch.randn(2, 2, 3, 32, 32))
    assert not torch.equal(_bn_stats(unfrozen)[0], torch.zeros_like(_bn_stats(unfrozen)[0]))


def test_chunked_encoding_equals_one_call() -> None:
    encoder = FrameEncoder("tiny", spatial_grid=2, chunk_size=5).eval()
    calls = []
    encoder.trunk.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    clips = torch.randn(3, 4, 3, 32, 32)
    chunked = encoder(clips)
    assert calls == [5, 5, 2]
    encoder.chunk_size = 0
    torch.testing.assert_close(chunked, encoder(clips), atol=1e-5, rtol=1e-5)


def test_timm_backbone_when_installed() -> None:
    pytest.importorskip("timm")
    encoder = FrameEncoder("timm:resnet18", spatial_grid=1)
    assert encoder.out_dim == 512
    assert encoder(torch.randn(1, 2, 3, 64, 64)).shape == (1, 2, 512)


def test_bad_encoder_options_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown freeze mode 'some'"):
        FrameEncoder("tiny", freeze="some")


def test_attention_pooling_weights_follow_the_scores_and_ignore_padding() -> None:
    pool = TemporalPooling("attention", input_size=2, attention_size=3)
    with torch.no_grad():
        pool.project.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 0.0]]))
        pool.project.bias.zero_()
        pool.score.weight.copy_(torch.tensor([[5.0, 0.0, 0.0]]))
    x = torch.tensor([[[0.0, 1.0], [2.0, 3.0], [9.0, 9.0]]])  # step 2 is padding
    pooled, weights = pool(x, torch.tensor([2]), return_weights=True)
    scores = 5 * torch.tanh(torch.tensor([0.0, 2.0]))
    expected = scores.softmax(0)
    torch.testing.assert_close(weights[0], torch.cat([expected, torch.zeros(1)]))
    torch.testing.assert_close(pooled[0], expected[0] * x[0, 0] + expected[1] * x[0, 1])
    assert torch.equal(pool.last_weights, weights)


def test_attention_head_exposes_its_weights_and_per_step_logits() -> None:
    head = TemporalHead(6, 4, hidden_size=5, pooling="attention").eval()
    features, lengths = torch.randn(2, 7, 6), torch.tensor([7, 3])
    logits = head(features, lengths)
    assert logits.shape == (2, 4)
    weights = head.attention_weights
    assert weights.shape == (2, 7) and torch.allclose(weights.sum(1), torch.ones(2))
    assert torch.all(weights[1, 3:] == 0)
    steps = head(features, lengths, per_step=True)
    assert steps.shape == (2, 7, 4) and torch.all(steps[1, 3:] == 0)
    # step t's logits are the classifier on the LSTM output at t: the last valid step sees the whole clip
    outputs = head.sequence(features, lengths)
    torch.testing.assert_close(steps[1, 2], head.classifier(outputs[1, 2]))


def test_head_passes_variant_options_to_the_recurrent_layer() -> None:
    head = TemporalHead(6, 4, hidden_size=5, peephole=True, zoneout_cell=0.1, forget_bias=1.0)
    assert head.recurrent.custom and head.recurrent.rnn.peephole and head.recurrent.rnn.zoneout_cell == 0.1
    with pytest.raises(ValueError, match="need a cell"):
        TemporalHead(6, 4, cell=None, peephole=True)
