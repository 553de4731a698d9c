"""`vidlstm-explain` / `python scripts/explain.py`: where (Grad-CAM) and when (temporal importance) a
checkpoint looks, for one video or every video of a folder (see `vidlstm.inference.explain`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from vidlstm.data.video import VideoDecodeError
from vidlstm.inference.batch import gather_inputs
from vidlstm.inference.explain import Explainer, output_paths
from vidlstm.inference.explain_render import OUTPUT_SUFFIXES, render
from vidlstm.utils.progress import progress

log = logging.getLogger(__name__)


def explain_one(explainer: Explainer, video: str, output: Path, cfg: DictConfig) -> str:
    """Explain ``video`` into ``output`` (+ .png, .npz beside it); returns the one-line summary."""
    explanation = explainer.explain_video(video, cfg.target)
    overlay, strip, arrays = output_paths(output)
    overlay.parent.mkdir(parents=True, exist_ok=True)
    explanation.save_npz(arrays)
    render(explanation, overlay, strip, cfg.fps, cfg.min_side, cfg.alpha, cfg.tile)
    names = explanation.class_names
    return (f"{video}: predicted {names[explanation.predicted]} ({explanation.clip_probs[explanation.predicted]:.2f}),"
            f" explained {names[explanation.target]} -> {overlay}, {strip.name}, {arrays.name}")


def folder_outputs(source: Path, videos: list[str], output: Path, suffix: str) -> list[Path]:
    """One overlay path per video under the ``output`` folder, keeping the videos' sub-folders under ``source``
    (list files: the file name only; a clash gets the video's position appended)."""
    paths, seen = [], set()
    for i, video in enumerate(videos):
        rel = Path(os.path.relpath(video, source)) if source.is_dir() else Path(Path(video).name)
        if rel.parts and rel.parts[0] == "..":
            rel = Path(Path(video).name)
        path = output / rel.with_suffix(suffix)
        if path in seen:
            path = path.with_name(f"{path.stem}_{i}{suffix}")
        seen.add(path)
        paths.append(path)
    return paths


def run(cfg: DictConfig) -> dict[str, Any]:
    """Explain ``cfg.input`` (file, folder or list file) into ``cfg.output``; returns {ok, error, outputs}.
    Bad videos are logged one line each (path: reason) and skipped; a single bad input raises SystemExit."""
    if cfg.format not in ("mp4", "gif"):
        raise ValueError(f"format must be mp4 or gif, got {cfg.format!r}")
    explainer = Explainer.from_checkpoint(cfg.ckpt_path, cfg.device, cfg.backend, cfg.decode_timeout_s,
                                          cfg.importance)
    explainer.target_index(cfg.target)  # an unknown class name fails before any decoding
    source, output = Path(str(cfg.input)), Path(str(cfg.output))
    single = (source.is_file() and source.suffix.lower() not in (".txt", ".csv", ".lst")) or not source.exists()
    videos = gather_inputs(source)
    if single:
        if output.suffix.lower() not in OUTPUT_SUFFIXES:
            raise ValueError(f"output={output}: for one input video give a .mp4 or .gif file")
        targets = [output]
    else:
        if output.suffix.lower() in OUTPUT_SUFFIXES:
            raise ValueError(f"output={output}: input {source} holds several videos; give a folder as output")
        targets = folder_outputs(source, videos, output, f".{cfg.format}")
    stats: dict[str, Any] = {"ok": 0, "error": 0, "outputs": []}
    with progress() as bar:
        task = bar.add_task(f"Explaining {len(videos)} video(s)", total=len(videos), visible=not single)
        for video, target in zip(videos, targets, strict=True):
            try:
                log.info(explain_one(explainer, video, target, cfg))
                stats["ok"] += 1
                stats["outputs"].append(str(target))
            except VideoDecodeError as err:
                stats["error"] += 1
                log.error("%s: %s", video, err.reason)
            except (OSError, RuntimeError, ValueError) as err:
                stats["error"] += 1
                log.error("%s: %s", video, " ".join(str(err).split())[:300])
            bar.advance(task)
    if single and stats["error"]:
        raise SystemExit(f"explain failed for {videos[0]} (reason logged above)")
    if not single:
        log.info("%d explained, %d errors -> %s", stats["ok"], stats["error"], output)
    return stats


@hydra.main(version_base="1.3", config_path="pkg://vidlstm.conf", config_name="explain")
def main(cfg: DictConfig) -> dict[str, Any]:
    return run(cfg)


if __name__ == "__main__":
    main()
