"""--mode=ensemble: the mean logits of finished runs, evaluated as one run's outputs are."""

import csv
import glob
import json
import os
import re
import shutil

import numpy as np
import pytest
from scipy import special
from sklearn import metrics

from medjax import parallel, train
from medjax.errors import ConfigError
from medjax.tasks import build_task, classification, ehr
from medjax.train import steps
from medjax.train.evaluation import evaluate_split
from medjax.train.trained import restore_best

TINY_CT_CNN = ["--config=configs/ct_cnn.py:smoke"]  # the finished tiny run's config


def _edit_json(path, edit):
    with open(path) as f:
        value = json.load(f)
    edit(value)
    with open(path, "w") as f:
        json.dump(value, f)


def _test_line(workdir):
    """The test line of metrics.jsonl, without its time and split."""
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        (line,) = [line for line in map(json.loads, f) if line.pop("split") == "test"]
    del line["time"]
    return line


def _predictions(workdir):
    with open(os.path.join(workdir, "predictions", "test.csv")) as f:
        rows = list(csv.DictReader(f))
    return [r["id"] for r in rows], np.array([[float(r[f"prob_{c}"]) for c in "01"] for r in rows])


@pytest.mark.slow
def test_an_ensemble_of_copies_of_a_run_is_that_run(finished_tiny_run, tmp_path, run_main):
    run = finished_tiny_run
    copy = shutil.copytree(run.workdir, tmp_path / "copy")
    workdir = tmp_path / "ensemble"
    status, stderr = run_main(
        *TINY_CT_CNN, f"--workdir={workdir}", "--mode=ensemble", f"--members={run.workdir},{copy}"
    )
    assert status == 0, stderr

    single, ensemble = _test_line(run.workdir), _test_line(workdir)
    assert ensemble.pop("step") == 0 and single.pop("step") > 0
    assert ensemble.keys() == single.keys() > {"operating_threshold", "min_se_ppv", "auroc_low"}
    for name, value in single.items():
        assert ensemble[name] == pytest.approx(value, rel=1e-6, abs=1e-7), name
    ids, probs = _predictions(workdir)
    single_ids, single_probs = _predictions(run.workdir)
    assert ids == single_ids
    np.testing.assert_allclose(probs, single_probs, atol=2e-6)
    report = (workdir / "report.md").read_text()
    assert "an ensemble of 2 members, the mean of their logits" in report
    assert f"member `{run.workdir}`" in report and f"member `{copy}`" in report
    # The members relative to the ensemble's workdir (tmp_path/ensemble): ../finished, ../copy.
    assert json.loads((workdir / "ensemble.json").read_text()) == {
        "members": [os.path.join("..", os.path.basename(m)) for m in (run.workdir, copy)]
    }
    assert not (workdir / "checkpoints").exists()
    with pytest.raises(ConfigError, match="holds the evaluation of an ensemble"):
        train.train_and_evaluate(run.config, str(workdir))
    assert not (workdir / "checkpoints").exists()


@pytest.mark.slow
def test_the_ensemble_averages_its_members_logits(tiny_ensemble):
    config, workdir, members, got = tiny_ensemble
    task, mesh = build_task(config), parallel.data_mesh()
    outputs = [
        evaluate_split(restore_best(config, task, m)[0], task, "test", mesh)[1] for m in members
    ]
    assert not np.allclose(outputs[0]["logits"], outputs[1]["logits"], atol=1e-3)
    logits = np.mean([o["logits"] for o in outputs], axis=0)
    expected = special.softmax(logits.astype(np.float64), axis=1)
    _, probs = _predictions(workdir)
    np.testing.assert_allclose(probs, expected, atol=2e-6)
    labels = outputs[0]["label"]
    assert got["auroc"] == pytest.approx(metrics.roc_auc_score(labels, logits[:, 1] - logits[:, 0]))
    with open(os.path.join(workdir, "report.md")) as f:
        assert "seed 1" in f.read()


def _unfinished(value):
    value["finished"] = False


def _other_data(value):
    value["fingerprint"]["data"] = "0123456789abcdef"


@pytest.mark.slow
@pytest.mark.parametrize(
    "files, edit, message",
    [
        (
            "checkpoints/latest/6/progress/metadata",
            _unfinished,
            "is not a finished run (at step 6 of 6)",
        ),
        (
            "config.json",
            lambda c: c["model"].update(width=0.25),
            "another data or model config: model.width: 0.25 -> 0.125",
        ),
        ("config.json", lambda c: c["data"].update(num_test=40), "data.num_test: 40 -> 48"),
        (
            "checkpoints/best/*/progress/metadata",
            _other_data,
            "scored other examples: its data (fingerprint 0123456789abcdef) differ",
        ),
    ],
    ids=["unfinished", "other model", "other data config", "other data"],
)
def test_members_of_another_run_are_refused(finished_tiny_run, tmp_path, files, edit, message):
    run = finished_tiny_run
    member = shutil.copytree(run.workdir, tmp_path / "member")
    for path in glob.glob(str(member / files)):
        _edit_json(path, edit)
    workdir = tmp_path / "ensemble"
    with pytest.raises(ConfigError, match=re.escape(message)):
        train.ensemble(run.config, str(workdir), [run.workdir, str(member)])
    assert not workdir.exists()


