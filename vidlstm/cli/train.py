"""`vidlstm-train` / `python scripts/train.py`: Hydra entry point for training."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from vidlstm.training.train import train


@hydra.main(version_base="1.3", config_path="pkg://vidlstm.conf", config_name="train")
def main(cfg: DictConfig) -> float | None:
    summary, _ = train(cfg)
    metric = cfg.get("optimized_metric")
    return summary.get(metric) if metric else None


if __name__ == "__main__":
    main()
