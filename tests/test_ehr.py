"""The ICU time-series task: data preparation, loss masking, end to end."""

import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import ehr_rnn
from medjax import train
from medjax.data import dataset, icu_series, physionet2012, synthetic_icu
from medjax.errors import ConfigError
from medjax.tasks import build_task

SHARED_DATA = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data")


def test_normalisation_is_fitted_on_training_stays_only(tiny):
    data = icu_series.load(tiny("ehr_rnn").data)
    train_split, test_split = data.splits["train"], data.splits["test"]
    observed = train_split["mask"] > 0
    seen = observed.sum((0, 1)) > 1  # the synthetic cohort measures 14 of the 37 variables
    values = np.where(observed, train_split["values"], np.nan)[..., seen]
    # Exactly standardised on the training split, and not on the test split: statistics fitted
    # on all splits would leave the training mean off zero.
    np.testing.assert_allclose(np.nanmean(values, (0, 1)), 0, atol=1e-4)
    np.testing.assert_allclose(np.nanstd(values, (0, 1)), 1, atol=1e-3)
    test_values = np.where(test_split["mask"] > 0, test_split["values"], np.nan)[..., seen]
    assert np.abs(np.nanmean(test_values, (0, 1))).max() > 1e-3
    assert np.all(train_split["values"][~observed] == 0)  # zero imputation


def test_forward_fill_closed_form():
    values = np.array([[[0.0], [2.0], [0.0], [0.0], [5.0], [0.0]]], np.float32)
    mask = np.array([[[0], [1], [0], [0], [1], [0]]], np.float32)
    filled = icu_series._forward_fill(values, mask)
    np.testing.assert_array_equal(filled[0, :, 0], [0, 2, 2, 2, 5, 5])


def test_stratified_split_is_disjoint_and_keeps_the_death_rate():
    labels = np.array([1] * 100 + [0] * 900)
    test, val, rest = dataset.stratified_split(labels, (0.2, 0.15), np.random.default_rng(0))
    assert len(test) == 200 and len(val) == 150 and len(rest) == 650
    assert not set(test) & set(val) and not (set(test) | set(val)) & set(rest)
    assert sorted(np.concatenate([test, val, rest])) == list(range(1000))
    for part in (test, val, rest):
        assert labels[part].mean() == pytest.approx(0.1)


def test_per_step_loss_ignores_padded_steps(tiny):
    config = tiny("ehr_rnn")
    config.loss.per_step_weight = 0.5
    task = build_task(config)
    rng = np.random.default_rng(0)
    batch = {"label": np.array([1, 0]), "lengths": np.array([3, 6])}
    logits, steps = jnp.asarray(rng.normal(size=(2, 1))), jnp.asarray(rng.normal(size=(2, 6, 1)))

    def loss(step_logits):
        return task.loss_fn({"logits": logits, "step_logits": step_logits}, batch, 0)

    grads = jax.grad(loss)(steps)
    np.testing.assert_array_equal(grads[0, 3:], 0)  # padded steps of the first stay
    assert np.all(grads[0, :3] != 0) and np.all(grads[1] != 0)
    garbage = steps.at[0, 3:].set(1e3)
    assert loss(garbage) == loss(steps)


def test_bad_ehr_config(tiny):
    config = tiny("ehr_rnn")
    config.data.imputation = "median"
    with pytest.raises(ConfigError, match="unknown data.imputation 'median'"):
        build_task(config)
    config = tiny("ehr_rnn")
    config.data.name = "physionet2012"
    with pytest.raises(ConfigError, match="needs --config.data.dir"):
        build_task(config)


