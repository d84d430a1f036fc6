"""The training step, top to bottom: the loss and its gradients, accumulated over micro-batches
or, with DP-SGD, per example (clipped, summed and noised); the optimiser's update and the moving
average; the health scalars (`_train_step`, jitted on a global batch or pmapped). Then the
evaluation step, and the stepper the loop drives them through.

Randomness: step N draws from fold_in(key, N) (folded with the device index under pmap); each
random stream the task's model declares (`Task.rng_streams`) gets its own key from that.
Evaluation draws from `eval_key`, the same for every example and every evaluation of a run.
"""

import functools

import jax
import jax.numpy as jnp
import optax

from medjax import parallel, privacy
from medjax.tasks import Task
from medjax.train.state import TrainState, model_variables

PARALLEL = ("jit", "pmap")
EVAL_STREAM = 2**32 - 1  # folded into the key for evaluation: a stream no step number reaches


def stream_keys(key: jax.Array, streams: tuple[str, ...]) -> dict[str, jax.Array]:
    """flax's `rngs`: one key per named random stream, the i-th stream's fold_in(key, i)."""
    return {name: jax.random.fold_in(key, i) for i, name in enumerate(streams)}


def _loss_and_grads(state: TrainState, batch, task: Task, key, batch_stats):
    """(loss, gradients, updated batch statistics) of the task's loss on `batch`."""

    def loss_of(params):
        outputs, updates = task.model.apply(
            model_variables(params, batch_stats),
            task.model_inputs(batch),
            train=True,
            rngs=stream_keys(key, task.rng_streams),
            mutable=["batch_stats"],
        )
        return task.loss_fn(outputs, batch, state.step), updates.get("batch_stats", {})

    (loss, batch_stats), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    return loss, grads, batch_stats


def _accumulated_loss_and_grads(state: TrainState, batch, task: Task, key, accumulation_steps):
    """The mean loss and gradient over `accumulation_steps` micro-batches (every K-th row, so
    that each device's rows split evenly); batch norm normalises each micro-batch on its own."""
    if accumulation_steps == 1:
        return _loss_and_grads(state, batch, task, key, state.batch_stats)
    micro_batches = jax.tree.map(
        lambda x: x.reshape(-1, accumulation_steps, *x.shape[1:]).swapaxes(0, 1), batch
    )

    def accumulate(carry, micro):
        micro_batch, k = micro
        batch_stats, loss_sum, grad_sum = carry
        loss, grads, batch_stats = _loss_and_grads(
            state, micro_batch, task, jax.random.fold_in(key, k), batch_stats
        )
        return (batch_stats, loss_sum + loss, jax.tree.map(jnp.add, grad_sum, grads)), None

    zeros = jax.tree.map(jnp.zeros_like, state.params)
    carry = (state.batch_stats, jnp.zeros(()), zeros)
    (batch_stats, loss, grads), _ = jax.lax.scan(
        accumulate, carry, (micro_batches, jnp.arange(accumulation_steps))
    )
    loss, grads = jax.tree.map(lambda x: x / accumulation_steps, (loss, grads))
    return loss, grads, batch_stats


def private_loss_and_grads(state: TrainState, batch, task: Task, plan: privacy.Plan, step_key):
    """DP-SGD: the mean loss of the batch's valid examples, the noisy mean of their clipped
    gradients (divided by the expected batch size), and the fraction clipped."""

    def example_loss(params, example, key):
        one = jax.tree.map(lambda x: x[None], example)  # each example is a batch of one
        outputs = task.model.apply(
            model_variables(params, state.batch_stats),
            task.model_inputs(one),
            train=True,
            rngs=stream_keys(key, task.rng_streams),
        )
        return task.loss_fn(outputs, one, state.step)

    valid = batch["valid"]
    positions = jnp.arange(valid.shape[0])
    keys = jax.vmap(jax.random.fold_in, (None, 0))(jax.random.fold_in(step_key, 2), positions)
    loss_sum, grad_sum, clipped = clipped_sums(
        example_loss,
        state.params,
        batch,
        valid,
        keys,
        l2_norm_clip=plan.l2_norm_clip,
        microbatch_size=plan.microbatch_size,
    )
    if plan.noise_multiplier:  # (0 noise with an infinite clip would give 0 * inf)
        std = plan.noise_multiplier * plan.l2_norm_clip
        grad_sum = add_noise(grad_sum, jax.random.fold_in(step_key, 3), std)
    grads = jax.tree.map(lambda g: g / plan.expected_batch_size, grad_sum)
    count = jnp.maximum(valid.sum(), 1)
    return loss_sum / count, grads, {"clipped_fraction": clipped / count}


