"""Inference: checkpoint -> predictions for single videos (`Predictor`) and folders (`predict_folder`)."""

from vidlstm.inference.predictor import Predictor

__all__ = ["Predictor"]
