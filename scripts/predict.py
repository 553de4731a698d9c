"""Predict classes for a video file, a folder of videos or a list file, one CSV/JSONL row per video:

    python scripts/predict.py ckpt_path=outputs/demo/<run>/checkpoints/best.ckpt input=/videos output=preds.csv
    python scripts/predict.py ckpt_path=... input=long.mp4 output=timeline.csv window=2 stride=1
"""

from vidlstm.cli.predict import main

if __name__ == "__main__":
    main()
