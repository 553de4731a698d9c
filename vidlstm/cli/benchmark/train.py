"""``train``: median epoch time of the demo with a frozen encoder trained end to end (decode + CNN + head) and
with the feature cache (head only, after a one-time extraction), on the same batches; their ratio and both
runs' validation accuracy.
"""

from __future__ import annotations

import argparse
import os
import tempfile


def bench_train(encoder: str, size: int, batches: int, epochs: int) -> dict[str, dict[str, float]]:
    """{"end to end" | "feature cache": summary} of two short demo runs with a frozen ``encoder``."""
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from vidlstm.training.train import train

    common = [f"model/encoder={encoder}", "model.encoder.freeze=all", f"data.image_size={size}",
              "data.train_sampler.jitter=false", "~data.train_transform",
              "+data.train_transform={_target_:vidlstm.data.transforms.eval_transform,_partial_:true,"
              "mean:null,std:null,interpolation:null}",  # null: from the weights, as the default transforms
              f"trainer.limit_train_batches={batches}", f"trainer.limit_val_batches={max(1, batches // 4)}",
              "test=false", "callbacks.progress_bar=null", "callbacks.model_summary=null",
              "callbacks.early_stopping=null", "callbacks.lr_monitor=null", "~logger"]
    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        runs = {"end to end": [f"trainer.max_epochs={epochs}"],
                "feature cache": [f"trainer.max_epochs={epochs * 3}", "data.feature_cache=true",
                                  f"data.feature_cache_dir={scratch}/features"]}
        for n, (name, extra) in enumerate(runs.items()):
            GlobalHydra.instance().clear()
            with initialize_config_module(config_module="vidlstm.conf", version_base="1.3"):
                cfg = compose("train", overrides=[*common, *extra], return_hydra_config=True)
            with open_dict(cfg):
                cfg.hydra.runtime.output_dir = f"{scratch}/run{n}"
                cfg.hydra.job.num = 0
            HydraConfig.instance().set_config(cfg)
            summary, _ = train(cfg)
            results[name] = summary
    return results


def run(args: argparse.Namespace) -> None:
    results = bench_train(args.encoder, args.size, args.batches, args.epochs)
    print(f"train benchmark: demo, frozen {args.encoder} at {args.size}px, {args.batches} training batches per "
          f"epoch (cpus: {os.cpu_count()})")
    for name, summary in results.items():
        extraction = f", one-time extraction {summary['feature_extraction_s']:.1f} s" \
            if "feature_extraction_s" in summary else ""
        print(f"  {name:<14} epoch {summary['epoch_time_s']:8.3f} s   val/acc_best {summary['val/acc_best']:.4f}"
              f"{extraction}")
    ratio = results["end to end"]["epoch_time_s"] / results["feature cache"]["epoch_time_s"]
    print(f"  ratio end-to-end epoch / feature-cache epoch: {ratio:.1f}   (target >= 20)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--encoder", default="resnet18", help="model/encoder config to freeze")
    parser.add_argument("--size", type=int, default=112, help="frame side (data.image_size)")
    parser.add_argument("--batches", type=int, default=24, help="training batches per epoch (both runs)")
    parser.add_argument("--epochs", type=int, default=3, help="end-to-end epochs (feature runs do 3x)")
