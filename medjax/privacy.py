"""Differentially private training (DP-SGD, Abadi et al. 2016) and its privacy accountant.

Each step samples every training example independently with probability q = expected batch
size / N (Poisson sampling, what the accountant assumes), clips each example's gradient to
global norm `l2_norm_clip`, sums them, adds Gaussian noise of standard deviation
`noise_multiplier * l2_norm_clip` to the sum and divides by the expected batch size (the
step's per-example path, medjax.train.steps.private_loss_and_grads). The
accountant (dp_accounting: RDP, or PLD for tighter bounds) composes one Poisson-sampled
Gaussian mechanism per step and reports epsilon at `delta`.

Shapes stay static: a Poisson batch is padded (`valid` 0) to `max_batch_size`, chosen so that
a larger sample has probability below TRUNCATION_PROBABILITY per step (then the excess would be
dropped, and a warning logged; see medjax.data.pipeline.poisson_sample).
"""

import dataclasses
import math

import dp_accounting
import jax
import ml_collections
from scipy import stats

from medjax.errors import ConfigError

ACCOUNTANTS = {"rdp": dp_accounting.rdp.RdpAccountant, "pld": dp_accounting.pld.PLDAccountant}
TRUNCATION_PROBABILITY = 1e-12  # per step: the chance that a Poisson sample exceeds the maximum


@dataclasses.dataclass(frozen=True)
class Plan:
    """A private run's settings, resolved for its training set; hashable (a static jit arg)."""

    l2_norm_clip: float
    noise_multiplier: float
    expected_batch_size: int
    max_batch_size: int
    dataset_size: int
    delta: float
    accountant: str
    target_epsilon: float
    microbatch_size: int

    @property
    def sampling_rate(self) -> float:
        return self.expected_batch_size / self.dataset_size

    def epsilon(self, steps: int) -> float:
        """Privacy spent after `steps` steps, at `delta`."""
        return epsilon(
            self.noise_multiplier, self.sampling_rate, steps, self.delta, self.accountant
        )

    def truncation_probability(self, steps: int) -> float:
        """A bound on the probability that any of `steps` Poisson samples, of this dataset or
        a neighbour with one example more, exceeded `max_batch_size` and was truncated (a
        union bound over the steps)."""
        tail = stats.binom.sf(self.max_batch_size, self.dataset_size + 1, self.sampling_rate)
        return min(1.0, steps * float(tail))


def dp_event(noise_multiplier: float, sampling_rate: float, steps: int) -> dp_accounting.DpEvent:
    """`steps` compositions of the Poisson-sampled Gaussian mechanism."""
    step = dp_accounting.PoissonSampledDpEvent(
        sampling_rate, dp_accounting.GaussianDpEvent(noise_multiplier)
    )
    return dp_accounting.SelfComposedDpEvent(step, steps)


def epsilon(
    noise_multiplier: float, sampling_rate: float, steps: int, delta: float, accountant: str
) -> float:
    """Epsilon at `delta` after `steps` DP-SGD steps, by the named accountant (rdp or pld)."""
    if steps == 0:
        return 0.0
    ledger = ACCOUNTANTS[accountant]()
    ledger.compose(dp_event(noise_multiplier, sampling_rate, steps))
    return float(ledger.get_epsilon(delta))


def noise_multiplier_for(
    target_epsilon: float, sampling_rate: float, steps: int, delta: float, accountant: str
) -> float:
    """The smallest noise multiplier whose epsilon after `steps` steps is at most the target."""
    return float(
        dp_accounting.calibrate_dp_mechanism(
            lambda: ACCOUNTANTS[accountant](),
            lambda sigma: dp_event(sigma, sampling_rate, steps),
            target_epsilon,
            delta,
            tol=1e-5,
        )
    )


