"""DP-SGD (medjax/privacy.py): per-example gradients, clipping, noise, Poisson sampling, the
accountant against dp_accounting, the refusals, and a tiny private run end to end."""

import json
import math
import os

import dp_accounting
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medjax import optim, privacy, train
from medjax.data import pipeline
from medjax.errors import ConfigError
from medjax.tasks import build_task
from medjax.train import checks, steps
from medjax.train.state import create_train_state


def _private(config, **settings):
    if "norm" in config.model:  # the ResNets: batch norm mixes examples
        config.model.norm = "group"
    config.privacy.update(enabled=True, **settings)
    return config


def _state(task, config):
    tx, _ = optim.create_optimizer(config.optimizer, config.trainer.num_train_steps)
    return create_train_state(task, tx, *jax.random.split(jax.random.key(0)))


def _plan(batch_size, *, clip=1.0, noise=0.0, microbatch=0):
    return privacy.Plan(
        l2_norm_clip=clip,
        noise_multiplier=noise,
        expected_batch_size=batch_size,
        max_batch_size=batch_size,
        dataset_size=96,
        delta=1e-5,
        accountant="rdp",
        target_epsilon=0.0,
        microbatch_size=microbatch,
    )


def _leaves(tree):
    return [np.asarray(x, np.float64) for x in jax.tree.leaves(tree)]


# Per-example gradients.


@pytest.mark.parametrize("name", ["ct_cnn", "ehr_rnn"])
def test_per_example_gradients_equal_a_python_loop(tiny, name):
    config = tiny(name, image_shape=(16, 16))
    # ct_cnn: group norm, and no stride-4 stem, whose 1x1 last stage makes group norm (of one
    # value per group) amplify rounding; the GRU has no norm.
    if name == "ct_cnn":
        config.model.update(name="resnet10", norm="group", small_input=True)
    else:
        config.model.name = "gru"
    config.model.dropout_rate = 0.0
    task = build_task(config)
    params = _state(task, config).params
    batch = {k: v[:5] for k, v in next(task.train_batches(0)).items()}

    def example_loss(params, example, key):
        del key
        one = jax.tree.map(lambda x: x[None], example)
        outputs = task.model.apply({"params": params}, task.model_inputs(one), train=True)
        return task.loss_fn(outputs, one, 0)

    keys = jax.random.split(jax.random.key(0), 5)
    losses, grads = jax.jit(steps.per_example_grads, static_argnums=0)(
        example_loss, params, batch, keys
    )

    @jax.jit
    @jax.value_and_grad
    def reference(params, one):
        outputs = task.model.apply({"params": params}, task.model_inputs(one), train=True)
        return task.loss_fn(outputs, one, 0)

    for i in range(5):  # the reference: each example sliced out as a batch of one
        loss, expected = reference(params, {k: v[i : i + 1] for k, v in batch.items()})
        np.testing.assert_allclose(losses[i], loss, rtol=1e-5)
        for got, want in zip(_leaves(grads), _leaves(expected)):  # float32, other op order
            assert np.linalg.norm(got[i] - want) <= 1e-4 * np.linalg.norm(want) + 1e-7
    assert not np.allclose(_leaves(grads)[0][0], _leaves(grads)[0][1])  # examples differ


# Clipping and noise.


