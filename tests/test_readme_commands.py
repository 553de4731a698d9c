"""Every `python scripts/train.py` command in the README composes into the run the README describes: the data
it names, a task name of its own, and never the demo's recipe on other data."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from vidlstm.training.train import check_recipe

from .conftest import compose_config

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_train_commands() -> list[list[str]]:
    """The arguments of each train command in the README's shell blocks (continuation lines joined)."""
    text = "\n".join(re.findall(r"```bash\n(.*?)```", README.read_text(), flags=re.S)).replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        match = re.search(r"scripts/train\.py(.*)", line)
        if match:
            args = shlex.split(match.group(1), comments=True)
            commands.append([a for a in args if a != "--cfg" and a != "job"])
    return commands


COMMANDS = readme_train_commands()


def test_the_readme_has_the_commands_this_test_checks() -> None:
    assert [] in COMMANDS, "the plain demo command"
    assert any("experiment=folder" in c for c in COMMANDS) and any("~experiment" in c for c in COMMANDS)
    assert len(COMMANDS) >= 8


@pytest.mark.parametrize("args", COMMANDS, ids=[" ".join(c) or "(no arguments)" for c in COMMANDS])
def test_readme_command_composes_into_the_described_run(args: list[str], tmp_path: Path) -> None:
    args = [re.sub(r"=/(path|data)\S*", f"={tmp_path}", a).replace("=...", f"={tmp_path}") for a in args]
    cfg = compose_config(args, tmp_path / "run")
    check_recipe(cfg)  # raises for a recipe combined with data it was not made for
    choices = HydraConfig.get().runtime.choices
    named = dict(a.split("=", 1) for a in args if "=" in a and not a.startswith(("~", "+")))
    experiment = named.get("experiment", None if "~experiment" in args else "demo")
    assert choices.get("experiment") == experiment
    if "data" in named:
        assert choices["data"] == named["data"]
    if "debug" in named:
        assert cfg.task_name == "debug"
    elif experiment is None:
        assert cfg.task_name == "train" and cfg.optimizer.lr == pytest.approx(1e-3)
    else:
        assert cfg.task_name == experiment
    if not choices["data"].startswith("demo"):  # the synthetic sets (demo, demo_appearance) have demo recipes
        assert not str(cfg.task_name).startswith("demo") and cfg.optimizer.lr != pytest.approx(0.003)
    for key, value in named.items():  # every key=value the command sets arrives in the config
        if "." in key and not key.startswith("hydra."):
            assert str(OmegaConf.select(cfg, key)) == value, key


def test_the_demo_recipe_on_other_data_is_refused(tmp_path: Path) -> None:
    cfg = compose_config(["data=folder", f"data.root={tmp_path}"], tmp_path / "run")
    with pytest.raises(ValueError, match=r"experiment=demo is tuned for data=demo, not data=folder.*experiment=folder"):
        check_recipe(cfg)
