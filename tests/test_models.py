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
    torch.testing.assert_close(loaded.trunk[0].weight, reference.conv1.weight)
    assert not torch.equal(source.trunk[0].weight, reference.conv1.weight)
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
