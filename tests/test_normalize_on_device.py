"""``data.normalize_on_device``: the loader hands over uint8 clips and the float conversion + normalisation run
after the batch reaches the device; the model sees exactly what a normalising loader would have given it."""

from __future__ import annotations

import torch
from hydra.utils import instantiate

from vidlstm.data.datamodule import VideoDataModule


def _datamodule(make_config, normalize: bool) -> VideoDataModule:
    cfg = make_config(f"data.normalize_on_device={str(normalize).lower()}", "data.train_transform.mean=[0.3,0.4,0.5]",
                      "data.train_transform.std=[0.2,0.1,0.3]")
    datamodule = instantiate(cfg.data, seed=3)
    datamodule.prepare_data()
    datamodule.setup("fit")
    return datamodule


def test_uint8_loader_plus_device_step_equals_the_normalising_loader(make_config) -> None:
    on_device, in_loader = _datamodule(make_config, True), _datamodule(make_config, False)
    for split in ("train", "val", "test"):
        pairs = list(zip(on_device._loader(split), in_loader._loader(split), strict=True))
        assert len(pairs) >= 2, "several batches compared"
        for small, full in pairs:
            assert small.clips.dtype == torch.uint8 and full.clips.dtype == torch.float32
            converted = on_device.on_after_batch_transfer(small, 0)
            assert converted.clips.dtype == torch.float32
            torch.testing.assert_close(converted.clips, full.clips, atol=1e-5, rtol=0)
            assert torch.equal(converted.labels, full.labels)
            assert in_loader.on_after_batch_transfer(full, 0).clips is full.clips  # float clips pass untouched
