"""Models: per-frame encoders, recurrent heads, temporal pooling and their composition."""

from vidlstm.models.cnn_lstm import CNNLSTM, TemporalHead
from vidlstm.models.encoders import FrameEncoder
from vidlstm.models.pooling import TemporalPooling
from vidlstm.models.recurrent import RecurrentEncoder

__all__ = ["CNNLSTM", "FrameEncoder", "RecurrentEncoder", "TemporalHead", "TemporalPooling"]
