"""`vidlstm-serve` / `python scripts/serve.py`: serve a checkpoint over HTTP (LitServe): ``POST /predict`` with a
video (raw body or multipart field ``file``), ``GET /health``."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from vidlstm.common.checkpoint import load_checkpoint
from vidlstm.inference.serve import ServeSettings, build_server

log = logging.getLogger(__name__)


HOSTS = {"127.0.0.1": "127.0.0.1", "localhost": "127.0.0.1", "0.0.0.0": "0.0.0.0", "::": "::"}  # LitServe binds these


@hydra.main(version_base="1.3", config_path="pkg://vidlstm.conf", config_name="serve")
def main(cfg: DictConfig) -> None:
    if str(cfg.host) not in HOSTS:
        log.error("host=%s: the server binds 127.0.0.1 (or localhost: this machine), 0.0.0.0 (every IPv4 "
                  "interface) or :: (every IPv6 interface)", cfg.host)
        sys.exit(2)
    load_checkpoint(cfg.ckpt_path)  # a wrong path or file fails here with its reason, before any process starts
    settings = ServeSettings(
        ckpt_path=str(cfg.ckpt_path), device=cfg.device, max_batch_size=cfg.max_batch_size,
        batch_timeout_s=cfg.batch_timeout_s, max_clips_per_call=cfg.max_clips_per_call,
        workers_per_device=cfg.workers_per_device, num_clips=cfg.num_clips, top_k=cfg.top_k, backend=cfg.backend,
        decode_timeout_s=cfg.decode_timeout_s, decode_workers=cfg.decode_workers, max_upload_mb=cfg.max_upload_mb,
        max_windows=cfg.max_windows, allowed_root=cfg.allowed_root, upload_dir=cfg.upload_dir,
        request_timeout_s=cfg.request_timeout_s, segments=OmegaConf.to_container(cfg.segments), threads=cfg.threads)
    server = build_server(settings)
    log.info("Serving %s on http://%s:%d (POST /predict, GET /health)", cfg.ckpt_path, cfg.host, cfg.port)
    server.run(host=HOSTS[str(cfg.host)], port=cfg.port, num_api_servers=cfg.api_servers, log_level=cfg.log_level,
               generate_client_file=False)


if __name__ == "__main__":
    main()
