"""What training and inference share: checkpoint reading, accuracy metrics, run plots."""
