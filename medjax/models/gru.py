"""GRU-Simple: a GRU over values, mask and log1p(hours since each was seen) (medjax.models.rnn)."""

from medjax.models import rnn


class Model(rnn.RNNClassifier):
    cell = "gru"
