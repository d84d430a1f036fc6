import os

import jax
import jax.numpy as jnp
import numpy as np
import optax

from medjax import checkpoint
from medjax.train.state import TrainState

TX = optax.adam(1e-3)  # one optimiser object: the state's tree structure includes it


def _state(seed):
    params = {
        "dense": {
            "kernel": jax.random.normal(jax.random.key(seed), (3, 4)),
            "bias": jnp.arange(4.0) + seed,
        }
    }
    return TrainState.create(
        apply_fn=None,
        params=params,
        tx=TX,
        batch_stats={"norm": {"mean": jnp.full(4, float(seed))}},
        key_data=jax.random.key_data(jax.random.key(seed)),
    )


def _assert_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_latest_and_best(tmp_path):
    ckpts = checkpoint.Checkpoints(str(tmp_path), max_to_keep=2)
    assert ckpts.restore_latest(jax.eval_shape(lambda: _state(0))) is None
    states = {}
    for step in (1, 2, 3):
        state = _state(step).replace(step=step)
        state = state.apply_gradients(grads=jax.tree.map(jnp.ones_like, state.params))
        states[step] = state
        ckpts.save_latest(step, state, {"best_step": 1, "finished": step == 3})
    ckpts.save_best(1, states[1], {"best_metric": 0.5})
    abstract = jax.eval_shape(lambda: _state(0))
    restored, progress = ckpts.restore_latest(abstract)
    _assert_equal(restored, states[3])  # params, batch stats, optimiser state, step, rng
    assert progress == {"best_step": 1, "finished": True}
    best, best_progress = ckpts.restore_best(abstract)
    _assert_equal(best, states[1])
    assert best_progress == {"best_metric": 0.5}
    ckpts.close()
    assert sorted(os.listdir(tmp_path / "latest")) == ["2", "3"]  # the latest two are kept


def test_an_interrupted_save_is_ignored(tmp_path):
    ckpts = checkpoint.Checkpoints(str(tmp_path), max_to_keep=3)
    ckpts.save_latest(5, _state(5), {"finished": False})
    ckpts.close()
    # A save killed midway leaves its temporary folder behind, never a step folder.
    partial = tmp_path / "latest" / "8.orbax-checkpoint-tmp-1234"
    partial.mkdir()
    (partial / "garbage").write_bytes(b"\0" * 10)
    ckpts = checkpoint.Checkpoints(str(tmp_path), max_to_keep=3)
    restored, _ = ckpts.restore_latest(jax.eval_shape(lambda: _state(0)))
    _assert_equal(restored, _state(5))
    ckpts.close()


def test_relative_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ckpts = checkpoint.Checkpoints("runs/x/checkpoints", max_to_keep=1)
    ckpts.save_latest(1, _state(1), {"finished": False})
    restored, _ = ckpts.restore_latest(jax.eval_shape(lambda: _state(0)))
    _assert_equal(restored, _state(1))
    ckpts.close()
    assert os.listdir(tmp_path / "runs" / "x" / "checkpoints" / "latest") == ["1"]