def clipped_sums(example_loss, params, examples, valid, keys, *, l2_norm_clip, microbatch_size):
    """Sums over the valid examples of the loss, the clipped gradient and the clipped count.

    `example_loss(params, example, key)` is one example's loss; `examples` and `keys` have a
    leading example axis. Per-example gradients are computed `microbatch_size` at a time (0:
    all at once) under `lax.scan`, so memory holds that many copies of the gradient; chunks
    holding only padding are skipped (Poisson batches put their examples first).
    """

    def sums(chunk):
        chunk_examples, chunk_valid, chunk_keys = chunk
        losses, grads = per_example_grads(example_loss, params, chunk_examples, chunk_keys)
        clipped, norms = clip_each(grads, l2_norm_clip)
        weights = chunk_valid.astype(jnp.float32)
        grad_sum = jax.tree.map(lambda g: jnp.tensordot(weights, g, axes=1), clipped)
        return jnp.sum(weights * losses), grad_sum, jnp.sum(weights * (norms > l2_norm_clip))

    size = valid.shape[0]
    if microbatch_size in (0, size):
        return sums((examples, valid, keys))
    chunks = jax.tree.map(
        lambda x: x.reshape(size // microbatch_size, microbatch_size, *x.shape[1:]),
        (examples, valid, keys),
    )
    zeros = (jnp.zeros(()), jax.tree.map(jnp.zeros_like, params), jnp.zeros(()))

    def accumulate(total, chunk):
        found = jax.lax.cond(chunk[1].any(), sums, lambda chunk: zeros, chunk)
        return jax.tree.map(jnp.add, total, found), None

    total, _ = jax.lax.scan(accumulate, zeros, chunks)
    return total


def per_example_grads(example_loss, params, examples, keys):
    """(losses [B], gradients with a leading axis [B]) of `example_loss(params, example, key)`
    for each example of `examples` (leading axis B) with its key, by `jax.vmap`."""
    return jax.vmap(jax.value_and_grad(example_loss), in_axes=(None, 0, 0))(params, examples, keys)


def clip_each(grads, l2_norm_clip: float):
    """Per-example gradients (leading axis) each scaled to global norm <= `l2_norm_clip`;
    returns them and their norms before clipping."""
    norms = jax.vmap(optax.global_norm)(grads)
    factors = jnp.minimum(1.0, l2_norm_clip / jnp.maximum(norms, jnp.finfo(norms.dtype).tiny))
    clipped = jax.tree.map(lambda g: g * factors.reshape(-1, *(1,) * (g.ndim - 1)), grads)
    return clipped, norms


def add_noise(tree, key: jax.Array, std: float):
    """`tree` plus independent N(0, std^2) noise on every entry."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    noisy = [x + std * jax.random.normal(k, x.shape, x.dtype) for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(treedef, noisy)


def _apply_gradients(state: TrainState, grads, batch_stats) -> TrainState:
    """The optimiser's update of the parameters, then of their moving average (`ema_params`,
    whose decay ramps up as (1 + t) / (10 + t), so that early averages forget the init)."""
    updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_params is not None:
        decay = jnp.minimum(state.ema_decay, (1.0 + state.step) / (10.0 + state.step))
        ema_params = optax.incremental_update(params, ema_params, 1.0 - decay)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         batch_stats=batch_stats, ema_params=ema_params)  # fmt: skip


def _train_step(state: TrainState, batch, *, task: Task, accumulation_steps: int, axis_name,
                plan: privacy.Plan | None = None):  # fmt: skip
    """The body shared by the jit and pmap steps: one optimiser step on a batch.

    Under pmap (`axis_name`), gradients, loss and batch statistics are averaged over devices.
    With a privacy `plan` (refused with batch norm, pmap and accumulation by privacy.check),
    the gradient is DP-SGD's. A non-finite loss or gradient leaves the state as it was, but
    for the step count.
    """
    step_key = jax.random.fold_in(state.key, state.step)
    extra = {}
    if plan is not None:
        loss, grads, extra = private_loss_and_grads(state, batch, task, plan, step_key)
        batch_stats = state.batch_stats
    else:
        key = step_key
        if axis_name:  # each device's part of the batch gets its own dropout masks and samples
            key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
        loss, grads, batch_stats = _accumulated_loss_and_grads(
            state, batch, task, key, accumulation_steps
        )
    if axis_name:
        loss, grads, batch_stats = jax.lax.pmean((loss, grads, batch_stats), axis_name)
    l2_grads = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(l2_grads)
    updated = _apply_gradients(state, grads, batch_stats)
    skipped = state.replace(step=state.step + 1)
    state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, skipped)
    scalars = {
        "loss": loss,
        "l2_grads": l2_grads,
        "l2_params": optax.global_norm(state.params),
        "nonfinite": 1 - finite.astype(jnp.int32),
        **extra,
    }
    return state, scalars


@functools.partial(
    jax.jit, static_argnames=("task", "accumulation_steps", "plan"), donate_argnames="state"
)
def train_step(state: TrainState, batch, *, task: Task, accumulation_steps: int = 1,
               plan: privacy.Plan | None = None):  # fmt: skip
    """One optimiser step on a global batch sharded over the mesh: XLA inserts the reductions.
    With a privacy `plan`, a DP-SGD step on a Poisson batch. Returns the new state and health
    scalars."""
    return _train_step(
        state, batch, task=task, accumulation_steps=accumulation_steps, axis_name=None, plan=plan
    )


@functools.cache
def pmap_train_step(task: Task, accumulation_steps: int = 1):
    """`train_step` as a classic `jax.pmap` over this process's devices, on state laid out by
    `parallel.to_pmap` and batches by `parallel.split_local`; gradients, loss and batch
    statistics are averaged over all devices (`lax.pmean`). Evaluation uses `eval_step`."""
    step = functools.partial(
        _train_step, task=task, accumulation_steps=accumulation_steps, axis_name=parallel.AXIS
    )
    return jax.pmap(step, axis_name=parallel.AXIS, donate_argnums=0)


def eval_key(state: TrainState) -> jax.Array:
    """The key of evaluation's randomness (a VAE's latent samples): the run's, one per run."""
    return jax.random.fold_in(state.key, EVAL_STREAM)