@pytest.mark.slow
def test_ehr_rnn_end_to_end(tiny, tmp_path):
    config = tiny("ehr_rnn")
    config.explain.update(num_examples=2, ig_steps=4)
    metrics = train.train_and_evaluate(config, str(tmp_path))
    assert 0 <= metrics["auroc"] <= 1 and 0 <= metrics["min_se_ppv_oracle"] <= 1
    with open(tmp_path / "metrics.jsonl") as f:
        test = [json.loads(line) for line in f][-1]
    assert test["split"] == "test" and test["auroc_low"] <= test["auroc_high"]
    # The challenge's score at val's threshold can reach the test split's oracle, not pass it.
    assert 0 <= test["min_se_ppv"] <= test["min_se_ppv_oracle"] and "min_se_ppv_threshold" in test
    assert test["temperature"] > 0 and "operating_sensitivity_low" in test
    assert (tmp_path / "plots" / "calibration.png").stat().st_size > 0
    with open(tmp_path / "predictions" / "test.csv") as f:
        predictions = list(csv.DictReader(f))
    assert len(predictions) == 48
    with open(tmp_path / "subgroups.csv") as f:
        rows = list(csv.DictReader(f))
    for grouping in ("age", "sex", "icu_type"):  # the synthetic cohort records all three
        group_rows = [r for r in rows if r["grouping"] == grouping]
        assert sum(int(r["n"]) for r in group_rows) == 48, grouping
        positives = sum(int(r["label"]) for r in predictions)
        assert sum(int(r["positives"]) for r in group_rows) == positives, grouping
    plots = {p.name for p in (tmp_path / "plots").iterdir()}
    assert {"integrated_gradients_test_variables.png"} <= plots
    assert sum(p.startswith("integrated_gradients_test_patient_") for p in plots) == 2

    # --mode=predict on data with another training split: the same test stays get the same
    # scores, normalised with the statistics of the training run's data, not the new data's.
    smaller = config.copy_and_resolve_references()
    smaller.data.num_train = 50
    assert not np.array_equal(
        icu_series.load(smaller.data).splits["test"]["values"],
        icu_series.load(config.data).splits["test"]["values"],
    )
    with open(train.predict(smaller, str(tmp_path))) as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 50 + 40 + 48
    assert [{k: v for k, v in r.items() if k != "split"} for r in rows[-48:]] == predictions


@pytest.mark.slow  # reads the real sets
@pytest.mark.skipif(not os.path.isdir(SHARED_DATA), reason="../shared/data is absent")
def test_physionet_set_a_split():
    config = ehr_rnn.get_config()
    config.data.name = "physionet2012"
    config.data.dir = os.path.join(SHARED_DATA, "physionet2012")
    data = icu_series.load(config.data)
    sizes = {k: len(v["labels"]) for k, v in data.splits.items()}
    assert sum(sizes.values()) == 4000
    assert sizes["test"] == pytest.approx(0.2 * 4000, abs=2)
    ids = [set(v["ids"]) for v in data.splits.values()]
    assert not (ids[0] & ids[1] or ids[0] & ids[2] or ids[1] & ids[2])
    for split in data.splits.values():
        assert split["labels"].mean() == pytest.approx(554 / 4000, abs=0.01)
        assert split["values"].shape[1:] == (48, len(physionet2012.VARIABLES))


class TestSyntheticICU:
    def test_deterministic_and_splits_differ(self):
        a, labels_a = synthetic_icu.generate(30, seed=0, split="train")
        b, labels_b = synthetic_icu.generate(30, seed=0, split="train")
        c, _ = synthetic_icu.generate(30, seed=0, split="test")
        np.testing.assert_array_equal(labels_a, labels_b)
        for x, y, z in zip(a, b, c):
            np.testing.assert_array_equal(x.values, y.values)
            assert not np.array_equal(x.values, z.values)
            assert np.all(np.diff(x.times) >= 0) and x.times.max() < 48

    def test_deaths_are_measured_more_often(self):
        # Informative missingness: severity raises both the risk and the measurement rate.
        records, labels = synthetic_icu.generate(600, seed=0, split="train")
        counts = np.array([len(r.times) for r in records])
        assert 0.08 < labels.mean() < 0.3
        assert counts[labels == 1].mean() > 1.2 * counts[labels == 0].mean()
