import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medjax import checkpoint
from medjax.errors import ConfigError
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


def _steps(folder):
    return sorted(int(name) for name in os.listdir(folder))


@pytest.mark.parametrize("keep", [1, 3])
def test_more_saves_than_kept_leave_exactly_the_latest(tmp_path, keep):
    ckpts = checkpoint.Checkpoints(str(tmp_path), max_to_keep=keep)
    for step in range(1, 6):
        ckpts.save_latest(step, _state(step), {"finished": False})
        assert _steps(tmp_path / "latest") == list(range(max(1, step - keep + 1), step + 1))
    ckpts.close()
    # A resumed run prunes what it finds on disk as it goes on saving.
    ckpts = checkpoint.Checkpoints(str(tmp_path), max_to_keep=keep)
    assert ckpts.latest_step() == 5
    ckpts.save_latest(8, _state(8), {"finished": True})
    restored, progress = ckpts.restore_latest(jax.eval_shape(lambda: _state(0)))
    ckpts.close()
    assert _steps(tmp_path / "latest") == [3, 4, 5, 8][-keep:]
    _assert_equal(restored, _state(8))
    assert progress == {"finished": True}


def test_best_keeps_only_the_last_saved(tmp_path):
    # The trainer saves a best checkpoint only on improvement: the newest is the best.
    ckpts = checkpoint.Checkpoints(str(tmp_path), max_to_keep=2)
    for step, metric in ((2, 0.6), (4, 0.7), (6, 0.9)):
        ckpts.save_best(step, _state(step), {"best_metric": metric})
    best, progress = ckpts.restore_best(jax.eval_shape(lambda: _state(0)))
    ckpts.close()
    assert _steps(tmp_path / "best") == [6]
    _assert_equal(best, _state(6))
    assert progress == {"best_metric": 0.9}
    assert not (tmp_path / "latest").exists() or _steps(tmp_path / "latest") == []


def test_keeping_no_checkpoint_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="max_checkpoints_to_keep=0: keep at least 1"):
        checkpoint.Checkpoints(str(tmp_path), max_to_keep=0)
    assert os.listdir(tmp_path) == []