@pytest.mark.parametrize(
    "members, workdir, message",
    [
        (["a"], "ensemble", "an ensemble needs at least 2 finished workdirs"),
        (["a", "a/"], "ensemble", "/a is listed twice; give each member once"),
        (["a", "b", "a"], "ensemble", "/a is listed twice; give each member once"),
        (["a", "b/../a"], "ensemble", "/a and /tmp_path/b/../a are the same folder"),
        (["a", "b"], "a", "/a is one of the --members; give it another"),
        (["a", "b"], "run", "/run holds a training run (checkpoints/); give another"),
        (["a", "b"], "ensemble", "/a/config.json: each of --members must hold a trained run"),
        (["untrained", "b"], "ensemble", "no checkpoint in"),
    ],
    ids=[
        "one",
        "one twice",
        "a,b,a",
        "one twice by another path",
        "workdir a member",
        "workdir a run",
        "no config",
        "no checkpoint",
    ],  # fmt: skip
)
def test_bad_members_are_refused_and_nothing_is_written(
    tiny_config, tmp_path, members, workdir, message
):
    for folder in ("a", "b", "untrained", "run/checkpoints"):
        os.makedirs(tmp_path / folder)
    (tmp_path / "untrained" / "config.json").write_text(tiny_config.to_json_best_effort())
    before = sorted(os.walk(tmp_path))
    message = message.replace("/tmp_path", str(tmp_path))
    with pytest.raises(ConfigError, match=re.escape(message)):
        train.ensemble(tiny_config, str(tmp_path / workdir), [str(tmp_path / m) for m in members])
    assert sorted(os.walk(tmp_path)) == before


def test_an_ensemble_of_vaes_is_refused(tiny, tmp_path):
    with pytest.raises(ConfigError, match="the vae task's outputs have no logits to average"):
        train.ensemble(tiny("ct_vae"), str(tmp_path / "ensemble"), ["a", "b"])
    assert not os.listdir(tmp_path)


def test_members_go_with_mode_ensemble(tmp_path, run_main):
    workdir = f"--workdir={tmp_path}/run"
    status, stderr = run_main("--config=configs/ct_cnn.py", workdir, "--members=a,b")
    assert status == 1 and "error: --members is for --mode=ensemble" in stderr
    status, stderr = run_main(
        "--config=configs/ct_cnn.py", workdir, "--mode=ensemble", "--members=a"
    )
    assert status == 1 and "error: --members=a: an ensemble needs at least 2" in stderr
    assert not os.listdir(tmp_path)


def test_the_tasks_average_logits_then_recompute_probabilities():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 4)).astype(np.float32)  # members, examples, classes
    rows = {"label": rng.integers(0, 2, (5, 4)), "index": np.arange(5)}
    mean = logits.mean(0)

    single = classification.ensemble_outputs(
        [rows | {"logits": x} for x in logits], multilabel=False
    )
    np.testing.assert_allclose(single["probs"], special.softmax(mean, axis=1), rtol=1e-5)
    multi = classification.ensemble_outputs([rows | {"logits": x} for x in logits], multilabel=True)
    np.testing.assert_allclose(multi["probs"], special.expit(mean), rtol=1e-5)
    binary = ehr.ensemble_outputs([rows | {"logit": x[:, 0]} for x in logits])
    np.testing.assert_allclose(binary["logit"], mean[:, 0], rtol=1e-6)
    np.testing.assert_allclose(binary["probs"][:, 1], special.expit(mean[:, 0]), rtol=1e-5)
    for outputs in (single, multi, binary):
        assert all(isinstance(v, np.ndarray) for v in outputs.values())
        assert all(np.array_equal(outputs[k], rows[k]) for k in rows)


