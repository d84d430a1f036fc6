"""The optax optimiser and learning-rate schedule named by the `optimizer` config."""

import fnmatch

import jax
import ml_collections
import optax
from flax import traverse_util

from medjax.errors import ConfigError

SCHEDULES = ("cosine", "linear", "constant")
HEAD_NAMES = ("head", "projection")  # what `init.freeze=backbone` leaves trainable


def learning_rate_schedule(opt: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to `learning_rate`, then cosine, linear or no decay.

    The decay ends at `learning_rate * end_learning_rate_factor` at `num_train_steps`.
    """
    if not 0 <= opt.warmup_steps < num_train_steps:
        raise ConfigError(
            f"optimizer.warmup_steps={opt.warmup_steps} must be in [0, "
            f"trainer.num_train_steps={num_train_steps})"
        )
    peak, end = opt.learning_rate, opt.learning_rate * opt.end_learning_rate_factor
    decay_steps = num_train_steps - opt.warmup_steps
    decay = {
        "cosine": optax.cosine_decay_schedule(
            peak, decay_steps, alpha=opt.end_learning_rate_factor
        ),
        "linear": optax.linear_schedule(peak, end, decay_steps),
        "constant": optax.constant_schedule(peak),
    }[opt.schedule]
    warmup = optax.linear_schedule(0.0, peak, opt.warmup_steps)
    return optax.join_schedules([warmup, decay], boundaries=[opt.warmup_steps])


def decay_mask(params):
    """True for the weights that get weight decay: kernels, not biases or norm scales."""
    return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(
    opt: ml_collections.ConfigDict, num_train_steps: int, freeze: str = ""
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """adamw (decoupled weight decay) or sgd with momentum (weight decay added to the gradient,
    as torch.optim.SGD), after clipping by the global gradient norm when `grad_clip_norm` > 0.
    The parameters `freeze` names (`frozen_mask`) get zero updates and keep no optimiser state.

    Returns the optimiser and its learning-rate schedule.
    """
    schedule = learning_rate_schedule(opt, num_train_steps)
    if opt.name == "adamw":
        tx = optax.adamw(
            schedule, b1=opt.b1, b2=opt.b2, weight_decay=opt.weight_decay, mask=decay_mask
        )
    elif opt.name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(opt.weight_decay, mask=decay_mask),
            optax.sgd(schedule, momentum=opt.momentum or None, nesterov=opt.nesterov),
        )
    else:
        raise ConfigError(f"unknown optimizer.name {opt.name!r}; valid: adamw, sgd")
    if opt.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt.grad_clip_norm), tx)
    if freeze:

        def labels(params):
            return jax.tree.map(lambda f: "frozen" if f else "trained", frozen_mask(params, freeze))

        tx = optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
    return tx, schedule


def run_optimizer(
    config: ml_collections.ConfigDict,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """`create_optimizer` for a run of `config`: its `optimizer` over `trainer.num_train_steps`,
    with the parameters `init.freeze` names frozen."""
    return create_optimizer(config.optimizer, config.trainer.num_train_steps, config.init.freeze)


def frozen_mask(params: dict, freeze: str) -> dict:
    """True for the parameters `init.freeze` names: "backbone" (all but the head), or
    comma-separated glob patterns over parameter paths ("stem_*,stage0_*"), a pattern
    matching a path or any folder of it. ConfigError for a pattern that matches nothing, and
    for patterns that freeze every parameter (nothing would be trained)."""
    paths = list(traverse_util.flatten_dict(params, sep="/"))
    if freeze == "backbone":
        if not any(p.split("/")[0] in HEAD_NAMES for p in paths):
            raise ConfigError(
                "init.freeze='backbone' freezes all but the model's head, and this model has no "
                "layer named head; give parameter-path patterns instead"
            )
        frozen = {p for p in paths if p.split("/")[0] not in HEAD_NAMES}
    else:
        frozen = set()
        for pattern in filter(None, (p.strip() for p in freeze.split(","))):
            matched = {p for p in paths if any(fnmatch.fnmatchcase(prefix, pattern)
                                               for prefix in _folders(p))}  # fmt: skip
            if not matched:
                tops = sorted({p.split("/")[0] for p in paths})
                raise ConfigError(
                    f"init.freeze pattern {pattern!r} matches no parameter; paths are like "
                    f"{paths[0]!r}, under: {', '.join(tops)}"
                )
            frozen |= matched
    if len(frozen) == len(paths):
        raise ConfigError(
            f"init.freeze={freeze!r} freezes all {len(paths)} parameters: nothing would be "
            "trained; leave some trainable (init.freeze=backbone trains the head), or give no "
            "init.freeze and evaluate the source with --mode=evaluate"
        )
    return traverse_util.unflatten_dict({p: p in frozen for p in paths}, sep="/")


def _folders(path: str) -> list[str]:
    """'a/b/c' -> ['a', 'a/b', 'a/b/c']."""
    parts = path.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]
