"""K-fold cross-validation by patient: the folds, the refusals, and experiments/crossval.py."""

import csv
import json
import os
import runpy

import ml_collections
import numpy as np
import pytest

from medjax.data import dataset, icu_series
from medjax.data.ct_folder import Row, assign_splits
from medjax.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _data(num_folds, fold, seed=0, val_fraction=0.2):
    return ml_collections.ConfigDict(
        {"num_folds": num_folds, "fold": fold, "seed": seed, "val_fraction": val_fraction}
    )


def test_folds_partition_the_patients_within_each_class():
    labels = np.random.default_rng(0).choice(3, 203, p=[0.6, 0.3, 0.1])
    k = 5
    splits = [dataset.fold_split(labels, _data(k, fold)) for fold in range(k)]
    tests = [test for test, _, _ in splits]
    assert sorted(np.concatenate(tests).tolist()) == list(range(labels.size))  # each once
    for test, val, train in splits:
        assert set(test).isdisjoint(val) and set(test).isdisjoint(train)
        assert set(val).isdisjoint(train) and len(test) + len(val) + len(train) == labels.size
        for label in range(3):  # stratified: each fold holds 1/K of each class, +-1 patient
            assert abs(np.sum(labels[test] == label) - np.sum(labels == label) / k) < 1
        assert abs(len(val) - 0.2 * (labels.size - len(test))) <= 3
    again = dataset.fold_split(labels, _data(k, 2))
    assert all(np.array_equal(a, b) for a, b in zip(again, splits[2]))  # seeded
    other_seed = dataset.fold_split(labels, _data(k, 2, seed=1))[0]
    assert not np.array_equal(other_seed, splits[2][0])


def test_a_patients_scans_stay_in_one_fold():
    rows = [Row(f"scan{i}", int(i % 7 == 0), f"patient{i // 3}", "") for i in range(90)]
    patient_of = np.array([r.patient_id for r in rows])
    tested = []
    for fold in range(3):
        splits = assign_splits(rows, data=_data(3, fold), labels_path="labels.csv")
        for name, members in splits.items():
            others = np.concatenate([m for n, m in splits.items() if n != name])
            assert set(patient_of[members]).isdisjoint(patient_of[others]), name
        tested.append(splits["test"])
    assert sorted(np.concatenate(tested).tolist()) == list(range(90))


def test_bad_fold_settings_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="data.num_folds=1, data.fold=0: use num_folds >= 2"):
        dataset.folds_enabled(_data(1, 0))
    with pytest.raises(ConfigError, match="data.num_folds=3, data.fold=3"):
        dataset.folds_enabled(_data(3, 3))
    with pytest.raises(ConfigError, match=r"at least that many patients of each class; .*\[8, 2\]"):
        dataset.fold_split(np.r_[np.zeros(8, int), np.ones(2, int)], _data(3, 0))
    rows = [Row("a", 0, "p", "train"), Row("b", 1, "q", "test")]
    with pytest.raises(ConfigError, match="has a split column, and data.num_folds=2"):
        assign_splits(rows, data=_data(2, 0), labels_path="labels.csv")

    from medjax.settings import defaults

    config = defaults.get_config()
    config.data.update(num_folds=3, name="physionet2012", test_set="c")
    with pytest.raises(ConfigError, match="cross-validates over data.train_sets='a', each fold"):
        icu_series.load(config.data)


def test_ehr_normalisation_is_fitted_on_the_training_fold_only(tiny):
    config = tiny("ehr_rnn").data
    config.update(num_folds=4, fold=1)
    splits = icu_series.load(config).splits
    assert sum(len(s["labels"]) for s in splits.values()) == 96 + 40 + 48
    for name, arrays in splits.items():
        observed = arrays["mask"] > 0
        counts = observed.sum(axis=(0, 1))
        means = np.where(observed, arrays["values"], 0).sum(axis=(0, 1)) / np.maximum(counts, 1)
        seen = counts > 50
        if name == "train":  # standardised with its own statistics: mean 0 per variable
            np.testing.assert_allclose(means[seen], 0, atol=1e-4)
        else:  # standardised with the training fold's statistics, not its own
            assert np.max(np.abs(means[seen])) > 1e-3, name


@pytest.mark.slow
def test_crossval_runs_every_fold_and_summarises_them(tiny, tmp_path):
    cross_validate = runpy.run_path(os.path.join(REPO, "experiments", "crossval.py"))[
        "cross_validate"
    ]
    config = tiny("ehr_rnn", steps=3)
    summary = cross_validate(config, str(tmp_path), 2)
    assert summary["num_folds"] == 2 and len(summary["folds"]) == 2
    tested = []
    for fold in range(2):
        with open(tmp_path / f"fold{fold}" / "metrics.jsonl") as f:
            test_line = [json.loads(line) for line in f][-1]
        assert test_line["split"] == "test"
        assert summary["folds"][fold]["auroc"] == test_line["auroc"]
        with open(tmp_path / f"fold{fold}" / "predictions" / "test.csv") as f:
            tested.append({row["id"] for row in csv.DictReader(f)})
    assert tested[0].isdisjoint(tested[1]) and len(tested[0] | tested[1]) == 96 + 40 + 48
    aurocs = [fold["auroc"] for fold in summary["folds"]]
    assert summary["mean"]["auroc"] == pytest.approx(np.mean(aurocs))
    assert summary["sd"]["auroc"] == pytest.approx(np.std(aurocs, ddof=1))
    # 2 folds: t with 1 degree of freedom is Cauchy, its 97.5% quantile tan(0.475 pi).
    half = np.tan(0.475 * np.pi) * np.std(aurocs, ddof=1) / np.sqrt(2)
    assert summary["interval"]["auroc"] == pytest.approx(
        [np.mean(aurocs) - half, np.mean(aurocs) + half]
    )
    assert json.loads((tmp_path / "crossval.json").read_text())["mean"] == summary["mean"]
    table = (tmp_path / "crossval.md").read_text()
    assert f"{summary['mean']['auroc']:.4f} ± {summary['sd']['auroc']:.4f}" in table
