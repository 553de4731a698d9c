"""vidlstm: CNN+LSTM video action recognition."""

__version__ = "0.1.0"
