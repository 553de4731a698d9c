"""Serve a checkpoint over HTTP (LitServe): POST /predict with a video, GET /health.

    python scripts/serve.py ckpt_path=outputs/demo/<run>/checkpoints/best.ckpt host=127.0.0.1 port=8000
    curl --data-binary @clip.mp4 http://127.0.0.1:8000/predict
    curl -F file=@clip.mp4 'http://127.0.0.1:8000/predict?window=2&stride=1'
"""

from vidlstm.cli.serve import main

if __name__ == "__main__":
    main()
