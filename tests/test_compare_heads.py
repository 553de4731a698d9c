"""scripts/compare_heads.py: each cell is the training config `scripts/train.py` composes for that experiment,
head and seed; the table shows mean ± spread over seeds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vidlstm.cli.compare_heads import DATASETS, HEADS, RunResult, compose_run, main, markdown_table, mean_spread


def test_every_cell_composes_into_its_experiment_head_and_seed(tmp_path: Path) -> None:
    for dataset, experiment in DATASETS.items():
        for head in HEADS:
            cfg = compose_run(dataset, head, 3, tmp_path / "run", ["trainer.max_epochs=2"])
            assert cfg.task_name == experiment and cfg.seed == 3 and cfg.trainer.max_epochs == 2
            assert cfg.paths.output_dir == str(tmp_path / "run")
            assert cfg.data.feature_cache and cfg.model.encoder.freeze == "all" and cfg.model.head.feature_norm
            assert cfg.model.head.cell == (None if head == "meanpool" else "gru" if "gru" in head else "lstm")
    recipe = compose_run("appearance", "residual_gru", 0, tmp_path / "run")
    assert recipe.model.head.mean_path and recipe.model.head.hidden_size == 128
    old = compose_run("demo", "bilstm_512", 0, tmp_path / "run")
    assert old.model.head.bidirectional and old.model.head.hidden_size == 512
    with pytest.raises(ValueError, match=r"^unknown head 'transformer'; choose from"):
        compose_run("demo", "transformer", 0, tmp_path)


def test_a_cell_with_other_data_is_refused(tmp_path: Path) -> None:
    from vidlstm.training.train import check_recipe

    check_recipe(compose_run("appearance", "gru", 0, tmp_path / "run"))
    cfg = compose_run("appearance", "gru", 0, tmp_path / "run", ["data=demo"])
    with pytest.raises(ValueError, match=r"^experiment=demo_appearance_features is tuned for data=demo_appearance, "
                                         r"not data=demo"):
        check_recipe(cfg)


def test_table_shows_mean_and_spread_over_seeds() -> None:
    assert mean_spread([0.5]) == "0.500"
    assert mean_spread([0.5, 0.6, 0.7]) == "0.600 ± 0.100"
    results = [RunResult("demo", "lstm", s, acc, 0.0, 10, 1.0, "") for s, acc in enumerate([0.8, 0.9])]
    results.append(RunResult("appearance", "lstm", 0, 0.6, 0.0, 10, 1.0, ""))
    table = markdown_table(results, ["lstm", "gru"], ["demo", "appearance"])
    assert table.splitlines() == ["| head | demo (order only) test/acc | appearance only test/acc |",
                                  "| --- | --- | --- |",
                                  "| lstm | 0.850 ± 0.071 | 0.600 |",
                                  "| gru | - | - |"]


def test_main_runs_cells_and_writes_the_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small = ["data.prepare.train_per_class=4", "data.prepare.val_per_class=2", "data.prepare.test_per_class=2",
             "data.prepare.size=32", "data.prepare.min_frames=6", "data.prepare.max_frames=8",
             "data.prepare.workers=0", "data.image_size=32", "data.num_frames=4", "data.num_workers=0",
             "data.persistent_workers=false", "trainer.max_epochs=2", f"paths.data_dir={tmp_path / 'data'}"]
    table = main(["--heads", "meanpool", "residual_gru", "--datasets", "appearance", "--seeds", "0",
                  "--output", str(tmp_path / "out"), *small])
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["head"], r["dataset"], r["seed"]) for r in rows] == [("meanpool", "appearance", 0),
                                                                      ("residual_gru", "appearance", 0)]
    assert all(0.0 <= r["test_acc"] <= 1.0 and r["epochs"] == 2 for r in rows)
    assert (tmp_path / "out" / "appearance" / "residual_gru" / "seed0" / "summary.json").is_file()
    assert table in (tmp_path / "out" / "table.md").read_text() and table in capsys.readouterr().out
    assert "1 seed(s) [0] per cell" in (tmp_path / "out" / "table.md").read_text()
    with pytest.raises(SystemExit, match=r"overrides must be key=value, got \['oops'\]"):
        main(["--output", str(tmp_path / "bad"), "oops"])
