"""End to end: each config for a few steps on tiny data, resume, rerun, overfitting."""

import csv
import glob
import json
import os

import jax
import numpy as np
import pytest

from medjax import checkpoint, explain, models, optim, parallel, train
from medjax.errors import ConfigError
from medjax.tasks import build_task
from medjax.train import run_config, steps
from medjax.train.state import abstract_train_state, create_train_state

EXPLANATIONS = [f"{method}_test" for method in explain.IMAGE_METHODS]


def _lines(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _latest_params(workdir, config):
    task = build_task(config)
    tx, _ = optim.create_optimizer(config.optimizer, config.trainer.num_train_steps)
    mesh = parallel.data_mesh()
    abstract = abstract_train_state(task, tx, mesh, config.trainer.ema_decay)
    ckpts = checkpoint.Checkpoints(os.path.join(workdir, "checkpoints"), max_to_keep=2)
    state, progress = ckpts.restore_latest(abstract)
    ckpts.close()
    return state, progress


@pytest.mark.slow
def test_ct_cnn_end_to_end_writes_the_workdir_contract(finished_tiny_run):
    tiny_config, workdir, test_metrics = finished_tiny_run[:3]

    lines = _lines(workdir)
    val = [line for line in lines if line["split"] == "val"]
    assert [line["step"] for line in val] == [3, 6]
    assert all(0 <= line["auroc"] <= 1 for line in val)
    assert lines[-1]["split"] == "test" and lines[-1]["auroc"] == test_metrics["auroc"]
    for name in ("auroc", "auprc", "accuracy", "sensitivity", "specificity"):  # 95% intervals
        assert lines[-1][f"{name}_low"] <= lines[-1][f"{name}_high"], name
    train_lines = [line for line in lines if line["split"] == "train"]
    assert {"loss", "l2_grads", "l2_params", "learning_rate"} <= set(train_lines[0])
    assert all(np.isfinite(line["loss"]) for line in train_lines)

    for name in ("config.json", "report.md", "plots/roc.png", "plots/confusion_matrix.png"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    assert glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["name"] == "resnet10"
    with open(os.path.join(workdir, "predictions", "test.csv")) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 48 and len({r["id"] for r in rows}) == 48  # padding dropped
    probs = np.array([[float(r["prob_0"]), float(r["prob_1"])] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    with open(os.path.join(workdir, "report.md")) as f:
        report = f.read()
    assert f"{test_metrics['auroc']:.4f}" in report and "plots/roc.png" in report
    low, high = lines[-1]["auroc_low"], lines[-1]["auroc_high"]
    assert f"| auroc | {test_metrics['auroc']:.4f} | [{low:.4f}, {high:.4f}] |" in report
    # Operating point (chosen on val) and calibration, with intervals, in the line and report.
    test = lines[-1]
    for name in ("sensitivity", "specificity", "ppv", "npv"):
        value, low, high = (test[f"operating_{name}{end}"] for end in ("", "_low", "_high"))
        assert low <= value <= high, name
        assert f"| {name} | {value:.4f} | [{low:.4f}, {high:.4f}] |" in report
    assert test["temperature"] > 0 and test["calibrated_ece_low"] <= test["calibrated_ece_high"]
    assert test["ece_low"] <= test["ece"] <= test["ece_high"]
    assert "## Operating point" in report and "T = " in report
    assert f"maximises it on val: {test['min_se_ppv']:.4f}." in report
    for name in ("calibration", "curves", *EXPLANATIONS):
        assert os.path.getsize(os.path.join(workdir, "plots", f"{name}.png")) > 0
        assert f"(plots/{name}.png)" in report

    # --mode=evaluate on another split: its metrics, predictions and report; metrics.jsonl kept.
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        history = f.read()
    best_step = int(test["step"])
    val_metrics = train.evaluate(tiny_config, workdir, split="val")
    best_val = next(line for line in val if line["step"] == best_step)
    assert val_metrics["auroc"] == pytest.approx(best_val["auroc"], abs=1e-12)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert f.read() == history
    with open(os.path.join(workdir, "predictions", "val.csv")) as f:
        assert len(list(csv.DictReader(f))) == 40
    with open(os.path.join(workdir, "report.md")) as f:
        report = f.read()
    assert "on the val split" in report and "in-sample" in report
    assert f"| val | {val_metrics['accuracy']:.4f} |" in report

    # --mode=explain on another split writes that split's explanations, and nothing else.
    paths = train.explain(tiny_config, workdir, split="val")
    assert sorted(os.path.basename(p) for p in paths) == sorted(
        f"{method}_val.png" for method in explain.IMAGE_METHODS
    )
    assert all(os.path.getsize(p) > 0 for p in paths)
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        assert f.read() == history

    # --mode=predict: every split of the data the config names, scored by the best checkpoint.
    with open(os.path.join(workdir, "predictions", "test.csv")) as f:
        test_rows = list(csv.DictReader(f))
    path = train.predict(tiny_config, workdir)
    assert os.path.basename(path) == "synthetic_ct.csv"
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert [r["split"] for r in rows] == ["train"] * 96 + ["val"] * 40 + ["test"] * 48
    assert [{k: v for k, v in r.items() if k != "split"} for r in rows[-48:]] == test_rows
    new_data = tiny_config.copy_and_resolve_references()
    new_data.data.seed = 7  # other synthetic patients
    with open(train.predict(new_data, workdir)) as f:
        new_rows = list(csv.DictReader(f))
    assert len(new_rows) == 184
    assert sum(a["prob_1"] != b["prob_1"] for a, b in zip(rows, new_rows)) > 180
    other_model = tiny_config.copy_and_resolve_references()
    other_model.model.width = 0.25
    with pytest.raises(ConfigError, match=r"other model or input settings: model.width: 0.125 ->"):
        train.predict(other_model, workdir)


def test_explain_refuses_a_task_without_explanations_and_a_missing_checkpoint(tiny, tmp_path):
    with pytest.raises(ConfigError, match="the vae task has no explanations"):
        train.explain(tiny("ct_vae"), str(tmp_path))
    with pytest.raises(ConfigError, match="no checkpoint in .*; train first"):
        train.explain(tiny("ct_cnn"), str(tmp_path))
    with pytest.raises(ConfigError, match="config.json: --workdir must hold a trained run"):
        train.predict(tiny("ct_cnn"), str(tmp_path))
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_ct_cnn3d_end_to_end(tiny, tmp_path):
    config = tiny("ct_cnn3d", image_shape=(16, 16, 16), steps=2)
    # The steps and batches of test_ct_folder.py's run of this model: one compilation for both.
    config.trainer.update(batch_size=4, eval_batch_size=4)
    metrics = train.train_and_evaluate(config, str(tmp_path))
    assert 0 <= metrics["auroc"] <= 1 and np.isfinite(metrics["loss"])
    assert [line["split"] for line in _lines(tmp_path)][-1] == "test"


@pytest.mark.slow
def test_resume_after_a_crash_is_exact(tiny, tmp_path, monkeypatch):
    # The ICU task's attention model here (the image task: test_crash_resume.py; GRU-D: the
    # ICU end-to-end test), with randomness in the step, which must resume exactly too.
    tiny_config = tiny("ehr_rnn")
    tiny_config.model = models.settings(
        "mtan", hidden_size=16, dropout_rate=0.3, observation_dropout=0.2, num_reference=8,
        time_features=8,
    )  # fmt: skip
    straight = str(tmp_path / "straight")
    expected = train.train_and_evaluate(tiny_config, straight)

    crashed = str(tmp_path / "crashed")
    real_step, calls = steps.train_step, []

    def crash_at_step_5(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(steps, "train_step", crash_at_step_5)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.train_and_evaluate(tiny_config, crashed)
    assert len(calls) == 5
    monkeypatch.setattr(steps, "train_step", real_step)
    assert _latest_params(crashed, tiny_config)[0].step == 3  # the checkpoint before the crash
    resumed = train.train_and_evaluate(tiny_config, crashed)

    assert resumed == expected
    a, b = _latest_params(straight, tiny_config)[0], _latest_params(crashed, tiny_config)[0]
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    # Lines after the checkpoint written before the crash were replaced, not duplicated.
    order = [(line["split"], line["step"]) for line in _lines(crashed)]
    assert order == [(line["split"], line["step"]) for line in _lines(straight)]


@pytest.mark.slow
def test_rerun_of_a_finished_run_only_evaluates(finished_tiny_run, monkeypatch):
    config, workdir, first, train_steps = finished_tiny_run
    # The same watch as below counted the steps that trained the run.
    assert train_steps == config.trainer.num_train_steps
    real_step, calls = steps.train_step, []

    def counted_step(*args, **kwargs):
        calls.append(1)
        return real_step(*args, **kwargs)

    monkeypatch.setattr(steps, "train_step", counted_step)
    assert train.train_and_evaluate(config, workdir) == first
    assert train.evaluate(config, workdir) == first
    assert not calls  # no step since
    assert [line["split"] for line in _lines(workdir)].count("test") == 1


@pytest.mark.slow
def test_early_stopping_and_best_checkpoint(tiny_config, tmp_path):
    tiny_config.trainer.num_train_steps = 30
    tiny_config.trainer.eval_every_steps = 1
    tiny_config.trainer.selection_metric = "loss"
    tiny_config.trainer.selection_mode = "min"
    tiny_config.trainer.early_stopping_patience = 2
    tiny_config.optimizer.learning_rate = 0.5  # far too high: validation loss soon worsens
    train.train_and_evaluate(tiny_config, str(tmp_path))
    val = [line for line in _lines(tmp_path) if line["split"] == "val"]
    assert len(val) < 30
    best = min(val, key=lambda line: line["loss"])
    assert [line["step"] for line in val][-1] == best["step"] + 2  # stopped after patience
    state, progress = _latest_params(str(tmp_path), tiny_config)
    assert progress["finished"] and progress["best_step"] == best["step"]
    test = _lines(tmp_path)[-1]
    assert test["split"] == "test" and test["step"] == best["step"]


@pytest.mark.slow
def test_overfits_a_tiny_batch(tiny_config):
    tiny_config.model.width = 0.25
    tiny_config.optimizer.update(learning_rate=3e-3, warmup_steps=1, weight_decay=0.0)
    task = build_task(tiny_config)
    tx, _ = optim.create_optimizer(tiny_config.optimizer, 100)
    state = create_train_state(task, tx, *jax.random.split(jax.random.key(0)))
    batch = next(task.train_batches(0))
    losses = []
    for _ in range(60):
        state, scalars = steps.train_step(state, batch, task=task)
        losses.append(float(scalars["loss"]))
    assert losses[-1] < 0.05 < losses[0]


def test_ema_follows_its_closed_form(tiny):
    config = tiny("ehr_rnn")  # the average does not depend on the model
    task = build_task(config)
    tx, _ = optim.create_optimizer(config.optimizer, 100)
    keys = jax.random.split(jax.random.key(0))
    state = create_train_state(task, tx, *keys, ema_decay=0.5)
    batches = task.train_batches(0)

    def flat(tree):
        return np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])

    expected = flat(state.params)
    for step in range(3):
        state, _ = steps.train_step(state, next(batches), task=task)
        decay = min(0.5, (1 + step) / (10 + step))
        expected = decay * expected + (1 - decay) * flat(state.params)
    np.testing.assert_allclose(flat(state.ema_params), expected, rtol=1e-5, atol=1e-7)
    assert not np.allclose(flat(state.ema_params), flat(state.params))
    assert state.eval_params is state.ema_params


@pytest.mark.slow
def test_ema_run_evaluates_and_resumes_the_average(tiny, tmp_path):
    tiny_config = tiny("ehr_rnn")  # the average does not depend on the model
    tiny_config.trainer.ema_decay = 0.9
    train.train_and_evaluate(tiny_config, str(tmp_path))
    state, progress = _latest_params(str(tmp_path), tiny_config)
    assert progress["finished"] and state.ema_params is not None


def test_a_key_added_after_a_run_counts_as_its_default(tiny_config):
    """A run written before model.conv3d existed resumes (and ensembles) as one with its default,
    and only then."""
    current = run_config.results_config(tiny_config)
    written_before = {k: v for k, v in current.items() if k != "model.conv3d"}
    assert run_config.config_changes(written_before, current) == []
    tiny_config.model.conv3d = "acs"
    changed = run_config.results_config(tiny_config)
    assert run_config.config_changes(written_before, changed) == ["model.conv3d: 'full' -> 'acs'"]
