"""--mode=export and `python -m medjax.infer`: the exported model reproduces --mode=predict
without medjax; bad runs and bad inputs are refused in one line."""

import csv
import json
import os
import re
import subprocess
import sys

import jax
import nibabel as nib
import numpy as np
import pytest
from scipy import special

from medjax import train
from medjax.data import physionet2012, time_grid
from medjax.errors import ConfigError
from medjax.tasks import raw_inputs
from medjax.train import steps

# Runs in a fresh interpreter that must not import medjax: the jax.export function and the
# SavedModel on the raw test inputs, one batch size after the other.
CHECK = """
import sys
import jax, numpy as np, tensorflow as tf
folder, inputs, out = sys.argv[1:]
with open(folder + "/model.jax_export", "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
serve = tf.saved_model.load(folder + "/saved_model").signatures["serving_default"]
raw = dict(np.load(inputs))
size = len(next(iter(raw.values())))
engines = {"jax": lambda x: exported.call(x),
           "tf": lambda x: serve(**{k: tf.constant(v) for k, v in x.items()})}
found = {}
for name, call in engines.items():
    for batch in (1, 16):
        parts = [call({k: v[i:i + batch] for k, v in raw.items()}) for i in range(0, size, batch)]
        for k in parts[0]:
            found[f"{name}_{batch}_{k}"] = np.concatenate([np.asarray(p[k]) for p in parts])
assert "medjax" not in sys.modules, "the check imported medjax"
np.savez(out, **found)
"""


RECORD = """Time,Parameter,Value
00:00,RecordID,132539
00:00,Age,54
00:00,Gender,0
00:00,Height,-1
00:00,ICUType,4
00:00,Weight,-1
00:07,GCS,15
00:07,HR,73
01:37,HR,80
03:15,Glucose,205
03:15,Urine,100
"""


def _test_rows(predictions: str) -> list[dict]:
    with open(predictions) as f:
        return [row for row in csv.DictReader(f) if row["split"] == "test"]


def _last_test_line(workdir) -> dict:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f][-1]


def _check_export(config, workdir, tmp_path):
    """Predicts, exports, and checks the export in a fresh process against predict's table,
    and its threshold and calibration against the final evaluation's."""
    rows = _test_rows(train.predict(config, workdir))
    folder = train.export(config, workdir)
    assert sorted(os.listdir(folder)) == ["metadata.json", "model.jax_export", "saved_model"]
    assert not [name for name in os.listdir(workdir) if name.startswith(".export")]
    inputs, found = tmp_path / "inputs.npz", tmp_path / "found.npz"
    np.savez(inputs, **raw_inputs.raw_inputs(config).load_split("test"))
    subprocess.run([sys.executable, "-c", CHECK, folder, inputs, found], check=True, cwd=tmp_path)
    found = dict(np.load(found))
    if columns := [c for c in rows[0] if c.startswith("prob_")]:
        expected = {"probs": [[float(r[c]) for c in columns] for r in rows]}
    else:  # the VAE's anomaly scores
        expected = {name: [float(r[name]) for r in rows] for name in ("nelbo", "recon_error")}
    for engine in ("jax", "tf"):
        for batch in (1, 16):
            for name, want in expected.items():  # predict's table has 6 significant digits
                got = found[f"{engine}_{batch}_{name}"]
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)

    with open(os.path.join(folder, "metadata.json")) as f:
        metadata = json.load(f)
    test = _last_test_line(workdir)
    assert metadata["operating_point"]["threshold"] == pytest.approx(test["operating_threshold"])
    calibration = metadata["calibration"]
    if "temperature" in test:
        assert 1 / calibration["scale"] == pytest.approx(test["temperature"])
    else:
        assert calibration["scale"] == pytest.approx(test["platt_scale"])
        assert calibration["offset"] == pytest.approx(test["platt_offset"])
    assert metadata["config"] == json.loads(config.to_json_best_effort())
    assert metadata["data_fingerprint"] == metadata["trained_on_data_fingerprint"]
    return metadata


@pytest.mark.slow
def test_export_of_the_2d_cnn_reproduces_predict(finished_tiny_run, tmp_path, monkeypatch):
    config, workdir = finished_tiny_run.config, finished_tiny_run.workdir
    metadata = _check_export(config, workdir, tmp_path)
    assert metadata["inputs"] == [{"name": "image", "shape": ["b", 32, 32], "dtype": "float32"}]
    assert {o["name"] for o in metadata["outputs"]} == {"logits", "probs", "score"}
    assert metadata["class_names"] == ["no suspicious nodule", "suspicious nodule"]

    # An export that fails half-way leaves the previous one as it was, and nothing else.
    folder = os.path.join(workdir, "export")
    before = {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}

    def fail(*args):
        raise RuntimeError("no SavedModel")

    monkeypatch.setattr(sys.modules["medjax.train.export"], "_save_tf", fail)
    with pytest.raises(RuntimeError, match="no SavedModel"):
        train.export(config, workdir)
    after = {name: os.stat(os.path.join(folder, name)).st_mtime_ns for name in os.listdir(folder)}
    assert after == before
    assert not [name for name in os.listdir(workdir) if name.startswith(".export")]


