"""The valid values of medjax/settings/defaults.py's keys: one table, checked before a run
touches its workdir (`check`, called by medjax's entry points), so a bad value stops it with
one line that gives the valid range. Rules that tie keys together (warm-up shorter than
training, a batch that divides over the devices, a metric the task computes) are checked where
they are used; the `model.*` keys are checked by their model's own `RULES` (medjax.models).
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple


class Rule(NamedTuple):
    holds: Callable[[Any], bool]
    says: str  # "must be ..."


def number(low=None, high=None, *, above=None, below=None, integer=False) -> Rule:
    """A finite number (an int where `integer`) in [low, high], or above / below a bound."""
    limits = ((">=", low), (">", above), ("<=", high), ("<", below))
    bounds = [f"{sign} {bound}" for sign, bound in limits if bound is not None]

    def holds(value):
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if integer and not isinstance(value, int):
            return False
        return math.isfinite(value) and all((
            low is None or value >= low, above is None or value > above,
            high is None or value <= high, below is None or value < below,
        ))  # fmt: skip

    kind = "an integer" if integer else "a finite number"
    return Rule(holds, " ".join([kind, " and ".join(bounds)]).strip())


def one_of(*values) -> Rule:
    return Rule(lambda value: value in values, "one of " + ", ".join(map(repr, values)))


def each(rule: Rule) -> Rule:
    """A tuple or list whose every entry follows `rule`."""
    return Rule(
        lambda value: isinstance(value, tuple | list) and all(rule.holds(v) for v in value),
        f"a tuple of which each is {rule.says}",
    )


def shape(rule: Rule) -> Rule:
    """A non-empty tuple whose every entry follows `rule`."""
    entries = each(rule)
    return Rule(lambda value: bool(value) and entries.holds(value), entries.says)


POSITIVE_INT = number(1, integer=True)
COUNT = number(0, integer=True)  # zero allowed
NON_NEGATIVE = number(0)
PROBABILITY_BELOW_1 = number(0, below=1)

CONSTRAINTS = {
    "seed": COUNT,
    "task": one_of("classification", "ehr", "vae", "contrastive"),
    "dtype": one_of("float32", "bfloat16"),
    "parallel": one_of("jit", "pmap"),
    "trainer.num_train_steps": POSITIVE_INT,
    "trainer.batch_size": POSITIVE_INT,
    "trainer.accumulation_steps": POSITIVE_INT,
    "trainer.eval_batch_size": POSITIVE_INT,
    "trainer.log_every_steps": POSITIVE_INT,
    "trainer.eval_every_steps": POSITIVE_INT,
    "trainer.checkpoint_every_steps": POSITIVE_INT,
    "trainer.max_checkpoints_to_keep": POSITIVE_INT,
    "trainer.selection_mode": one_of("max", "min"),
    "trainer.early_stopping_patience": COUNT,
    "trainer.on_nonfinite": one_of("stop", "skip"),
    "trainer.ema_decay": PROBABILITY_BELOW_1,
    "trainer.ensemble_size": POSITIVE_INT,
    "optimizer.name": one_of("adamw", "sgd"),
    "optimizer.learning_rate": number(above=0),
    "optimizer.weight_decay": NON_NEGATIVE,
    "optimizer.b1": PROBABILITY_BELOW_1,
    "optimizer.b2": PROBABILITY_BELOW_1,
    "optimizer.momentum": PROBABILITY_BELOW_1,
    "optimizer.schedule": one_of("cosine", "linear", "constant"),
    "optimizer.warmup_steps": COUNT,
    "optimizer.end_learning_rate_factor": number(0, 1),
    "optimizer.grad_clip_norm": NON_NEGATIVE,
    "loss.label_smoothing": PROBABILITY_BELOW_1,
    "loss.focal_gamma": NON_NEGATIVE,
    "loss.class_weights": each(NON_NEGATIVE),
    "loss.positive_weight": number(above=0),
    "loss.per_step_weight": NON_NEGATIVE,
    "loss.temperature": number(above=0),
    "loss.projection_size": POSITIVE_INT,
    "loss.beta": NON_NEGATIVE,
    "loss.kl_warmup_steps": COUNT,
    "data.seed": COUNT,
    "data.num_train": COUNT,
    "data.num_val": COUNT,
    "data.num_test": COUNT,
    "data.label_fraction": number(above=0, high=1),
    "data.num_folds": COUNT,
    "data.fold": COUNT,
    "data.image_shape": shape(POSITIVE_INT),
    "data.spacing": shape(number(above=0)),
    "data.ct_geometry": one_of("resample", "refuse"),
    "data.positive_fraction": number(0, 1),
    "data.window_center": number(),
    "data.window_width": number(above=0),
    "data.augment.max_rotation_degrees": number(0, 180),
    "data.augment.max_shift_fraction": number(0, below=1),
    "data.augment.intensity_shift": NON_NEGATIVE,
    "data.augment.intensity_scale": PROBABILITY_BELOW_1,
    "data.augment.mixup_alpha": NON_NEGATIVE,
    "data.hours": number(above=0),
    "data.step_hours": number(above=0),
    "data.imputation": one_of("zero", "forward_fill"),
    "data.test_fraction": PROBABILITY_BELOW_1,
    "data.val_fraction": PROBABILITY_BELOW_1,
    "evaluation.operating_point": one_of("youden", "sensitivity", "min_se_ppv"),
    "evaluation.target_sensitivity": number(above=0, high=1),
    "privacy.l2_norm_clip": number(above=0),
    "privacy.noise_multiplier": NON_NEGATIVE,
    "privacy.target_epsilon": NON_NEGATIVE,
    "privacy.delta": PROBABILITY_BELOW_1,
    "privacy.accountant": one_of("rdp", "pld"),
    "privacy.microbatch_size": COUNT,
    "explain.num_examples": COUNT,
    "explain.smoothgrad_samples": POSITIVE_INT,
    "explain.smoothgrad_noise": NON_NEGATIVE,
    "explain.ig_steps": POSITIVE_INT,
}


def violations(flat_config: dict) -> list[str]:
    """`key=value must be ...` for each key of the flattened config that breaks its rule."""
    return [
        f"{key}={flat_config[key]!r} must be {rule.says}"
        for key, rule in CONSTRAINTS.items()
        if key in flat_config and not rule.holds(flat_config[key])
    ]
