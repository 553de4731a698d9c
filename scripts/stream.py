"""Live predictions and action segments from a file, a camera or a network stream, as JSONL lines:

    python scripts/stream.py ckpt_path=outputs/demo/<run>/checkpoints/best.ckpt source=0 output=events.jsonl
    python scripts/stream.py ckpt_path=... source=rtsp://camera.local/stream window=2 stride=1
    python scripts/stream.py ckpt_path=... source=match.mp4 realtime=true state=carry
"""

from vidlstm.cli.stream import main

if __name__ == "__main__":
    main()
