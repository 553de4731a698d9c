"""Samplers: the frames each strategy picks, short videos, multi-clip testing."""

from __future__ import annotations

import pytest
import torch

from vidlstm.data.sampling import DenseClipSampler, MultiClipSampler, UniformSegmentSampler


def test_uniform_segments_centre_and_jitter() -> None:
    assert UniformSegmentSampler(4)(40) == [5, 15, 25, 35]
    torch.manual_seed(0)
    for _ in range(50):
        picks = UniformSegmentSampler(4, jitter=True)(40)
        assert all(10 * k <= p < 10 * (k + 1) for k, p in enumerate(picks))
    assert UniformSegmentSampler(6)(3) == [0, 0, 1, 1, 2, 2]  # short video: repeats, order kept


def test_dense_clip_positions_and_interval() -> None:
    assert DenseClipSampler(4, frame_interval=2)(20) == [6, 8, 10, 12]  # centred: slack 13 -> start 6
    assert DenseClipSampler(4, 2, position=0.0)(20) == [0, 2, 4, 6]
    assert DenseClipSampler(4, 2, position=1.0)(20) == [13, 15, 17, 19]
    torch.manual_seed(0)
    starts = {DenseClipSampler(4, 2, jitter=True)(20)[0] for _ in range(200)}
    assert starts == set(range(14))


def test_short_videos_loop_or_repeat_last() -> None:
    assert DenseClipSampler(6, 1, short_video="loop")(4) == [0, 1, 2, 3, 0, 1]
    assert DenseClipSampler(6, 1, short_video="repeat_last")(4) == [0, 1, 2, 3, 3, 3]
    with pytest.raises(ValueError, match="short_video"):
        DenseClipSampler(4, short_video="mirror")


def test_multi_clip_spreads_clips_over_the_video() -> None:
    dense = MultiClipSampler(4, num_clips=3, clip="dense", frame_interval=2)(40)
    assert dense == [[0, 2, 4, 6], [16, 18, 20, 22], [33, 35, 37, 39]]
    segments = MultiClipSampler(2, num_clips=2, clip="segments")(40)
    assert segments == [[5, 25], [15, 35]]


def test_multi_clip_scores_are_averaged_per_video() -> None:
    from vidlstm.training.module import VideoClassifier

    class Fixed(torch.nn.Module):
        def forward(self, clips):  # logits that depend on the clip's first pixel
            return torch.stack([clips[:, 0, 0, 0, 0], -clips[:, 0, 0, 0, 0]], dim=1)

    module = VideoClassifier(Fixed(), optimizer=torch.optim.SGD, class_names=["a", "b"])
    clips = torch.zeros(1, 3, 2, 3, 4, 4)
    clips[0, :, 0, 0, 0, 0] = torch.tensor([2.0, -1.0, 0.5])
    per_clip = torch.stack([torch.tensor([v, -v]).softmax(0) for v in (2.0, -1.0, 0.5)])
    torch.testing.assert_close(module(clips).exp(), per_clip.mean(0, keepdim=True))


def test_dataset_returns_all_clips_of_a_multi_clip_sampler(tmp_path) -> None:
    import numpy as np

    from vidlstm.data.dataset import VideoClipDataset, collate_clips
    from vidlstm.data.index import VideoRecord

    from .video_factory import index_frame, read_index, write_video

    path = write_video(tmp_path / "v.mp4", np.stack([index_frame(i) for i in range(40)]))
    dataset = VideoClipDataset([VideoRecord(str(path), "a")], ["a"],
                               MultiClipSampler(4, num_clips=3, clip="dense", frame_interval=2), lambda c: c)
    sample = dataset[0]
    assert sample.clip.shape == (3, 4, 3, 64, 64)
    assert [[read_index(f) for f in clip] for clip in sample.clip] == [[0, 2, 4, 6], [16, 18, 20, 22],
                                                                        [33, 35, 37, 39]]
    assert collate_clips([sample, sample]).clips.shape == (2, 3, 4, 3, 64, 64)


def test_uniform_segment_centres_are_exact() -> None:
    """The centre of segment i is floor((i + 1/2) * total / n), exactly, for every length and clip size."""
    for n in range(1, 33):
        for total in range(1, 301):
            expected = [min((2 * i + 1) * total // (2 * n), total - 1) for i in range(n)]
            assert UniformSegmentSampler(n)(total) == expected, (n, total)
