"""LSTM over the inputs of GRU-Simple (medjax.models.rnn)."""

from medjax.models import rnn


class Model(rnn.RNNClassifier):
    cell = "lstm"
