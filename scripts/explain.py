"""Explain a checkpoint's prediction: Grad-CAM per frame, temporal importance, probabilities per step:

    python scripts/explain.py ckpt_path=outputs/demo/<run>/checkpoints/best.ckpt input=clip.mp4 output=explain.mp4
    python scripts/explain.py ckpt_path=... input=clip.mp4 output=explain.gif target=vanish
    python scripts/explain.py ckpt_path=... input=/videos output=explained/      # every video in a folder
"""

from vidlstm.cli.explain import main

if __name__ == "__main__":
    main()
