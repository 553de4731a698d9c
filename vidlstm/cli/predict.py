"""`vidlstm-predict` / `python scripts/predict.py`: batch inference over a file, folder or list of videos."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from vidlstm.inference.batch import predict_folder
from vidlstm.inference.predictor import Predictor

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="pkg://vidlstm.conf", config_name="predict")
def main(cfg: DictConfig) -> dict:
    predictor = Predictor.from_checkpoint(cfg.ckpt_path, cfg.device, cfg.num_clips, cfg.top_k, cfg.backend,
                                          cfg.decode_timeout_s)
    stats = predict_folder(predictor, cfg.input, cfg.output, cfg.batch_size, cfg.num_workers, cfg.window,
                           cfg.stride, cfg.resume)
    log.info("%d ok, %d errors, %d already done; %.2f videos/s -> %s", stats["ok"], stats["error"],
             stats["skipped"], stats["videos_per_s"], stats["output"])
    return stats


if __name__ == "__main__":
    main()
