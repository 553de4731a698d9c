"""Preprocessing follows the weights: normalisation, interpolation, the evaluation resize (and, when asked, the
frame size) come from the chosen weights' metadata unless the config sets them, are filled in once when a run
starts, logged, stored in the checkpoint and used by the predictor. Weights from local files (the offline
path) load exactly. Nothing is downloaded: metadata is read from torchvision's weights enums and timm's
pretrained configs, and weights come from files written here from random-init models."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision
from torchvision.transforms import InterpolationMode, v2

from vidlstm.common.checkpoint import CheckpointError, load_checkpoint
from vidlstm.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from vidlstm.inference import Predictor
from vidlstm.models.backbones import weights_preprocessing
from vidlstm.models.registry import build_network
from vidlstm.training.preprocessing import resolve_preprocessing
from vidlstm.training.train import train

from .conftest import compose_config

TIMM_HALF = "timm:mobilenetv4_conv_small_050.e3000_r224_in1k"  # mean/std 0.5, bicubic, crop_pct 0.875; 2 M params


@pytest.fixture
def no_downloads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Caches pointed at an empty folder: anything downloaded would land there."""
    cache = tmp_path / "caches"
    for var in ("TORCH_HOME", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.setenv(var, str(cache / var))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def _assert_nothing_downloaded(cache: Path) -> None:
    files = [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []
    assert files == []


# --- what the weights say ---

def test_torchvision_weights_metadata(no_downloads: Path) -> None:
    resnet = weights_preprocessing("resnet18", "IMAGENET1K_V1")
    assert (resnet.mean, resnet.std, resnet.interpolation) == (IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    assert resnet.crop_size == 224 and resnet.resize_ratio == pytest.approx(256 / 224)
    assert resnet.source == "torchvision ResNet18_Weights.IMAGENET1K_V1"
    efficientnet = weights_preprocessing("efficientnet_b0", "DEFAULT")
    assert efficientnet.interpolation == "bicubic" and efficientnet.source.endswith("EfficientNet_B0_Weights."
                                                                                    "IMAGENET1K_V1")
    _assert_nothing_downloaded(no_downloads)


def test_local_torchvision_file_takes_the_weights_meta_it_names(no_downloads: Path, tmp_path: Path) -> None:
    """RegNet's DEFAULT (V2) weights resize to 232 before a 224 crop, its V1 weights to 256."""
    path = str(tmp_path / "regnet.pth")
    default = weights_preprocessing("regnet_y_400mf", path)
    assert default.resize_ratio == pytest.approx(232 / 224)
    assert "RegNet_Y_400MF_Weights.IMAGENET1K_V2 (the DEFAULT weights, assumed for the local file" in default.source
    named = weights_preprocessing("regnet_y_400mf", path, "IMAGENET1K_V1")
    assert named.resize_ratio == pytest.approx(256 / 224) and "IMAGENET1K_V1 (named by" in named.source
    with pytest.raises(ValueError, match=r"^weights 'V3': not weights of torchvision 'regnet_y_400mf'"):
        weights_preprocessing("regnet_y_400mf", path, "V3")
    _assert_nothing_downloaded(no_downloads)


def test_timm_pretrained_cfg(no_downloads: Path) -> None:
    pytest.importorskip("timm")
    inception = weights_preprocessing("timm:inception_v3.tf_in1k", "DEFAULT")
    assert inception.mean == inception.std == (0.5, 0.5, 0.5)
    assert inception.interpolation == "bicubic" and inception.crop_size == 299
    assert inception.resize_ratio == pytest.approx(1 / 0.875)
    vit = weights_preprocessing("timm:vit_tiny_patch16_224", "DEFAULT")  # the default tag's statistics
    assert vit.mean == (0.5, 0.5, 0.5) and vit.source == "timm vit_tiny_patch16_224.augreg_in21k_ft_in1k pretrained_cfg"
    resnet = weights_preprocessing("timm:resnet18.a1_in1k", "/models/resnet18.pth")
    assert resnet.mean == IMAGENET_MEAN and resnet.resize_ratio == pytest.approx(1 / 0.95)
    _assert_nothing_downloaded(no_downloads)


@pytest.mark.parametrize(("backbone", "weights"), [("resnet18", None), ("timm:vit_tiny_patch16_224", None),
                                                   ("tiny", None), ("tiny", "/models/tiny.pth")])
def test_no_pretrained_statistics_means_imagenet_defaults(backbone: str, weights: str | None) -> None:
    found = weights_preprocessing(backbone, weights)
    assert (found.mean, found.std, found.interpolation, found.resize_ratio, found.crop_size) == \
        (IMAGENET_MEAN, IMAGENET_STD, "bilinear", 1.0, None)


# --- filled in when a run starts ---

def _resolved(tmp_path: Path, *overrides: str) -> Any:
    cfg = compose_config(["~experiment", *overrides], tmp_path / "run")
    return cfg, resolve_preprocessing(cfg)


def test_run_takes_torchvision_weights_preprocessing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="vidlstm.training.preprocessing"):
        cfg, _ = _resolved(tmp_path, "model/encoder=cnn", "model.encoder.backbone=efficientnet_b0",
                           "model.encoder.weights=DEFAULT", "data.image_size=112")
    data = cfg.data
    assert list(data.train_transform.mean) == list(data.eval_transform.mean) == list(IMAGENET_MEAN)
    assert data.train_transform.interpolation == data.eval_transform.interpolation == "bicubic"
    assert data.image_size == 112 and data.eval_transform.resize == 128  # 112 * 256 / 224
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("preprocessing:")]
    assert lines == ["preprocessing: mean=[0.485, 0.456, 0.406] std=[0.229, 0.224, 0.225] interpolation=bicubic "
                     "eval resize=128 crop=112, from torchvision EfficientNet_B0_Weights.IMAGENET1K_V1, weights "
                     "trained at 224 px"]


def test_run_takes_timm_statistics_and_input_size(tmp_path: Path) -> None:
    pytest.importorskip("timm")
    cfg, found = _resolved(tmp_path, "model/encoder=cnn", "model.encoder.backbone=timm:vit_tiny_patch16_224",
                           "model.encoder.weights=DEFAULT", "data.image_size=null")
    assert found.mean == (0.5, 0.5, 0.5)
    data = cfg.data
    assert list(data.eval_transform.mean) == list(data.train_transform.std) == [0.5, 0.5, 0.5]
    assert data.image_size == 224 and data.eval_transform.resize == 249 and data.eval_transform.interpolation == \
        "bicubic"


def test_explicit_settings_win(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    pytest.importorskip("timm")
    with caplog.at_level(logging.INFO, logger="vidlstm.training.preprocessing"):
        cfg, _ = _resolved(tmp_path, "model/encoder=cnn", "model.encoder.backbone=timm:vit_tiny_patch16_224",
                           "model.encoder.weights=DEFAULT", "data.train_transform.mean=[0.1,0.2,0.3]",
                           "data.eval_transform.resize=120", "data.train_transform.interpolation=bilinear")
    data = cfg.data
    assert list(data.train_transform.mean) == list(data.eval_transform.mean) == [0.1, 0.2, 0.3]
    assert list(data.eval_transform.std) == [0.5, 0.5, 0.5]  # not set: from the weights
    assert data.eval_transform.resize == 120 and data.eval_transform.interpolation == "bilinear"
    assert "set in the config: train_transform.mean, train_transform.interpolation, eval_transform.mean, " \
           "eval_transform.interpolation, eval_transform.resize" in caplog.text


def test_null_image_size_needs_weights_that_state_one(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"^data.image_size=null takes the frame size from the encoder's weights, "
                                         r"but ImageNet defaults \(no pretrained weights\) state none"):
        _resolved(tmp_path, "data.image_size=null")


def test_a_vidlstm_checkpoint_as_weights_brings_its_own_preprocessing(tmp_path: Path) -> None:
    model = {"encoder": {"backbone": "tiny", "spatial_grid": 2}, "head": {"cell": "lstm", "hidden_size": 8}}
    net = build_network(model, 2)
    data = {"image_size": 32, "num_frames": 4,
            "eval_transform": {"resize": 40, "mean": [0.3, 0.3, 0.3], "std": [0.2, 0.2, 0.2],
                               "interpolation": "bicubic"}}
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "vidlstm": {"class_names": ["a", "b"], "config": {"data": data, "model": model}}},
               tmp_path / "run.ckpt")
    cfg, found = _resolved(tmp_path, f"model.encoder.weights={tmp_path / 'run.ckpt'}", "data.image_size=64")
    assert found.mean == (0.3, 0.3, 0.3) and found.resize_ratio == 40 / 32
    assert list(cfg.data.eval_transform.std) == [0.2, 0.2, 0.2] and cfg.data.eval_transform.resize == 80


