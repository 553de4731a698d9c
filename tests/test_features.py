"""Feature-cache training: same accuracy as end-to-end training with the same frozen encoder, features
reused across runs and recomputed when the encoder or sampling changes."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from vidlstm.training.train import train

FROZEN_EVAL = ["model.encoder.freeze=all", "data.train_sampler.jitter=false",
               "~data.train_transform", "+data.train_transform={_target_:vidlstm.data.transforms.eval_transform,"
               "_partial_:true,mean:[0.485,0.456,0.406],std:[0.229,0.224,0.225]}", "trainer.max_epochs=3",
               "callbacks.early_stopping=null"]


def _val_acc_per_epoch(output_dir: str) -> list[float]:
    rows = csv.DictReader((Path(output_dir) / "metrics.csv").open())
    return [float(r["val/acc"]) for r in rows if r.get("val/acc")]


@pytest.mark.slow
def test_feature_cache_training_matches_end_to_end(make_config, tmp_path: Path) -> None:
    end_to_end, _ = train(make_config(*FROZEN_EVAL))
    cached, objects = train(make_config(*FROZEN_EVAL, "data.feature_cache=true", "data.feature_dtype=float32",
                                        f"data.feature_cache_dir={tmp_path / 'features'}"))
    assert objects["module"].inputs == "features"
    assert _val_acc_per_epoch(cached["output_dir"]) == _val_acc_per_epoch(end_to_end["output_dir"])
    assert cached["test/acc"] == end_to_end["test/acc"]
    assert cached["feature_extraction_s"] > 0
    files = list((tmp_path / "features").rglob("*.npy"))
    assert len(files) == sum(len(objects["datamodule"].datasets[s]) for s in ("train", "val", "test"))


@pytest.mark.slow
def test_features_are_reused_and_invalidated(make_config, tmp_path: Path) -> None:
    store = f"data.feature_cache_dir={tmp_path / 'features'}"
    first, _ = train(make_config(*FROZEN_EVAL, "data.feature_cache=true", store, "trainer.max_epochs=1",
                                 "test=false"))
    count = len(list((tmp_path / "features").rglob("*.npy")))
    again, _ = train(make_config(*FROZEN_EVAL, "data.feature_cache=true", store, "trainer.max_epochs=1",
                                 "test=false"))
    assert len(list((tmp_path / "features").rglob("*.npy"))) == count, "same settings: nothing recomputed"
    assert again["feature_extraction_s"] < first["feature_extraction_s"]
    train(make_config(*FROZEN_EVAL, "data.feature_cache=true", store, "trainer.max_epochs=1", "test=false",
                      "seed=1"))  # other random weights: a different encoder fingerprint
    assert len(list((tmp_path / "features").rglob("*.npy"))) == 2 * count
    train(make_config(*FROZEN_EVAL, "data.feature_cache=true", store, "trainer.max_epochs=1", "test=false",
                      "data.num_frames=6"))  # other sampling
    assert len(list((tmp_path / "features").rglob("*.npy"))) == 3 * count


def test_feature_cache_refuses_a_trainable_encoder(make_config, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"needs a frozen encoder: set model\.encoder\.freeze=all"):
        train(make_config("data.feature_cache=true", f"data.feature_cache_dir={tmp_path}"))
