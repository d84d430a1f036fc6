"""Reliability in one process: the non-finite guard, the config fingerprint stored with
checkpoints, a metrics line cut short. Killed and preempted runs: test_crash_resume.py."""

import dataclasses
import json
import os
import pathlib

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from medjax import tasks, train
from medjax.errors import ConfigError, NonFiniteError
from medjax.outputs import writers
from medjax.train import loop


def _nan_at_step(monkeypatch, bad_step):
    """Makes the training loss NaN at the step whose state.step is `bad_step`; returns the
    list of tasks built so, for the test to check that the loop used them."""
    build, built = tasks.build_task, []

    def build_with_nan(config):
        task = build(config)
        built.append(task)
        loss_fn = task.loss_fn

        def nan_loss(outputs, batch, step):
            return jnp.where(step == bad_step, jnp.nan, loss_fn(outputs, batch, step))

        return dataclasses.replace(task, loss_fn=nan_loss)

    monkeypatch.setattr(loop, "build_task", build_with_nan)
    return built


def _restore_params(workdir, step):
    path = os.path.join(workdir, "checkpoints", "latest", str(step), "state")
    return ocp.tree.to_flat_dict(ocp.StandardCheckpointer().restore(path)["params"])


@pytest.mark.slow
def test_nonfinite_loss_stops_at_its_step_and_keeps_the_last_good_checkpoint(
    tiny_config, tmp_path, monkeypatch
):
    built = _nan_at_step(monkeypatch, 4)  # the fifth step, logged as step 5
    with pytest.raises(
        NonFiniteError, match="not finite at step 5; .* latest checkpoint \\(step 3\\)"
    ):
        train.train_and_evaluate(tiny_config, str(tmp_path))
    assert len(built) == 1
    assert sorted(os.listdir(tmp_path / "checkpoints" / "latest")) == ["3"]


@pytest.mark.slow
def test_nonfinite_loss_skips_the_update_when_asked(tiny_config, tmp_path, monkeypatch):
    built = _nan_at_step(monkeypatch, 4)
    tiny_config.trainer.on_nonfinite = "skip"
    tiny_config.trainer.checkpoint_every_steps = 1
    tiny_config.trainer.max_checkpoints_to_keep = 10
    train.train_and_evaluate(tiny_config, str(tmp_path))
    assert len(built) == 1
    params = {step: _restore_params(tmp_path, step) for step in (4, 5, 6)}
    for key in params[4]:
        np.testing.assert_array_equal(params[5][key], params[4][key])  # step 5 skipped
    assert any(not np.array_equal(params[6][k], params[5][k]) for k in params[4])
    with open(tmp_path / "metrics.jsonl") as f:
        train_lines = [json.loads(line) for line in f if '"split": "train"' in line]
    assert [line["skipped_steps"] for line in train_lines] == [0, 0, 1]
    assert all(np.isfinite(line["loss"]) for line in train_lines)


@pytest.mark.slow
def test_resuming_with_a_config_that_changes_results_is_refused(finished_tiny_run):
    config, workdir = finished_tiny_run[:2]
    config.explain.num_examples = 0  # result-neutral, and quicker to evaluate
    names = ("config.json", "metrics.jsonl")
    before = {name: pathlib.Path(workdir, name).read_bytes() for name in names}

    changed = config.copy_and_resolve_references()
    changed.optimizer.learning_rate = 0.01
    changed.data.seed = 1
    with pytest.raises(ConfigError) as refused:
        train.train_and_evaluate(changed, workdir)
    message = str(refused.value)
    assert "data.seed: 0 -> 1; optimizer.learning_rate: 0.003 -> 0.01; the data (fingerprint" in (
        message
    )
    assert "--allow_config_change" in message
    assert before == {name: pathlib.Path(workdir, name).read_bytes() for name in names}

    neutral = config.copy_and_resolve_references()
    neutral.trainer.log_every_steps = 1  # changes no result
    train.train_and_evaluate(neutral, workdir)
    train.train_and_evaluate(changed, workdir, allow_config_change=True)


def test_evaluate_and_explain_compare_only_the_model_and_input_keys(finished_tiny_run):
    """A training-only change (more steps, another learning rate) is the run's own model; a
    change of the model or of how images become its input is refused, naming the key."""
    config, workdir = finished_tiny_run[:2]
    config.explain.update(num_examples=1, smoothgrad_samples=2, ig_steps=2)
    config.trainer.num_train_steps = 800
    config.optimizer.learning_rate = 0.01
    train.evaluate(config, workdir, split="val")
    train.explain(config, workdir, split="val")
    config.data.window_width = 1000.0
    for run in (train.evaluate, train.explain):
        with pytest.raises(ConfigError, match="its model or inputs would differ: "
                           "data.window_width: 1500.0 -> 1000.0. Use a new"):  # fmt: skip
            run(config, workdir, split="val")


@pytest.mark.slow
def test_a_checkpoint_of_another_model_names_the_shapes(finished_tiny_run):
    config, workdir = finished_tiny_run[:2]
    config.model.width = 0.25
    with pytest.raises(ConfigError) as refused:
        train.train_and_evaluate(config, workdir, allow_config_change=True)
    message = str(refused.value)
    assert "holds a different model: params/head/kernel: checkpoint (64, 2), config (128, 2)" in (
        message
    )
    assert message.endswith("train this config in a new --workdir")


def test_a_metrics_line_cut_short_by_a_crash_is_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "split": "train", "time": 1.5}\n{"step": 2, "spl')
    assert writers.keep_metrics_up_to(str(path), 5) == 1.5
    assert path.read_text() == '{"step": 1, "split": "train", "time": 1.5}\n'