def max_batch_size(expected: int, dataset_size: int, *, multiple_of: int = 1) -> int:
    """The padded size of Poisson batches: the smallest exceeded with probability at most
    TRUNCATION_PROBABILITY (Binomial(N, q) tail), rounded up to a multiple of `multiple_of`."""
    size = int(stats.binom.isf(TRUNCATION_PROBABILITY, dataset_size, expected / dataset_size))
    size = max(min(size, dataset_size), expected)
    return -(-size // multiple_of) * multiple_of


def poisson_max_size(config: ml_collections.ConfigDict, dataset_size: int) -> int:
    """The padded size of a private run's training batches (0 when privacy is off): a
    multiple of the device count and of `privacy.microbatch_size`."""
    if not config.privacy.enabled:
        return 0
    multiple_of = math.lcm(jax.device_count(), max(config.privacy.microbatch_size, 1))
    return max_batch_size(config.trainer.batch_size, dataset_size, multiple_of=multiple_of)


def plan(config: ml_collections.ConfigDict, dataset_size: int) -> Plan | None:
    """The run's privacy settings (noise solved for `target_epsilon` over the planned steps),
    or None when `privacy.enabled` is False. Raises ConfigError on bad values."""
    settings, trainer = config.privacy, config.trainer
    if not settings.enabled:
        return None
    if settings.accountant not in ACCOUNTANTS:
        raise ConfigError(
            f"privacy.accountant={settings.accountant!r}; valid: {', '.join(ACCOUNTANTS)}"
        )
    if not settings.l2_norm_clip > 0:
        raise ConfigError(f"privacy.l2_norm_clip={settings.l2_norm_clip} must be > 0")
    if settings.microbatch_size < 0:
        raise ConfigError(f"privacy.microbatch_size={settings.microbatch_size} must be >= 0")
    delta = settings.delta or 1 / (10 * dataset_size)
    if not 0 < delta < 1:
        raise ConfigError(f"privacy.delta={settings.delta} must be in (0, 1); 0: 1 / (10 N)")
    sampling_rate = trainer.batch_size / dataset_size
    if settings.target_epsilon > 0:
        noise = noise_multiplier_for(
            settings.target_epsilon, sampling_rate, trainer.num_train_steps, delta,
            settings.accountant,
        )  # fmt: skip
    elif settings.noise_multiplier >= 0:
        noise = float(settings.noise_multiplier)
    else:
        raise ConfigError(f"privacy.noise_multiplier={settings.noise_multiplier} must be >= 0")
    return Plan(
        l2_norm_clip=float(settings.l2_norm_clip),
        noise_multiplier=noise,
        expected_batch_size=trainer.batch_size,
        max_batch_size=poisson_max_size(config, dataset_size),
        dataset_size=dataset_size,
        delta=delta,
        accountant=settings.accountant,
        target_epsilon=float(settings.target_epsilon),
        microbatch_size=settings.microbatch_size,
    )


def check(config: ml_collections.ConfigDict, variables: dict) -> None:
    """Refuses what private training does not support; `variables`: the model's, or shapes."""
    if "batch_stats" in variables:
        raise ConfigError(
            "privacy.enabled with a batch-norm model: batch statistics mix examples, so per-"
            "example gradients would leak across them. Use group norm: --config.model.norm=group"
            " (as configs/ct_cnn_dp.py does)"
        )
    if config.parallel != "jit":
        raise ConfigError(
            f"privacy.enabled with parallel={config.parallel!r} is not supported; use "
            "parallel=jit (the default), which shards the private step over all devices"
        )
    if config.trainer.accumulation_steps != 1:
        raise ConfigError(
            "privacy.enabled with trainer.accumulation_steps > 1 is not supported; bound the "
            "memory of per-example gradients with privacy.microbatch_size instead"
        )
    if config.data.balanced_sampling:
        raise ConfigError(
            "privacy.enabled with data.balanced_sampling: oversampling breaks the Poisson "
            "sampling the accountant assumes; use loss.class_weights instead"
        )


def summary(plan: Plan, steps: int) -> dict:
    """privacy.json: what was spent, and the settings that spent it."""
    spent, truncated = plan.epsilon(steps), plan.truncation_probability(steps)
    return {
        "epsilon": spent,
        "delta": plan.delta,
        # Truncating a sample (probability p) moves the output distribution by at most p in
        # total variation, on either neighbour: the run is (epsilon, delta + (1 + e^eps) p)-DP.
        "truncation_probability": truncated,
        "delta_with_truncation": plan.delta + (1 + math.exp(spent)) * truncated,
        "steps": steps,
        "noise_multiplier": plan.noise_multiplier,
        "sampling_rate": plan.sampling_rate,
        "l2_norm_clip": plan.l2_norm_clip,
        "expected_batch_size": plan.expected_batch_size,
        "max_batch_size": plan.max_batch_size,
        "dataset_size": plan.dataset_size,
        "accountant": plan.accountant,
        "target_epsilon": plan.target_epsilon,
    }
