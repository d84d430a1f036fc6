"""PhysioNet 2012 sets as training and test data: data.train_sets, data.test_set, folds."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
from test_physionet2012 import REAL_DIR, outcome_file, write_set

from configs import ehr_physionet
from medjax import train
from medjax.data import icu_series, physionet2012
from medjax.errors import ConfigError

FIRST_ID = {"a": 132000, "b": 142000, "c": 152000}  # disjoint, like the challenge's sets
SIZES = {"a": 40, "b": 40, "c": 12}
HR = physionet2012.VARIABLES.index("HR")


def set_ids(name):
    return set(range(FIRST_ID[name], FIRST_ID[name] + SIZES[name]))


def stay(record_id, extreme):
    hr, age = (290, 99) if extreme else (60 + record_id % 10 * 4, 40 + record_id % 7 * 5)
    return (
        f"Time,Parameter,Value\n00:00,RecordID,{record_id}\n00:00,Age,{age}\n00:00,Gender,1\n"
        f"00:00,Height,170\n00:00,ICUType,2\n00:00,Weight,70\n00:30,HR,{hr}\n03:30,HR,{hr + 10}\n"
    )


def write_sets(directory, extreme=()):
    """Sets a, b and c of SIZES stays, every fourth a death; the stays in `extreme` have an HR
    of 290 and an age of 99 (within PHYSIOLOGICAL_RANGES, far from the others)."""
    for name in SIZES:
        ids = sorted(set_ids(name))
        files = {f"{i}.txt": stay(i, i in extreme) for i in ids}
        labels = {i: int(i % 4 == 0) for i in ids}
        write_set(directory, set_name=name, files=files, outcomes=outcome_file(labels))
    return str(directory)


@pytest.fixture(scope="module")
def sets_dir(tmp_path_factory):
    return write_sets(tmp_path_factory.mktemp("sets"))


def physionet_data(directory, **overrides):
    data = ehr_physionet.get_config().data
    data.update(dir=directory, **overrides)
    return data


def split_ids(splits):
    return {name: {int(i) for i in split["ids"]} for name, split in splits.items()}


def test_union_of_training_sets_is_split_by_stay(sets_dir):
    data = icu_series.load(physionet_data(sets_dir, train_sets="a,b"))
    ids = split_ids(data.splits)
    assert sum(map(len, ids.values())) == 80  # each stay in one split
    assert set.union(*ids.values()) == set_ids("a") | set_ids("b")
    sizes = {name: len(split["labels"]) for name, split in data.splits.items()}
    assert sizes == {"test": 16, "val": 12, "train": 52}  # 20% and 15%, stratified
    for split in data.splits.values():
        assert split["labels"].mean() == 0.25  # as in the union
    assert "PhysioNet 2012 sets a+b from" in data.description
    assert "(test: held-out 20% of sets a+b): 52/12/16 train/val/test stays" in data.description
    again = icu_series.load(physionet_data(sets_dir, train_sets="b,a")).splits
    assert split_ids(again) == ids  # the same given data.seed, whatever the order of the names
    other_seed = icu_series.load(physionet_data(sets_dir, train_sets="a,b", seed=1)).splits
    assert split_ids(other_seed)["val"] != ids["val"]


def test_whole_set_as_test_set(sets_dir):
    data = icu_series.load(physionet_data(sets_dir, train_sets="a,b", test_set="c"))
    ids = split_ids(data.splits)
    assert ids["test"] == set_ids("c")
    assert ids["train"] | ids["val"] == set_ids("a") | set_ids("b")
    assert not ids["train"] & ids["val"] and len(ids["val"]) == 12
    assert "PhysioNet 2012 sets a+b from" in data.description
    assert "(test: set c): 68/12/12 train/val/test stays" in data.description


def test_folds_run_over_the_union_of_training_sets(sets_dir):
    tested = []
    for fold in range(4):
        data = physionet_data(sets_dir, train_sets="a,b", num_folds=4, fold=fold)
        ids = split_ids(icu_series.load(data).splits)
        assert set.union(*ids.values()) == set_ids("a") | set_ids("b")
        tested += ids["test"]
    assert sorted(tested) == sorted(set_ids("a") | set_ids("b"))


@pytest.mark.parametrize("test_set", ["", "c"])
def test_statistics_are_fitted_on_training_stays_only(tmp_path, monkeypatch, test_set):
    fitted = []  # the Normalizer of each load
    fit = icu_series.fit_normalizer

    def fit_and_record(train):
        fitted.append(fit(train))
        return fitted[-1]

    monkeypatch.setattr(icu_series, "fit_normalizer", fit_and_record)

    def load(directory):
        splits = icu_series.load(physionet_data(directory, train_sets="a,b", test_set=test_set))
        return splits.splits

    plain = load(write_sets(tmp_path / "plain"))
    # The same stays, but those outside the training split hold extreme values.
    held_out = split_ids(plain)["val"] | split_ids(plain)["test"]
    extreme = load(write_sets(tmp_path / "extreme", extreme=held_out))
    assert split_ids(extreme) == split_ids(plain)
    for name in ("val", "test"):
        assert extreme[name]["values"][:, 0, HR].min() > plain[name]["values"][:, 0, HR].max()
        assert extreme[name]["static"][:, 0].min() > plain[name]["static"][:, 0].max()  # age
    for key in ("values", "static"):
        np.testing.assert_array_equal(extreme["train"][key], plain["train"][key])
    before, after = fitted
    for field in dataclasses.fields(before):
        np.testing.assert_array_equal(getattr(before, field.name), getattr(after, field.name))


@pytest.mark.slow  # trains
def test_train_on_two_sets_and_test_on_a_third(tiny, tmp_path):
    config = tiny("ehr_physionet")
    config.data.update(dir=write_sets(tmp_path / "sets"), train_sets="a,b", test_set="c")
    config.model.update(time_features=4, num_heads=1, num_reference=4)
    workdir = tmp_path / "run"
    metrics = train.train_and_evaluate(config, str(workdir))
    assert 0 <= metrics["auroc"] <= 1
    with open(workdir / "metrics.jsonl") as f:
        test = [json.loads(line) for line in f][-1]
    assert test["split"] == "test" and test["auroc"] == metrics["auroc"]
    report = (workdir / "report.md").read_text()
    assert "PhysioNet 2012 sets a+b from" in report and "(test: set c)" in report
    with open(workdir / "predictions" / "test.csv") as f:
        assert {int(line.split(",")[0]) for line in list(f)[1:]} == set_ids("c")


def _remove(*names):
    def remove(directory):
        for name in names:
            path = os.path.join(directory, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)

    return remove


def _append_outcome_row(directory):
    with open(os.path.join(directory, "Outcomes-c.txt"), "a") as f:
        f.write("152099,-1,-1,-1,-1,0\n")


def _copy_a_record_into_b(directory):
    shutil.copy(os.path.join(directory, "set-a", "132000.txt"), os.path.join(directory, "set-b"))
    with open(os.path.join(directory, "Outcomes-b.txt"), "a") as f:
        f.write("132000,-1,-1,-1,-1,0\n")


@pytest.mark.parametrize(
    "overrides,damage,message",
    [
        pytest.param(
            dict(train_sets="a,b", test_set="b"),
            None,
            "data.test_set='b' is also in data.train_sets='a,b': a test set must be used for "
            "nothing else; drop it from train_sets or set test_set=''",
            id="test set trained on",
        ),
        pytest.param(
            dict(train_sets="a,d"),
            None,
            "data.train_sets='a,d': name one or more of the sets a, ",
            id="unknown train set",
        ),
        pytest.param(
            dict(train_sets="a,a"),
            None,
            "data.train_sets='a,a': name one or more of the sets a, ",
            id="repeated train set",
        ),
        pytest.param(
            dict(test_set="B"),
            None,
            "data.test_set='B'; valid: '' (a held-out part of data.train",
            id="unknown test set",
        ),
        pytest.param(
            dict(train_sets="a,b", test_set="c", num_folds=5),
            None,
            "data.num_folds=5 cross-validates over data.train_sets='a,b', each fold the test "
            "split in turn, but data.test_set='c' names a test set: set test_set='' or num_folds=0",
            id="folds and a test set",
        ),
        pytest.param(
            dict(test_set="c"),
            _remove("set-c"),
            "found neither set-c.tar.gz nor a set-c/ folder",
            id="no set-c records",
        ),
        pytest.param(
            dict(test_set="c"),
            _remove("set-c", "Outcomes-c.txt"),
            "Outcomes-c.txt is missing",
            id="no set c",
        ),
        pytest.param(
            dict(train_sets="a,b"),
            _remove("Outcomes-b.txt"),
            "Outcomes-b.txt is missing",
            id="no Outcomes-b",
        ),
        pytest.param(
            dict(test_set="c"),
            _append_outcome_row,
            "Outcomes-c.txt does not match set-c: 1 outcome row(s) without a record file (152099)",
            id="outcomes mismatch",
        ),
        pytest.param(
            dict(train_sets="a,b"),
            _copy_a_record_into_b,
            "set-a and set-b share 1 RecordID(s) (132000), but the challenge's sets are disjoint",
            id="shared record ids",
        ),
    ],
)
def test_bad_input_stops_before_anything_is_written(tiny, tmp_path, overrides, damage, message):
    directory = write_sets(tmp_path / "sets")
    if damage:
        damage(directory)
    config = tiny("ehr_physionet")
    config.data.update(dir=directory, **overrides)
    workdir = tmp_path / "run"
    with pytest.raises(ConfigError) as error:
        train.train_and_evaluate(config, str(workdir))
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not workdir.exists()


@pytest.mark.slow  # reads the real sets A and B twice
@pytest.mark.skipif(not os.path.isdir(REAL_DIR), reason="../shared/data is absent")
def test_real_sets_a_and_b():
    union = icu_series.load(physionet_data(REAL_DIR, train_sets="a,b")).splits
    ids = split_ids(union)
    assert sum(map(len, ids.values())) == len(set.union(*ids.values())) == 8000
    assert sum(int(s["labels"].sum()) for s in union.values()) == 554 + 568
    protocol = icu_series.load(physionet_data(REAL_DIR, train_sets="a", test_set="b")).splits
    set_a = split_ids(protocol)["train"] | split_ids(protocol)["val"]
    assert len(set_a) == 4000 and split_ids(protocol)["test"] == set.union(*ids.values()) - set_a
    assert protocol["test"]["labels"].sum() == 568
