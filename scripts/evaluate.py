"""Evaluate a checkpoint on a labelled split: clip- and video-level top-1 / top-5 / mean-class accuracy:

    python scripts/evaluate.py ckpt_path=outputs/demo/<run>/checkpoints/best.ckpt
    python scripts/evaluate.py ckpt_path=... data=folder data.root=/path/to/videos split=test
"""

from vidlstm.cli.evaluate import main

if __name__ == "__main__":
    main()
