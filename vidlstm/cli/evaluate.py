"""`vidlstm-evaluate` / `python scripts/evaluate.py`: accuracies of a checkpoint on a labelled split."""

from __future__ import annotations

import logging

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig

from vidlstm.common.report import config_yaml
from vidlstm.inference.evaluate import evaluate, format_report
from vidlstm.inference.predictor import Predictor

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="pkg://vidlstm.conf", config_name="evaluate")
def main(cfg: DictConfig) -> dict:
    predictor = Predictor.from_checkpoint(cfg.ckpt_path, cfg.device, cfg.num_clips, top_k=5,
                                          backend=cfg.data.backend, timeout_s=cfg.data.decode_timeout_s)
    datamodule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup("test")
    output_dir = hydra.core.hydra_config.HydraConfig.get().runtime.output_dir
    results = evaluate(predictor, datamodule.splits[cfg.split], output_dir, cfg.batch_size, cfg.num_workers,
                       config_yaml(cfg))
    print(format_report(results))
    log.info("Written to %s (report.html, evaluation.json, per_class.csv, confusion_matrix.png)", output_dir)
    return results


if __name__ == "__main__":
    main()
