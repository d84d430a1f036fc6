"""GRU-D (Che et al., 2018): input and hidden state decayed with the hours since the last
observation (medjax.models.rnn)."""

from medjax.models import rnn


class Model(rnn.RNNClassifier):
    cell = "gru_d"
