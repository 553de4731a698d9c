"""Map-style dataset of clips: record -> reader -> sampled frames -> transformed clip."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.utils.data import Dataset

from vidlstm.data.index import VideoRecord
from vidlstm.data.video import open_video


class VideoClipDataset(Dataset):
    """Returns ``(clip, label)``: clip float (T, 3, H, W) after ``transform``, label int (-1 if unlabelled).

    Readers are opened inside ``__getitem__`` (so inside DataLoader workers) and closed straight after: no
    decoder state is ever shared across forked processes.
    """

    def __init__(
        self,
        records: Sequence[VideoRecord],
        class_names: Sequence[str],
        sampler: Callable[[int], list[int]],
        transform: Callable[[torch.Tensor], torch.Tensor],
        backend: str = "auto",
    ) -> None:
        self.records = list(records)
        self.class_to_idx = {name: i for i, name in enumerate(class_names)}
        self.sampler = sampler
        self.transform = transform
        self.backend = backend

    def __len__(self) -> int:
        return len(self.records)

    def label_of(self, record: VideoRecord) -> int:
        return -1 if record.label is None else self.class_to_idx[record.label]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        record = self.records[index]
        with open_video(record.path, self.backend) as reader:
            frames = reader.get_frames(self.sampler(reader.num_frames))
        return self.transform(frames), self.label_of(record)
