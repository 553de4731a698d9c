"""The residual recurrent head (model/head=residual_gru): the frame average beside the recurrent summary,
per-dimension feature standardisation and feature dropout; shapes and padding, the registry round trip, and
an end-to-end check on the appearance set and the order-only demo from cached features."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from vidlstm.common.checkpoint import CheckpointError, build_net, load_checkpoint
from vidlstm.models import TemporalHead
from vidlstm.models.cnn_lstm import FeatureStandardizer
from vidlstm.models.registry import ModelConfigError, build_network, validate_model_config

from .conftest import compose_config

LENGTHS = torch.tensor([6, 3, 1])


def _padded(batch: int = 3, steps: int = 6, size: int = 8, seed: int = 0) -> torch.Tensor:
    """(B, T, D) features whose padded steps (past LENGTHS) hold huge values: any leak shows."""
    x = torch.randn(batch, steps, size, generator=torch.Generator().manual_seed(seed))
    pad = torch.arange(steps)[None, :] >= LENGTHS[:, None]
    return x.masked_fill(pad.unsqueeze(-1), 1e4)


def _head(**options: Any) -> TemporalHead:
    torch.manual_seed(0)
    settings = {"hidden_size": 5, "mean_path": True, "feature_norm": True, "feature_dropout": 0.3, **options}
    return TemporalHead(8, 4, **settings).eval()


@pytest.mark.parametrize("bidirectional", [False, True])
def test_shapes_and_padding_is_ignored(bidirectional: bool) -> None:
    head, x = _head(bidirectional=bidirectional), _padded()
    with torch.no_grad():
        head.feature_norm.norm.running_mean.uniform_(-1, 1)  # non-trivial running statistics
        logits, steps = head(x, LENGTHS), head(x, LENGTHS, per_step=True)
        assert logits.shape == (3, 4) and steps.shape == (3, 6, 4)
        assert torch.all(steps[1, 3:] == 0) and torch.all(steps[2, 1:] == 0)
        for b, n in enumerate(LENGTHS.tolist()):  # each clip scores as if alone and unpadded
            torch.testing.assert_close(logits[b], head(x[b:b + 1, :n])[0], atol=1e-5, rtol=0)
            torch.testing.assert_close(steps[b, :n], head(x[b:b + 1, :n], per_step=True)[0], atol=1e-5, rtol=0)


def test_logits_are_the_recurrent_summary_plus_the_frame_average() -> None:
    """logits = W_r . summary + W_m . mean over valid steps of the features + b, and per step the running mean;
    the last valid step of a unidirectional head gives the clip's logits."""
    head, x = _head(feature_norm=False), _padded()
    w_r, w_m = head.classifier.weight[:, :5], head.classifier.weight[:, 5:]
    with torch.no_grad():
        summary = head.pooling(head.sequence(x, LENGTHS), LENGTHS)
        means = torch.stack([x[b, :n].mean(0) for b, n in enumerate(LENGTHS.tolist())])
        expected = summary @ w_r.T + means @ w_m.T + head.classifier.bias
        torch.testing.assert_close(head(x, LENGTHS), expected, atol=1e-5, rtol=0)
        steps = head(x, LENGTHS, per_step=True)
        running = x[0].cumsum(0) / torch.arange(1, 7)[:, None]
        recurrent = head.sequence(x, LENGTHS)[0] @ w_r.T
        torch.testing.assert_close(steps[0] - recurrent, running @ w_m.T + head.classifier.bias, atol=1e-5, rtol=0)
        last = steps[torch.arange(3), LENGTHS - 1]
        torch.testing.assert_close(last, head(x, LENGTHS), atol=1e-5, rtol=0)


def test_the_residual_head_still_sees_order_but_its_average_path_does_not() -> None:
    head, x = _head(feature_norm=False, feature_dropout=0.0), torch.randn(2, 6, 8)
    with torch.no_grad():
        assert not torch.allclose(head(x), head(x.flip(1)), atol=1e-4)
        head.classifier.weight[:, :5] = 0  # only the frame average left: blind to order
        torch.testing.assert_close(head(x), head(x.flip(1)), atol=1e-5, rtol=0)


def test_feature_standardizer_uses_valid_steps_in_training_and_running_statistics_after() -> None:
    norm, x = FeatureStandardizer(8), _padded() * 3 + 5
    valid = torch.arange(6)[None, :] < LENGTHS[:, None]
    out = norm.train()(x, LENGTHS)
    torch.testing.assert_close(out[valid].mean(0), torch.zeros(8), atol=1e-5, rtol=0)
    torch.testing.assert_close(out[valid].std(0, unbiased=False), torch.ones(8), atol=1e-3, rtol=0)
    assert torch.equal(out[~valid], x[~valid]), "padded steps pass through unchanged"
    stats = x[valid]
    torch.testing.assert_close(norm.norm.running_mean, 0.1 * stats.mean(0), atol=1e-5, rtol=0)
    norm.eval()
    expected = (x - norm.norm.running_mean) / torch.sqrt(norm.norm.running_var + 1e-5)
    torch.testing.assert_close(norm(x, LENGTHS), expected, atol=1e-4, rtol=1e-5)  # padded steps hold 3e4


def test_feature_dropout_only_while_training() -> None:
    head, x = _head(feature_dropout=0.5), torch.randn(2, 6, 8)
    with torch.no_grad():
        torch.testing.assert_close(head(x), head(x))
        head.train()
        assert not torch.allclose(head(x), head(x))