@pytest.mark.slow
def test_ensemble_size_trains_the_seeds_then_evaluates_them_as_one(
    finished_tiny_run, tmp_path, monkeypatch
):
    run = finished_tiny_run
    config = run.config
    config.trainer.ensemble_size = 2
    workdir = tmp_path / "ensemble"
    members = [workdir / "members" / f"seed_{s}" for s in (0, 1)]
    shutil.copytree(run.workdir, members[0])  # seed 0 has finished: it is only evaluated
    calls = []
    real_step = steps.train_step
    monkeypatch.setattr(steps, "train_step", lambda *a, **k: calls.append(1) or real_step(*a, **k))
    got = train.train_ensemble(config, str(workdir))
    assert len(calls) == run.train_steps  # seed 1's run, trained from the start
    trained = json.loads((members[1] / "config.json").read_text())
    assert trained["seed"] == 1 and trained["trainer"]["ensemble_size"] == 1
    assert json.loads((workdir / "ensemble.json").read_text()) == {
        "members": ["members/seed_0", "members/seed_1"]
    }
    line = _test_line(workdir)
    assert line["auroc"] == pytest.approx(got["auroc"])
    assert "an ensemble of 2 members" in (workdir / "report.md").read_text()
    assert got["auroc"] != pytest.approx(run.test_metrics["auroc"])

    calls.clear()
    assert train.train_ensemble(config, str(workdir)) == pytest.approx(got)  # trains nothing
    assert not calls
    with pytest.raises(ConfigError, match="holds a training run"):
        train.train_ensemble(config, run.workdir)


def _test_probs(predictions: str):
    """The ids and class probabilities of the test rows of --mode=predict's table."""
    with open(predictions) as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    return [r["id"] for r in rows], np.array([[float(r[f"prob_{c}"]) for c in "01"] for r in rows])


@pytest.mark.slow
def test_an_ensembles_workdir_is_a_model_to_predict_and_evaluate_with(tiny_ensemble, tmp_path):
    config, workdir, members, got = tiny_ensemble
    line = _test_line(workdir)
    ids, probs = _predictions(workdir)  # the ensemble's evaluation: its members' mean logits

    predicted = train.predict(config, workdir)  # as the README's breastmnist example
    assert predicted == os.path.join(workdir, "predictions", "synthetic_ct.csv")
    predicted_ids, predicted_probs = _test_probs(predicted)
    assert predicted_ids == ids
    np.testing.assert_allclose(predicted_probs, probs, atol=2e-6)
    for member in members:  # not any one member's
        assert not np.allclose(_predictions(member)[1], probs, atol=1e-3)

    assert train.evaluate(config, workdir) == pytest.approx(got)
    assert _test_line(workdir) == pytest.approx(line)
    val = train.evaluate(config, workdir, split="val")
    assert val["auroc"] != pytest.approx(got["auroc"])
    assert _test_line(workdir) == pytest.approx(line)

    # What only a single model does names a member to give instead, and writes nothing.
    before = sorted(os.walk(tmp_path))
    name_one = "holds an ensemble (ensemble.json): {}; name one of its members, e.g. {}="
    with pytest.raises(ConfigError) as refused:
        train.explain(config, workdir)
    expected = name_one.format("explanations are a single model's", "--workdir")
    assert str(refused.value) == f"{workdir} {expected}{members[0]}"
    fine_tune = config.copy_and_resolve_references()
    fine_tune.trainer.ensemble_size = 1
    fine_tune.init.from_workdir = workdir
    with pytest.raises(ConfigError) as refused:
        train.train_and_evaluate(fine_tune, str(tmp_path / "fine_tune"))
    why = "a model starts from one run's weights"
    expected = name_one.format(why, "--config.init.from_workdir")
    assert str(refused.value) == f"{workdir} {expected}{members[0]}"
    assert sorted(os.walk(tmp_path)) == before
    assert train.explain(config, members[0])  # the member named, as a run's workdir


@pytest.mark.slow
def test_an_ensemble_moved_with_its_members_reads_from_any_folder(
    tiny_ensemble, tmp_path, monkeypatch
):
    config, workdir, _, got = tiny_ensemble
    stored = json.loads((tmp_path / "ensemble" / "ensemble.json").read_text())
    assert stored == {"members": ["members/seed_0", "members/seed_1"]}
    ids, probs = _predictions(workdir)
    moved = shutil.move(workdir, tmp_path / "moved" / "ensemble")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    relative = os.path.join("..", "moved", "ensemble")
    assert train.evaluate(config, relative) == pytest.approx(got)
    predicted_ids, predicted_probs = _test_probs(train.predict(config, relative))
    assert predicted_ids == ids
    np.testing.assert_allclose(predicted_probs, probs, atol=2e-6)
    assert json.loads((moved / "ensemble.json").read_text()) == stored  # rewritten, the same

    # A member left behind: one line naming it, where it was looked for, and what to do.
    shutil.move(moved / "members" / "seed_1", tmp_path / "seed_1")
    for mode in (train.evaluate, train.predict, train.export):
        with pytest.raises(ConfigError) as refused:
            mode(config, relative)
        assert str(refused.value) == (
            f"{relative}/ensemble.json names the member 'members/seed_1', which is not at "
            f"{relative}/members/seed_1: members are stored relative to the ensemble's workdir; "
            "move them with it, or run --mode=ensemble again with --members where they are now"
        )