def test_every_clipped_gradient_is_within_the_clip_and_small_ones_are_unchanged():
    rng = np.random.default_rng(0)
    scales = np.array([0.01, 0.3, 0.9, 1.5, 10.0, 1e4, 0.0, 2.0])[:, None]
    grads = {
        "a": jnp.asarray(rng.normal(size=(8, 7)) * scales),
        "b": {"c": jnp.asarray(rng.normal(size=(8, 3, 2)) * scales[:, :, None])},
    }
    clipped, norms = steps.clip_each(grads, 1.25)
    flat = np.concatenate([g.reshape(8, -1) for g in _leaves(grads)], 1)
    flat_clipped = np.concatenate([g.reshape(8, -1) for g in _leaves(clipped)], 1)
    original = np.linalg.norm(flat, axis=1)
    np.testing.assert_allclose(norms, original, rtol=1e-6)
    after = np.linalg.norm(flat_clipped, axis=1)
    assert np.all(after <= 1.25 * (1 + 1e-6))
    small = original <= 1.25
    np.testing.assert_array_equal(flat_clipped[small], flat[small])  # unchanged
    np.testing.assert_allclose(after[~small], 1.25, rtol=1e-6)  # clipped to the clip...
    cosine = (flat_clipped * flat).sum(1)[~small] / (after * original)[~small]
    np.testing.assert_allclose(cosine, 1.0, rtol=1e-6)  # ...in the same direction
    # The sum agrees with optax's own per-example clipping.
    expected_sum, num_clipped = optax.per_example_global_norm_clip(jax.tree.leaves(grads), 1.25)
    for got, want in zip(jax.tree.leaves(clipped), expected_sum):
        np.testing.assert_allclose(got.sum(0), want, rtol=1e-6, atol=1e-12)
    assert int(num_clipped) == int((~small).sum())


def test_the_private_step_adds_noise_of_the_stated_standard_deviation(tiny):
    config = _private(tiny("ehr_rnn"), microbatch_size=8)
    config.model.hidden_size = 64  # 20k+ parameters: noise samples
    task = build_task(config)
    state = _state(task, config)
    batch = next(task.train_batches(0))
    batch["valid"] = np.zeros_like(batch["valid"])  # no example: the gradient is the noise
    plan = _plan(16, clip=0.7, noise=1.3, microbatch=8)
    private = jax.jit(steps.private_loss_and_grads, static_argnums=(2, 3))
    _, grads, _ = private(state, batch, task, plan, jax.random.key(1))
    noise = np.concatenate([g.ravel() for g in _leaves(grads)])
    n = noise.size
    std = 1.3 * 0.7 / 16  # noise_multiplier * clip on the sum, divided by the expected size
    # The sample sd of n normals has relative sd 1/sqrt(2n); allow 6 of them, and 6 sd of the mean.
    assert n > 20_000
    assert abs(noise.std() / std - 1) < 6 / np.sqrt(2 * n)
    assert abs(noise.mean()) < 6 * std / np.sqrt(n)
    # Another step's noise is independent of this one's.
    _, other, _ = private(state, batch, task, plan, jax.random.key(2))
    other = np.concatenate([g.ravel() for g in _leaves(other)])
    assert abs(np.corrcoef(noise, other)[0, 1]) < 6 / np.sqrt(n)


def test_zero_noise_and_no_clip_make_the_private_step_the_ordinary_one(tiny):
    config = tiny("ehr_rnn")  # the per-example gradients of convolutions: tested above
    config.model.update(name="gru", dropout_rate=0.0)
    config.optimizer.update(name="sgd", momentum=0.0, learning_rate=1.0, grad_clip_norm=0.0,
                            warmup_steps=0, schedule="constant")  # fmt: skip
    task = build_task(config)
    batch = next(task.train_batches(0))
    ordinary, scalars = steps.train_step(_state(task, config), batch, task=task)
    plan = _plan(16, clip=float("inf"), noise=0.0, microbatch=4)
    private, private_scalars = steps.train_step(
        _state(task, config), batch | {"valid": np.ones(16, bool)}, task=task, plan=plan
    )
    start = _leaves(_state(task, config).params)
    for a, b, p0 in zip(_leaves(ordinary.params), _leaves(private.params), start):
        # The updates agree to float32 rounding (sums in another order), and are not zero.
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(a - p0) and np.any(a != p0)
    np.testing.assert_allclose(private_scalars["loss"], scalars["loss"], rtol=1e-6)
    np.testing.assert_allclose(private_scalars["l2_grads"], scalars["l2_grads"], rtol=1e-5)
    assert float(private_scalars["clipped_fraction"]) == 0.0


