"""`vidlstm-predict` / `python scripts/predict.py`: batch inference over a file, folder or list of videos."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from vidlstm.inference.batch import predict_folder, segments_path
from vidlstm.inference.distributed import predict_distributed
from vidlstm.inference.predictor import Predictor

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="pkg://vidlstm.conf", config_name="predict")
def main(cfg: DictConfig) -> dict:
    distributed = cfg.devices != 1 or cfg.num_nodes > 1
    predictor = Predictor.from_checkpoint(cfg.ckpt_path, "cpu" if distributed else cfg.device, cfg.num_clips,
                                          cfg.top_k, cfg.backend, cfg.decode_timeout_s)
    if distributed:
        if cfg.window is not None:
            raise ValueError("window mode runs on one device: drop `window` or set devices=1")
        stats = predict_distributed(predictor, cfg.input, cfg.output, cfg.batch_size, cfg.num_workers,
                                    cfg.accelerator, cfg.devices, cfg.num_nodes, cfg.strategy, cfg.resume)
        log.info("%d videos (%d already done) on %d processes -> %s", stats["videos"], stats["skipped"],
                 stats["world_size"], stats["output"])
        return stats
    segments = segments_path(cfg.output, cfg.segments_output) if cfg.window is not None else None
    stats = predict_folder(predictor, cfg.input, cfg.output, cfg.batch_size, cfg.num_workers, cfg.window,
                           cfg.stride, cfg.resume, segments, OmegaConf.to_container(cfg.segments))
    if segments is not None:
        log.info("Action segments -> %s", segments)
    log.info("%d ok, %d errors, %d already done; %.2f videos/s -> %s", stats["ok"], stats["error"],
             stats["skipped"], stats["videos_per_s"], stats["output"])
    return stats


if __name__ == "__main__":
    main()
