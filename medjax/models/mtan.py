"""mTAN (Shukla & Marlin, 2021): multi-time attention over the observations, a bidirectional GRU
and a linear head; medjax.models.attention."""

from medjax.models.attention import MTANClassifier as Model  # noqa: F401
