"""Clip transforms: one random draw per clip (same crop and flip for every frame), shapes and scaling."""

from __future__ import annotations

import pytest
import torch

from vidlstm.data.transforms import eval_transform, train_transform


def _clip() -> torch.Tensor:
    """8 frames of the same picture: a gradient, so any crop or flip shows in the pixels."""
    frame = torch.arange(90 * 120, dtype=torch.float32).view(1, 90, 120) / (90 * 120) * 255
    return frame.expand(8, 3, 90, 120).round().to(torch.uint8).contiguous()


def test_train_transform_draws_once_per_clip() -> None:
    transform = train_transform(32, resize=48, scale=(0.3, 0.6), hflip=True, color_jitter=0.3)
    torch.manual_seed(0)
    for _ in range(5):
        out = transform(_clip())
        assert out.shape == (8, 3, 32, 32) and out.dtype == torch.float32
        assert all(torch.equal(out[0], out[t]) for t in range(1, 8)), "every frame must get the same draw"
    assert not torch.equal(transform(_clip()), transform(_clip())), "different clips get different draws"


def test_eval_transform_is_deterministic_centre_crop_normalised() -> None:
    out = eval_transform(64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(_clip())
    assert out.shape == (8, 3, 64, 64)
    assert torch.equal(out, eval_transform(64, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))(_clip()))
    assert out.min() >= 0.0 and out.max() <= 1.0
    normalised = eval_transform(64)(_clip())
    torch.testing.assert_close(normalised[:, 0], (out[:, 0] - 0.485) / 0.229)


@pytest.mark.parametrize("make", [
    lambda: eval_transform(48),
    lambda: eval_transform(32, resize=40, mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0), interpolation="bicubic"),
    lambda: train_transform(32, resize=40, hflip=True, color_jitter=0.3),
])
def test_the_fused_normalisation_equals_the_v2_pipeline(make) -> None:
    from torchvision import tv_tensors

    transform = make()
    assert transform._shift is not None  # the fused path is the one under test
    clip = torch.randint(0, 256, (5, 3, 48, 64), dtype=torch.uint8)
    torch.manual_seed(3)
    fused = transform(clip)
    torch.manual_seed(3)
    reference = transform.pipeline(tv_tensors.Video(clip)).as_subclass(torch.Tensor)
    assert fused.dtype == torch.float32 and fused.shape == reference.shape
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
    as_float = clip.float() / 255  # not uint8: the whole pipeline runs (ToDtype does not rescale floats)
    torch.manual_seed(3)
    got = transform(as_float)
    torch.manual_seed(3)
    torch.testing.assert_close(got, transform.pipeline(tv_tensors.Video(as_float)).as_subclass(torch.Tensor))


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "nearest-exact"])
def test_evaluation_resize_and_crop_called_directly_equal_v2_exactly(interpolation) -> None:
    """Fixed resizes and centre crops skip v2's dispatch; every pixel still equals v2 on a video, for frames
    already at size, smaller, larger, portrait, landscape and odd-sized, with and without a separate resize."""
    from torchvision import tv_tensors

    shapes = [(4, 3, 32, 32), (4, 3, 48, 64), (3, 3, 64, 48), (2, 3, 17, 91), (2, 3, 240, 320), (1, 3, 20, 20)]
    for size, resize in [(32, None), (32, 40), (28, 28), (64, 80)]:
        uint8_part, float_part = eval_transform(size, resize=resize, interpolation=interpolation).split()
        for shape in shapes:
            clip = torch.randint(0, 256, shape, dtype=torch.uint8)
            reference = uint8_part.pipeline(tv_tensors.Video(clip)).as_subclass(torch.Tensor)
            got = uint8_part(clip)
            assert type(got) is torch.Tensor and got.dtype == torch.uint8 and torch.equal(got, reference)
            whole = eval_transform(size, resize=resize, interpolation=interpolation)
            torch.testing.assert_close(whole(clip), float_part(got), atol=0, rtol=0)
