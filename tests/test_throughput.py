"""ThroughputMeter tells loader-bound from compute-bound: every clip counted once, the waiting share follows where
the time really goes (a loader that sleeps vs a step that sleeps), the numbers reach the progress bar and
summary.json."""

from __future__ import annotations

import time

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from vidlstm.data.dataset import ClipSample, collate_clips
from vidlstm.training.callbacks import ThroughputMeter

CLIPS, BATCH, EPOCHS = 24, 4, 2


class _SlowData(Dataset):
    def __init__(self, delay_s: float) -> None:
        self.delay_s = delay_s

    def __len__(self) -> int:
        return CLIPS

    def __getitem__(self, index: int) -> ClipSample:
        time.sleep(self.delay_s)
        return ClipSample(torch.randn(3, 5), index % 2, [])


class _SlowStep(L.LightningModule):
    def __init__(self, delay_s: float) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(5, 2)
        self.delay_s = delay_s

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        time.sleep(self.delay_s)
        return torch.nn.functional.cross_entropy(self.layer(batch.clips.mean(1)), batch.labels)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def _fit(data_delay_s: float, step_delay_s: float) -> tuple[ThroughputMeter, L.Trainer]:
    meter = ThroughputMeter(window=3)
    trainer = L.Trainer(max_epochs=EPOCHS, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_model_summary=False, enable_progress_bar=False, callbacks=[meter])
    loader = DataLoader(_SlowData(data_delay_s), batch_size=BATCH, collate_fn=collate_clips)
    trainer.fit(_SlowStep(step_delay_s), train_dataloaders=loader)
    return meter, trainer


@pytest.mark.parametrize(("data_delay_s", "step_delay_s", "loader_bound"), [(0.02, 0.0, True), (0.0, 0.08, False)])
def test_the_waiting_share_follows_where_the_time_goes(data_delay_s: float, step_delay_s: float,
                                                       loader_bound: bool) -> None:
    meter, trainer = _fit(data_delay_s, step_delay_s)
    totals = meter.totals()
    assert meter.clips == CLIPS * EPOCHS
    share = totals["train/data_wait_share"]
    # a batch of 4 clips sleeps 80 ms in the loader or 80 ms in the step; the rest takes a few ms
    assert (share > 0.75) if loader_bound else (share < 0.25), share
    busy = meter.wait_s + meter.step_s
    assert totals["train/clips_per_s"] == pytest.approx(CLIPS * EPOCHS / busy, rel=1e-3)
    logged = trainer.callback_metrics
    assert {"train/clips_per_s", "train/data_wait", "train/epoch_clips_per_s", "train/epoch_data_wait"} <= set(logged)
    epoch_share = float(logged["train/epoch_data_wait"])
    assert epoch_share > 0.75 if loader_bound else epoch_share < 0.25
    assert "train/clips_per_s" in trainer.progress_bar_metrics and "train/data_wait" in trainer.progress_bar_metrics


def test_a_window_below_two_steps_is_refused() -> None:
    with pytest.raises(ValueError, match="window must be >= 2"):
        ThroughputMeter(window=1)


class _Device:
    def __init__(self, kind: str) -> None:
        self.strategy = type("Strategy", (), {"root_device": torch.device(kind)})()


@pytest.mark.parametrize(("kind", "workers", "expected"), [
    ("cuda", 2, {"pin_memory": True, "prefetch_factor": 4}),
    ("cpu", 2, {"pin_memory": False, "prefetch_factor": 2}),
    ("cuda", 0, {"pin_memory": True}),  # no workers: nothing to prefetch with
])
def test_auto_loader_settings_follow_the_device(kind: str, workers: int, expected: dict) -> None:
    from vidlstm.data.datamodule import loader_speed

    assert loader_speed("auto", "auto", workers, _Device(kind)) == expected
    assert loader_speed(False, 3, workers, _Device(kind)) == {"pin_memory": False,
                                                              **({"prefetch_factor": 3} if workers else {})}
    assert loader_speed("auto", "auto", workers, None)["pin_memory"] is False  # no trainer: not on a GPU
    with pytest.raises(ValueError, match=r"data\.pin_memory: expected true/false or 'auto', got 'yes'"):
        loader_speed("yes", "auto", workers, None)