# --- stored in the checkpoint, used by the predictor; the offline path end to end ---

def _pipeline(transform: Any) -> dict[str, Any]:
    steps = {type(t): t for t in transform.pipeline.transforms}
    return {"resize": steps[v2.Resize].size, "interpolation": steps[v2.Resize].interpolation,
            "mean": steps[v2.Normalize].mean, "std": steps[v2.Normalize].std}


def _offline_run(make_config: Any, tiny_demo: Any, weights: Path, *overrides: str) -> tuple[dict, Path]:
    """One frozen-encoder epoch on the tiny demo with ``weights`` (a local file), then the weights file is
    removed: prediction must need only the checkpoint."""
    cfg = make_config(f"model.encoder.weights={weights}", "model.encoder.freeze=all", "model.encoder.spatial_grid=1",
                      "trainer.max_epochs=1", "test=false", *overrides)
    summary, _ = train(cfg)
    weights.unlink()
    return load_checkpoint(summary["best_ckpt"]), Path(summary["best_ckpt"])


@pytest.mark.slow
def test_offline_timm_weights_file_trains_and_its_preprocessing_reaches_the_predictor(
        make_config: Any, tiny_demo: Any, tmp_path: Path, no_downloads: Path) -> None:
    timm = pytest.importorskip("timm")
    torch.manual_seed(7)
    source = timm.create_model(TIMM_HALF.removeprefix("timm:"))  # as create_model(..., pretrained=True) would be
    torch.save(source.state_dict(), tmp_path / "mnv4.pth")
    checkpoint, path = _offline_run(make_config, tiny_demo, tmp_path / "mnv4.pth",
                                    f"model.encoder.backbone={TIMM_HALF}")
    torch.testing.assert_close(checkpoint["state_dict"]["net.encoder.trunk.model.conv_stem.weight"],
                               source.conv_stem.weight, atol=0, rtol=0)
    data = checkpoint["vidlstm"]["config"]["data"]
    assert data["eval_transform"]["mean"] == data["train_transform"]["std"] == [0.5, 0.5, 0.5]
    assert data["eval_transform"]["interpolation"] == data["train_transform"]["interpolation"] == "bicubic"
    assert data["eval_transform"]["resize"] == 37  # 32 / 0.875
    predictor = Predictor.from_checkpoint(path, device="cpu")
    assert _pipeline(predictor.transform) == {"resize": [37], "interpolation": InterpolationMode.BICUBIC,
                                              "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]}
    video = next(Path(tiny_demo.split_dir("test")).rglob("*.mp4"))
    assert predictor.predict_video(video)["status"] == "ok"
    _assert_nothing_downloaded(no_downloads)


@pytest.mark.slow
def test_offline_torchvision_weights_file_trains_and_its_preprocessing_reaches_the_predictor(
        make_config: Any, tiny_demo: Any, tmp_path: Path, no_downloads: Path) -> None:
    torch.manual_seed(8)
    source = torchvision.models.resnet18()  # as torchvision.models.resnet18(weights="DEFAULT") would be
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    checkpoint, path = _offline_run(make_config, tiny_demo, tmp_path / "resnet18.pth",
                                    "model.encoder.backbone=resnet18", "model.encoder.weights_meta=IMAGENET1K_V1")
    state = checkpoint["state_dict"]
    torch.testing.assert_close(state["net.encoder.trunk.body.conv1.weight"], source.conv1.weight, atol=0, rtol=0)
    torch.testing.assert_close(state["net.encoder.trunk.body.layer4.1.bn2.running_var"],
                               source.layer4[1].bn2.running_var, atol=0, rtol=0)
    data = checkpoint["vidlstm"]["config"]["data"]
    assert data["eval_transform"]["mean"] == list(IMAGENET_MEAN) and data["eval_transform"]["resize"] == 37
    predictor = Predictor.from_checkpoint(path, device="cpu")
    assert _pipeline(predictor.transform) == {"resize": [37], "interpolation": InterpolationMode.BILINEAR,
                                              "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    video = next(Path(tiny_demo.split_dir("test")).rglob("*.mp4"))
    assert predictor.predict_video(video)["status"] == "ok"
    _assert_nothing_downloaded(no_downloads)


# --- checkpoints: older ones keep today's defaults, stored values are checked ---

def _checkpoint_with(tmp_path: Path, transform: dict[str, Any]) -> Path:
    model = {"encoder": {"backbone": "tiny", "spatial_grid": 2}, "head": {"cell": "lstm", "hidden_size": 8}}
    net = build_network(model, 2)
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                "vidlstm": {"class_names": ["a", "b"], "config": {
                    "data": {"image_size": 32, "num_frames": 4, "eval_transform": transform}, "model": model}}},
               tmp_path / "best.ckpt")
    return tmp_path / "best.ckpt"


def test_checkpoint_without_the_new_keys_predicts_with_todays_defaults(tmp_path: Path) -> None:
    predictor = Predictor.from_checkpoint(_checkpoint_with(tmp_path, {"resize": None}), device="cpu")
    assert _pipeline(predictor.transform) == _pipeline(eval_transform(32))
    assert _pipeline(predictor.transform) == {"resize": [32], "interpolation": InterpolationMode.BILINEAR,
                                              "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


@pytest.mark.parametrize("value", ["vidlstm.data.video.torch.load", "lanczos", ["bicubic"], 3])
def test_stored_interpolation_must_be_a_known_name(value: Any, tmp_path: Path) -> None:
    path = _checkpoint_with(tmp_path, {"interpolation": value})
    with pytest.raises(CheckpointError, match=r"data\.eval_transform\.interpolation: expected one of \('bilinear', "
                                              r"'bicubic', 'nearest', 'nearest-exact'\) or None, got") as info:
        Predictor.from_checkpoint(path, device="cpu")
    assert "\n" not in str(info.value)