@pytest.mark.slow
def test_export_of_an_ensemble_is_one_function_that_reproduces_its_predict(tiny_ensemble, tmp_path):
    config, workdir, members, _ = tiny_ensemble
    # One function of the members' mean logits, its threshold and calibration the ensemble's.
    metadata = _check_export(config, workdir, tmp_path)
    steps_of = [int(os.listdir(os.path.join(m, "checkpoints", "best"))[0]) for m in members]
    assert metadata["ensemble"] == [
        {"workdir": f"members/seed_{seed}", "seed": seed, "step": step}
        for seed, step in enumerate(steps_of)
    ]
    assert metadata["step"] is None and steps_of[0] != steps_of[1]
    member_export = train.export(config, members[0])  # a member alone scores otherwise
    with open(os.path.join(member_export, "metadata.json")) as f:
        member = json.load(f)
    assert member["ensemble"] is None and member["step"] == steps_of[0]
    assert member["operating_point"]["threshold"] != pytest.approx(
        metadata["operating_point"]["threshold"]
    )

    # medjax.infer on the export alone gives --mode=predict's test probabilities.
    rows = _test_rows(os.path.join(workdir, "predictions", "synthetic_ct.csv"))
    images = raw_inputs.raw_inputs(config).load_split("test")["image"]
    np.savez(tmp_path / "scans.npz", test_images=images)
    result = _infer(f"--export={workdir}/export", f"--input={tmp_path / 'scans.npz'}")
    assert result.returncode == 0, result.stderr
    found = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(found) == len(rows) == len(images)
    names = metadata["class_names"]
    np.testing.assert_allclose(
        [[row["probabilities"][n] for n in names] for row in found],
        [[float(row[f"prob_{c}"]) for c in "01"] for row in rows],
        rtol=1e-5,
        atol=1e-5,
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ct_cnn3d", "ct_vae"])
def test_export_of_the_3d_cnn_and_the_vae_reproduces_predict(tiny, tmp_path, name):
    # The configs of test_train.py's 3D run and test_vae.py's 2D run: compiled once for both.
    if name == "ct_cnn3d":
        config = tiny(name, image_shape=(16, 16, 16), steps=2)
        config.trainer.update(batch_size=4, eval_batch_size=4)
        config.data.update(num_train=16, num_val=16, num_test=16)  # fewer batches, same steps
    else:
        config = tiny(name)
        config.model.eval_samples = 4  # random latent draws, from the run's evaluation key
    workdir = str(tmp_path / "run")
    train.train_and_evaluate(config, workdir)
    metadata = _check_export(config, workdir, tmp_path)
    if name == "ct_vae":
        assert metadata["calibration"]["method"] == "platt"
        assert {"nelbo", "recon_error", "score"} <= {o["name"] for o in metadata["outputs"]}
    else:
        assert metadata["input_contract"]["volume_grid"]["spacing_mm"] == [5.0, 5.0, 5.0]


@pytest.mark.slow
def test_export_of_gru_d_reproduces_predict_and_refuses_an_unfinished_run(
    tiny, tmp_path, monkeypatch
):
    config = tiny("ehr_rnn")
    config.data.imputation = "forward_fill"  # imputed inside the exported function
    config.trainer.checkpoint_every_steps = 2
    workdir = str(tmp_path / "run")
    real_step, calls = steps.train_step, []

    def crash_at_step_3(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("simulated crash")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(steps, "train_step", crash_at_step_3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.train_and_evaluate(config, workdir)
    monkeypatch.setattr(steps, "train_step", real_step)
    with pytest.raises(ConfigError, match="is not finished .* step 2 of 6"):
        train.export(config, workdir)
    assert not [name for name in os.listdir(workdir) if "export" in name]

    train.train_and_evaluate(config, workdir)  # resumed to the end
    metadata = _check_export(config, workdir, tmp_path)
    assert [i["name"] for i in metadata["inputs"]] == [
        "values", "mask", "delta", "lengths", "descriptors"]  # fmt: skip
    assert metadata["input_contract"]["imputation"] == "forward_fill"

    # A PhysioNet 2012 record file, scored by medjax.infer as the exported function scores it.
    record = tmp_path / "132539.txt"
    record.write_text(RECORD)
    result = _infer(f"--export={workdir}/export", f"--input={record}")
    assert result.returncode == 0, result.stderr
    (row,) = [json.loads(line) for line in result.stdout.splitlines()]
    grid = time_grid.to_grid([physionet2012.read_record(str(record))])
    with open(os.path.join(workdir, "export", "model.jax_export"), "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    probs = exported.call({name: grid[name] for name in raw_inputs.STAY_INPUTS})["probs"]
    assert row["id"] == "132539" and row["probability"] == pytest.approx(float(probs[0, 1]))


def test_export_refuses_a_workdir_without_a_run_or_a_checkpoint(tiny, tmp_path, run_main):
    config = tiny("ct_cnn")
    empty = tmp_path / "empty"
    empty.mkdir()
    status, err = run_main("--config=configs/ct_cnn.py", f"--workdir={empty}", "--mode=export")
    assert status == 1 and err.count("\n") == 1 and err.startswith("error: no ")
    assert "config.json: --workdir must hold a trained run" in err
    (empty / "config.json").write_text(config.to_json_best_effort())
    with pytest.raises(ConfigError, match="no checkpoint in .*train first"):
        train.export(config, str(empty))
    assert sorted(os.listdir(empty)) == ["config.json"]


def _infer(*args):
    return subprocess.run(
        [sys.executable, "-m", "medjax.infer", *args], capture_output=True, text=True, check=False
    )


@pytest.mark.slow
def test_infer_scores_files_with_the_exported_model_alone(finished_tiny_run, tmp_path):
    config, workdir = finished_tiny_run.config, finished_tiny_run.workdir
    folder = train.export(config, workdir)
    with open(os.path.join(folder, "metadata.json")) as f:
        metadata = json.load(f)
    images = raw_inputs.raw_inputs(config).load_split("test")["image"][:5]
    np.savez(tmp_path / "scans.npz", test_images=images, test_labels=np.zeros(5))
    result = _infer(f"--export={folder}", f"--input={tmp_path / 'scans.npz'}", "--batch_size=2")
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    with open(os.path.join(folder, "model.jax_export"), "rb") as f:
        outputs = jax.export.deserialize(bytearray(f.read())).call({"image": images})
    names, point = metadata["class_names"], metadata["operating_point"]
    calibration = metadata["calibration"]
    assert [row["id"] for row in rows] == [f"test-{i}" for i in range(5)]
    for row, probs, score in zip(rows, np.asarray(outputs["probs"]), np.asarray(outputs["score"])):
        np.testing.assert_allclose(list(row["probabilities"].values()), probs, rtol=1e-6)
        assert list(row["probabilities"]) == names and row["probability"] == row["probabilities"][
            names[1]]  # fmt: skip
        assert row["score"] == pytest.approx(score, rel=1e-6)
        assert row["decision"] == int(row["score"] >= point["threshold"])
        assert row["class"] == names[row["decision"]]
        expected = special.expit(calibration["scale"] * row["score"])  # temperature scaling
        assert row["calibrated_probability"] == pytest.approx(expected)

    # Bad input: one line naming what was expected; nothing printed.
    nifti = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.int16), np.eye(4)), nifti)
    np.savez(tmp_path / "small.npz", images=np.zeros((2, 28, 28), np.float32))
    for path, message in [
        (nifti, "a CT scan, but this model reads an .npz"),
        (tmp_path / "small.npz", r"image is float32 \[2, 28, 28\]; this model takes image "
         r"float32 \[N, 32, 32\]"),
        (tmp_path / "missing.txt", "no such file or folder"),
    ]:  # fmt: skip
        result = _infer(f"--export={folder}", f"--input={path}")
        assert result.returncode == 1 and not result.stdout, path
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        assert re.search(message, lines[0]), lines[0]

    # Non-finite HU are not scored, in valid JSON (the model's window clipped inf; NaN gave NaN
    # probabilities and "decision": 0); tests/test_infer.py has the other cases.
    images = images.astype(np.float32)
    images[1], images[3, 4, 4] = np.nan, np.inf
    np.savez(tmp_path / "bad.npz", images=images)
    result = _infer(f"--export={folder}", f"--input={tmp_path / 'bad.npz'}")
    assert result.returncode == 0 and result.stderr.startswith("warning: 2 of 5 examples")
    rows = [json.loads(line, parse_constant=_refuse) for line in result.stdout.splitlines()]
    assert [row["scored"] for row in rows] == [True, False, True, False, True]
    assert (
        rows[3]["reason"]
        == "not scored: image: 1 of 1024 values not finite (NaN, inf, or beyond float32)"
    )


def _refuse(constant):
    raise ValueError(f"{constant} is not JSON (RFC 8259)")


def test_infer_imports_no_training_code():
    code = (
        "import sys, medjax.infer; "
        "print(sorted(m for m in sys.modules if m.startswith(('medjax', 'flax', 'tensorflow'))))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert loaded.stdout.strip() == (
        "['medjax', 'medjax.errors', 'medjax.export_files', 'medjax.infer', 'medjax.xla_cpu']"
    )
