"""Export a checkpoint to TorchScript or ONNX and check it against PyTorch on a decoded clip:

    python scripts/export.py ckpt_path=outputs/demo/<run>/checkpoints/best.ckpt format=onnx [part=head]
"""

from vidlstm.cli.export import main

if __name__ == "__main__":
    main()
