"""Recalibration of binary scores, fitted on validation: temperature scaling of log-odds (Guo et
al. 2017) or, for scores that are not log-odds (a VAE's anomaly score), Platt scaling.

Either map is p = sigmoid(scale * (score - center) + offset), fitted by minimising the binary
negative log-likelihood of the validation labels; temperature scaling fixes center and offset at
0 and scale = 1 / T, so it changes no ranking and no threshold on the score.
"""

import dataclasses

import numpy as np
from scipy import optimize, special

from medjax.stats import metrics


@dataclasses.dataclass(frozen=True)
class Calibrator:
    method: str  # "temperature" or "platt"
    scale: float
    offset: float = 0.0
    center: float = 0.0

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of class 1."""
        return special.expit(
            self.scale * (np.asarray(scores, np.float64) - self.center) + self.offset
        )

    @property
    def temperature(self) -> float:
        return 1.0 / self.scale


def nll(labels, log_odds) -> float:
    """Mean binary negative log-likelihood of 0/1 `labels` under sigmoid(`log_odds`)."""
    return float(np.mean(np.logaddexp(0.0, log_odds) - labels * log_odds))


def fit_temperature(labels, log_odds) -> Calibrator:
    """The temperature T in [e^-6, e^6] minimising the NLL of sigmoid(log_odds / T)."""
    labels, log_odds = np.asarray(labels, np.float64), np.asarray(log_odds, np.float64)
    fit = optimize.minimize_scalar(
        lambda log_t: nll(labels, log_odds * np.exp(-log_t)),
        bounds=(-6.0, 6.0),
        method="bounded",
        options={"xatol": 1e-8},
    )
    return Calibrator("temperature", scale=float(np.exp(-fit.x)))


def fit_platt(labels, scores) -> Calibrator:
    """The logistic map of `scores` (any scale) minimising the NLL (Platt 1999); its slope is
    found on standardised scores, so scores in thousands of nats fit as well as unit ones."""
    labels, scores = np.asarray(labels, np.float64), np.asarray(scores, np.float64)
    center, spread = float(scores.mean()), float(scores.std()) or 1.0
    z = (scores - center) / spread

    def loss_and_grad(ab):
        log_odds = ab[0] * z + ab[1]
        residual = special.expit(log_odds) - labels
        return nll(labels, log_odds), np.array([np.mean(residual * z), np.mean(residual)])

    fit = optimize.minimize(loss_and_grad, np.array([1.0, 0.0]), jac=True, method="BFGS")
    return Calibrator(
        "platt", scale=float(fit.x[0]) / spread, offset=float(fit.x[1]), center=center
    )


def reliability(labels, probs, num_bins: int = metrics.ECE_BINS):
    """The reliability diagram of probabilities of class 1: per equal-width bin, the mean
    predicted probability, the observed fraction of positives (nan in empty bins), and the count."""
    labels, probs = np.asarray(labels, np.float64), np.asarray(probs, np.float64)
    bins = metrics.calibration_bins(probs, num_bins)
    counts = np.bincount(bins, minlength=num_bins).astype(np.float64)
    empty = np.full(num_bins, np.nan)
    mean_prob, observed = (
        np.divide(np.bincount(bins, x, num_bins), counts, out=empty.copy(), where=counts > 0)
        for x in (probs, labels)
    )
    return mean_prob, observed, counts
