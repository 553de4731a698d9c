"""`vidlstm-export` / `python scripts/export.py`: TorchScript / ONNX / torch.export export with a parity check."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from vidlstm.inference.export import export_checkpoint

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path="pkg://vidlstm.conf", config_name="export")
def main(cfg: DictConfig) -> dict:
    result = export_checkpoint(cfg.ckpt_path, cfg.format, cfg.part, cfg.output, cfg.sample, cfg.tolerance,
                               cfg.opset)
    diff = result["max_abs_diff"]
    log.info("Exported %s (%s, %s; dynamic axes: %s) -> %s", cfg.ckpt_path, result["format"], result["part"],
             ", ".join(result["dynamic_axes"]), result["output"])
    log.info("Max |exported - PyTorch| = %s over %s (tolerance %g)", "n/a" if diff is None else f"{diff:.3g}",
             result["checked"], cfg.tolerance)
    return result


if __name__ == "__main__":
    main()
