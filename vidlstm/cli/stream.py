"""`vidlstm-stream` / `python scripts/stream.py`: live window predictions and action segments from a file, a
camera or a network stream, as JSONL lines written as they happen."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from vidlstm.inference.predictor import Predictor
from vidlstm.inference.stream import Reconnect, SourceError, stream

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="pkg://vidlstm.conf", config_name="stream")
def main(cfg: DictConfig) -> dict:
    predictor = Predictor.from_checkpoint(cfg.ckpt_path, cfg.device, num_clips=1, top_k=cfg.top_k)
    try:
        result = stream(predictor, str(cfg.source), cfg.output, cfg.window, cfg.stride, cfg.state, cfg.carry_step,
                        cfg.realtime, cfg.max_lag_s, cfg.batch_frames, cfg.stall_timeout_s, cfg.open_timeout_s,
                        cfg.read_timeout_s, cfg.max_decode_errors, cfg.fps,
                        Reconnect(**OmegaConf.to_container(cfg.reconnect)), OmegaConf.to_container(cfg.segments),
                        cfg.max_seconds, cfg.log_every_s, cfg.threads)
    except (SourceError, ValueError) as err:
        log.error("%s", err)
        sys.exit(2)
    summary = result.summary()
    log.info("%s: %s. %d frames (%s frames/s, real-time factor %s), %d encoded, %d dropped, %d windows, "
             "%d segments, lag p50 %s s / p95 %s s", summary["source"], summary["end_reason"], summary["frames"],
             summary["frames_per_s"], summary["realtime_factor"], summary["encoded"], summary["dropped"],
             summary["windows"], summary["segments"], summary["lag_p50_s"], summary["lag_p95_s"])
    if result.failed:
        log.error("%s: %s (the windows and segments so far are written)", summary["source"], summary["end_reason"])
        sys.exit(1)
    return summary


if __name__ == "__main__":
    main()