def eval_outputs(task: Task, variables, batch, key: jax.Array) -> dict[str, jax.Array]:
    """The task's per-example evaluation outputs of `batch` under model `variables`.

    Each example is evaluated as a batch of its own with the same `key`, so that its outputs,
    random draws included, do not depend on the batch it comes in (an exported model gives
    the same scores at any batch size). With `task.test_time_views`, the outputs are the mean
    of the views' outputs."""
    rngs = stream_keys(key, task.rng_streams)

    def one(example):
        example = jax.tree.map(lambda x: x[None], example)
        inputs = task.model_inputs(example)
        views = task.test_time_views(inputs) if task.test_time_views else (inputs,)
        each = [task.model.apply(variables, view, train=False, rngs=rngs) for view in views]
        outputs = jax.tree.map(lambda *view_outputs: sum(view_outputs) / len(views), *each)
        return jax.tree.map(lambda x: x[0], task.eval_outputs_fn(outputs, example))

    return jax.vmap(one)(batch)


@functools.partial(jax.jit, static_argnames="task")
def eval_step(state: TrainState, batch, *, task: Task):
    """The task's per-example evaluation outputs (`eval_outputs`) of a global batch under the
    state's evaluation parameters, with its `valid` flags."""
    variables = model_variables(state.eval_params, state.batch_stats)
    return {**eval_outputs(task, variables, batch, eval_key(state)), "valid": batch["valid"]}


def stepper(config, task: Task, mesh, plan: privacy.Plan | None = None):
    """(to_loop, train_on, from_loop): the training loop's layout of the state, one step on
    this process's numpy batch, and the state back in the replicated layout of the rest."""
    accumulation_steps = config.trainer.accumulation_steps
    if config.parallel == "jit":

        def train_on(state, batch):
            batch = parallel.shard_batch(batch, mesh)
            return train_step(
                state, batch, task=task, accumulation_steps=accumulation_steps, plan=plan
            )

        return (lambda state: state), train_on, (lambda state: state)
    step = pmap_train_step(task, accumulation_steps)

    def train_on(state, batch):
        state, scalars = step(state, parallel.split_local(batch))
        return state, parallel.first_replica(scalars)

    return parallel.to_pmap, train_on, functools.partial(parallel.from_pmap, mesh=mesh)