def test_padding_and_chunks_change_nothing_but_the_valid_examples_count(tiny):
    config = _private(tiny("ehr_rnn"), microbatch_size=4)
    config.model.update(name="gru", dropout_rate=0.0)
    task = build_task(config)
    params = _state(task, config).params

    def example_loss(params, example, key):
        del key
        one = jax.tree.map(lambda x: x[None], example)
        outputs = task.model.apply({"params": params}, task.model_inputs(one), train=True)
        return task.loss_fn(outputs, one, 0)

    batch = next(task.train_batches(0))
    valid = np.zeros(len(batch["valid"]), bool)
    valid[:5] = True
    keys = jax.random.split(jax.random.key(0), len(valid))
    sums = jax.jit(steps.clipped_sums, static_argnums=0, static_argnames="microbatch_size")
    whole = sums(example_loss, params, batch, valid, keys, l2_norm_clip=0.5, microbatch_size=0)
    chunked = sums(example_loss, params, batch, valid, keys, l2_norm_clip=0.5, microbatch_size=4)
    first5 = {k: v[:5] for k, v in batch.items()}
    alone = sums(example_loss, params, first5, valid[:5], keys[:5], l2_norm_clip=0.5,
                 microbatch_size=0)  # fmt: skip
    for got in (whole, chunked):
        for a, b in zip(_leaves(got), _leaves(alone)):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7)
    assert 0 < float(alone[2]) <= 5  # the clipped count


# The accountant.


