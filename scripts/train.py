"""Train a video classifier. No arguments: the built-in demo. Example:

    python scripts/train.py data=folder data.root=/path/to/videos model/encoder=resnet18 trainer.max_epochs=30
"""

from vidlstm.cli.train import main

if __name__ == "__main__":
    main()