def test_options_off_keep_the_plain_head_and_its_state_dict() -> None:
    plain = TemporalHead(8, 4, hidden_size=5)
    assert plain.feature_norm is None and not plain.mean_path
    assert set(plain.state_dict()) == {"recurrent.weight_ih_l0", "recurrent.weight_hh_l0", "recurrent.bias_ih_l0",
                                       "recurrent.bias_hh_l0", "classifier.weight", "classifier.bias"}
    assert _head().classifier.weight.shape == (4, 5 + 8)


@pytest.mark.parametrize(("options", "message"), [
    ({"cell": None, "pooling": "mean"}, r"^mean_path adds the frame average beside a recurrent summary: it needs a "
                                        r"cell"),
    ({"feature_dropout": 1.0}, r"^feature_dropout must be in \[0, 1\), got 1.0$"),
])
def test_bad_options_are_one_line_errors(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        _head(**options)
    assert "\n" not in str(caught.value)


def _residual_config() -> dict[str, Any]:
    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vidlstm.conf", version_base="1.3"):
        cfg = compose("model/cnn_lstm", overrides=["model/encoder=tiny", "model/head=residual_gru"])
    return OmegaConf.to_container(cfg.model, resolve=True)


def _residual_checkpoint(path: Path) -> tuple[dict[str, Any], torch.nn.Module]:
    """(the checkpoint written to ``path``, its network): the shipped residual_gru config over the tiny CNN,
    with non-trivial feature statistics, saved the way training saves it."""
    model = _residual_config()
    net = build_network(model, 3).eval()
    with torch.no_grad():
        net.head.feature_norm.norm.running_var.uniform_(0.5, 2.0)
    data = {"image_size": 32, "num_frames": 4, "batch_size": 2,
            "eval_transform": {"_target_": "vidlstm.data.transforms.eval_transform", "_partial_": True,
                               "resize": None, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}}
    checkpoint = {"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()},
                  "vidlstm": {"class_names": ["a", "b", "c"], "config": {"data": data, "model": model}}}
    torch.save(checkpoint, path)
    return checkpoint, net


def test_registry_round_trip_through_a_checkpoint(tmp_path: Path) -> None:
    """The shipped residual_gru config builds through the registry, its checkpoint rebuilds the same network,
    and a wrongly typed option in a checkpoint is refused naming the key."""
    head = validate_model_config(_residual_config())["head"]
    assert head["mean_path"] is True and head["feature_norm"] is True and head["cell"] == "gru"
    path = tmp_path / "best.ckpt"
    checkpoint, net = _residual_checkpoint(path)
    rebuilt = build_net(load_checkpoint(path), where=str(path)).eval()
    clips = torch.randn(2, 4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(clips), net(clips), atol=1e-6, rtol=0)

    bad = copy.deepcopy(checkpoint)
    bad["vidlstm"]["config"]["model"]["head"]["mean_path"] = "yes"
    torch.save(bad, path)
    with pytest.raises((CheckpointError, ModelConfigError), match=r"model\.head\.mean_path: expected bool, got str"):
        build_net(load_checkpoint(path), where=str(path))


@pytest.mark.parametrize("format", ["torchscript", "onnx"])
def test_residual_head_exports_with_dynamic_batch_and_time(format: str, tmp_path: Path) -> None:
    if format == "onnx":
        pytest.importorskip("onnxruntime")
    from vidlstm.inference.export import export_checkpoint

    path = tmp_path / "best.ckpt"
    _residual_checkpoint(path)
    result = export_checkpoint(path, format, "full", tmp_path / f"model.{format}")
    assert result["max_abs_diff"] <= 1e-4 and result["dynamic_axes"] == ["batch", "time"]


# End to end: the recipe learns appearance-only and order-only classes from cached features of a frozen random
# CNN. 8 classes each, 8 test videos per class: chance is 0.125 (measured on this machine: 0.53 and 0.58).
SMALL = ["data.prepare.val_per_class=4", "data.prepare.test_per_class=8", "data.prepare.min_frames=8",
         "data.prepare.max_frames=12", "data.prepare.workers=0", "data.num_frames=8", "data.batch_size=16",
         "data.num_workers=0", "data.persistent_workers=false", "data.probe_workers=0", "callbacks.progress_bar=null",
         "callbacks.model_summary=null", "trainer.max_epochs=40"]


@pytest.mark.slow
@pytest.mark.parametrize(("experiment", "train_per_class", "size"), [
    ("demo_appearance_features", 16, 32),
    ("demo_features", 24, 64),  # direction of motion needs more pixels than colour and outline
])
def test_recipe_learns_appearance_and_order_from_cached_features(experiment: str, train_per_class: int, size: int,
                                                                 tmp_path: Path) -> None:
    from vidlstm.training.train import train

    cfg = compose_config([f"experiment={experiment}", "model/head=residual_gru", *SMALL,
                          f"data.prepare.train_per_class={train_per_class}", f"data.prepare.size={size}",
                          f"data.image_size={size}", f"paths.data_dir={tmp_path / 'data'}",
                          f"paths.log_dir={tmp_path / 'outputs'}"], tmp_path / "run")
    summary, objects = train(cfg)
    assert objects["module"].inputs == "features" and objects["module"].net.head.mean_path
    assert summary["test/videos"] == 64
    assert summary["test/acc"] >= 0.3, summary["test/acc"]  # chance: 0.125