def test_epsilon_equals_dp_accounting_for_the_abadi_mnist_setting():
    q, sigma, delta = 256 / 60000, 1.1, 1e-5
    steps = 60 * 60000 // 256  # 60 epochs
    event = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma))
    for name, accountant in (("rdp", dp_accounting.rdp.RdpAccountant),
                             ("pld", dp_accounting.pld.PLDAccountant)):  # fmt: skip
        reference = accountant()
        reference.compose(event, count=steps)  # composed by count, not a SelfComposedDpEvent
        expected = reference.get_epsilon(delta)
        assert privacy.epsilon(sigma, q, steps, delta, name) == pytest.approx(expected, rel=1e-9)
    # Abadi et al. report about 2 for this setting (moments accountant); TF Privacy's older RDP
    # conversion about 3; dp_accounting's RDP about 2.6, and PLD is tighter.
    rdp, pld = (privacy.epsilon(sigma, q, steps, delta, name) for name in ("rdp", "pld"))
    assert 2.0 < pld < rdp < 3.1
    assert privacy.epsilon(sigma, q, 0, delta, "rdp") == 0.0
    assert privacy.epsilon(sigma, q, steps // 2, delta, "rdp") < rdp


def test_the_solved_noise_multiplier_reaches_the_target_without_exceeding_it():
    q, steps, delta, accountant = 0.01, 1000, 1e-5, "rdp"
    sigma = privacy.noise_multiplier_for(3.0, q, steps, delta, accountant)
    spent = privacy.epsilon(sigma, q, steps, delta, accountant)
    assert 2.99 < spent <= 3.0
    assert privacy.epsilon(sigma * 0.99, q, steps, delta, accountant) > 3.0  # the smallest


def test_plan_resolves_delta_and_the_noise(tiny):
    config = _private(tiny("ct_cnn"), target_epsilon=4.0)
    plan = privacy.plan(config, 96)
    assert plan.delta == pytest.approx(1 / 960) and plan.sampling_rate == pytest.approx(16 / 96)
    assert 3.99 < plan.epsilon(config.trainer.num_train_steps) <= 4.0
    config.privacy.update(target_epsilon=0.0, noise_multiplier=2.0, delta=1e-4)
    plan = privacy.plan(config, 96)
    assert plan.noise_multiplier == 2.0 and plan.delta == 1e-4
    config.privacy.accountant = "moments"
    with pytest.raises(ConfigError, match="privacy.accountant='moments'; valid: rdp, pld"):
        privacy.plan(config, 96)


# Poisson sampling.


def test_poisson_batches_have_the_expected_size_and_are_a_function_of_seed_and_step():
    n, rate, max_size, steps = 1000, 0.05, 90, 2000
    counts = []
    for step in range(steps):
        indices, valid = pipeline.poisson_sample(n, rate=rate, max_size=max_size, seed=3, step=step)
        chosen = indices[valid]
        assert len(set(chosen)) == len(chosen) and valid[: len(chosen)].all()
        counts.append(valid.sum())
    # Binomial(1000, 0.05): mean 50, sd 6.9; the mean of 2000 steps has sd 0.15.
    assert abs(np.mean(counts) - n * rate) < 5 * np.sqrt(n * rate * (1 - rate) / steps)
    assert abs(np.std(counts) - np.sqrt(n * rate * (1 - rate))) < 0.5
    again = pipeline.poisson_sample(n, rate=rate, max_size=max_size, seed=3, step=7)
    first = pipeline.poisson_sample(n, rate=rate, max_size=max_size, seed=3, step=7)
    np.testing.assert_array_equal(again[0], first[0])
    other = pipeline.poisson_sample(n, rate=rate, max_size=max_size, seed=4, step=7)
    assert not np.array_equal(other[0], first[0])
    # A sample over the maximum is truncated to it.
    indices, valid = pipeline.poisson_sample(n, rate=0.5, max_size=90, seed=3, step=0)
    assert valid.all() and len(set(indices)) == 90


def test_the_maximum_batch_size_makes_truncation_negligible():
    from scipy import stats

    size = privacy.max_batch_size(64, 6000)
    assert stats.binom.sf(size, 6000, 64 / 6000) <= privacy.TRUNCATION_PROBABILITY
    assert stats.binom.sf(size - 1, 6000, 64 / 6000) > privacy.TRUNCATION_PROBABILITY
    assert privacy.max_batch_size(64, 6000, multiple_of=16) % 16 == 0


def test_poisson_training_batches_resume_exactly():
    labels = np.zeros(200, np.int32)

    def load(index, seed):
        return {"index": index, "seed": seed}

    def batches(start):
        return pipeline.train_batches(labels, load, global_batch_size=20, seed=0,
                                      start_step=start, balanced=False, process_index=0,
                                      process_count=1, poisson_max_size=48)  # fmt: skip

    straight = [next(it) for it in [batches(0)] for _ in range(5)]
    resumed = next(batches(3))
    for key in ("index", "seed", "valid"):
        np.testing.assert_array_equal(resumed[key], straight[3][key])
    assert all(b["valid"].shape == (48,) for b in straight)
    assert 5 < np.mean([b["valid"].sum() for b in straight]) < 40


# Refusals.


def test_refuses_batch_norm_and_what_privacy_does_not_support(tiny, tmp_path):
    config = tiny("ct_cnn")
    config.privacy.enabled = True
    with pytest.raises(ConfigError, match="batch-norm model.*--config.model.norm=group"):
        train.train_and_evaluate(config, str(tmp_path))
    config.model.norm = "group"
    for key, value, message in [
        ("parallel", "pmap", "parallel='pmap' is not supported"),
        ("trainer.accumulation_steps", 2, "accumulation_steps > 1 is not supported"),
        ("data.balanced_sampling", True, "balanced_sampling: oversampling breaks"),
    ]:
        changed = config.copy_and_resolve_references()
        section, _, name = key.rpartition(".")
        (changed[section] if section else changed)[name] = value
        with pytest.raises(ConfigError, match=message):
            train.train_and_evaluate(changed, str(tmp_path))
    assert not os.listdir(tmp_path)


def test_refuses_to_resume_a_private_run_with_other_privacy_settings():
    saved = checks.check_privacy_unchanged(None, _plan(16, noise=1.0), "runs/x")
    assert saved["noise_multiplier"] == 1.0
    assert checks.check_privacy_unchanged(saved, _plan(16, noise=1.0), "runs/x") == saved
    with pytest.raises(ConfigError, match="trained privately with .* accounting wrong"):
        checks.check_privacy_unchanged(saved, _plan(16, noise=0.9), "runs/x")
    with pytest.raises(ConfigError, match="sampling_rate"):
        checks.check_privacy_unchanged(saved, _plan(32, noise=1.0), "runs/x")


# End to end.


@pytest.mark.slow
def test_a_tiny_private_run_logs_epsilon_and_writes_privacy_json(tiny, tmp_path):
    config = _private(tiny("ct_cnn", image_shape=(16, 16)), noise_multiplier=1.0,
                      microbatch_size=8)  # fmt: skip
    train.train_and_evaluate(config, str(tmp_path))
    with open(tmp_path / "metrics.jsonl") as f:
        lines = [json.loads(line) for line in f]
    train_lines = [line for line in lines if line["split"] == "train"]
    epsilons = [line["epsilon"] for line in train_lines]
    assert [line["step"] for line in train_lines] == [2, 4, 6]
    assert all(0 < a < b for a, b in zip(epsilons, epsilons[1:]))
    assert all(0 <= line["clipped_fraction"] <= 1 for line in train_lines)
    with open(tmp_path / "privacy.json") as f:
        spent = json.load(f)
    q, delta = 16 / 96, 1 / 960
    reference = dp_accounting.rdp.RdpAccountant()
    reference.compose(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(1.0)), count=6
    )
    assert spent["epsilon"] == pytest.approx(reference.get_epsilon(delta), rel=1e-9)
    assert spent["epsilon"] == epsilons[-1]
    # The truncation's share of delta: 6 steps' Binomial(97, q) tails beyond the padded size.
    tail = sum(math.comb(97, k) * q**k * (1 - q) ** (97 - k)
               for k in range(spent["max_batch_size"] + 1, 98))  # fmt: skip
    assert spent["truncation_probability"] == pytest.approx(6 * tail, rel=1e-6)
    assert 0 < spent["truncation_probability"] < 1e-10
    assert spent["delta_with_truncation"] == pytest.approx(
        delta + (1 + math.exp(spent["epsilon"])) * 6 * tail, rel=1e-9
    )
    assert spent | {"epsilon": 0, "truncation_probability": 0, "delta_with_truncation": 0} == {
        "epsilon": 0, "delta": delta, "steps": 6, "noise_multiplier": 1.0, "sampling_rate": q,
        "l2_norm_clip": 1.0, "expected_batch_size": 16, "max_batch_size": spent["max_batch_size"],
        "dataset_size": 96, "accountant": "rdp", "target_epsilon": 0.0,
        "truncation_probability": 0, "delta_with_truncation": 0,
    }  # fmt: skip
    assert spent["max_batch_size"] % 8 == 0 and spent["max_batch_size"] >= 16
    assert lines[-1]["split"] == "test" and 0 <= lines[-1]["auroc"] <= 1


@pytest.mark.slow  # a step of the VAE task, end to end
def test_the_vae_task_takes_private_steps(tiny):  # the RNN's: the noise test above
    config = _private(tiny("ct_vae", image_shape=(16, 16)), noise_multiplier=1.0,
                      microbatch_size=8)  # fmt: skip
    config.model.widths = (8, 16)
    task = build_task(config)
    state = _state(task, config)
    batch = next(task.train_batches(0))
    plan = privacy.plan(config, task.split_sizes()["train"])
    assert batch["valid"].shape == (plan.max_batch_size,) and 0 < batch["valid"].sum()
    new, scalars = steps.train_step(state, batch, task=task, plan=plan)
    assert np.isfinite(scalars["loss"]) and not scalars["nonfinite"]
    assert int(new.step) == 1
