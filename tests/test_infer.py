"""`python -m medjax.infer` on bad input: non-finite examples are refused one by one, with a
reason, in valid JSON; a bad argument or file is one `error:` line and exit status 1.

The exports here are small jax.export functions with a metadata.json as --mode=export writes it
(tests/test_export.py checks medjax.infer on real exports), built in a second, so that each case
runs in the test's process through medjax.infer.run."""

import json
import os
import re
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import nibabel as nib
import numpy as np
import pytest

from medjax import infer
from medjax.data import physionet2012

CLASSES = ["no suspicious nodule", "suspicious nodule"]
STEPS, VARIABLES = 4, len(physionet2012.VARIABLES)  # the ICU export's grid: 4 h at 1 h steps
ICU = {
    "values": ((STEPS, VARIABLES), "float32"),
    "mask": ((STEPS, VARIABLES), "float32"),
    "delta": ((STEPS, VARIABLES), "float32"),
    "lengths": ((), "int32"),
    "descriptors": ((5,), "float32"),
}
RECORD = "Time,Parameter,Value\n00:00,RecordID,7\n00:00,Age,54\n00:07,HR,73\n01:37,HR,80\n"


def _image_function(inputs):
    """A binary "model" whose score is the sum of the pixels / 1000: overflows beyond 3e38."""
    image = inputs["image"].astype(jnp.float32)
    score = jnp.sum(image.reshape(image.shape[0], -1), axis=1) * 1e-3
    logits = jnp.stack([jnp.zeros_like(score), score], axis=1)
    return {"logits": logits, "probs": jax.nn.softmax(logits), "score": score}


def _icu_function(inputs):
    steps = jnp.arange(STEPS)[None, :] < inputs["lengths"][:, None]
    score = jnp.sum(inputs["values"] * inputs["mask"] * steps[..., None], axis=(1, 2)) * 1e-2
    score += jnp.sum(jnp.nan_to_num(inputs["descriptors"]), axis=1) * 1e-3
    score -= jnp.sum(inputs["delta"], axis=(1, 2)) * 1e-4
    logits = jnp.stack([jnp.zeros_like(score), score], axis=1)
    return {"logit": score, "probs": jax.nn.softmax(logits), "score": score}


def _write_export(folder, function, specs, contract, platforms=("cpu", "cuda"), **changes) -> str:
    """An export/ folder of `function` of the inputs {name: (shape, dtype)}."""
    os.makedirs(folder)
    batch = jax.export.symbolic_shape("b")
    args = {n: jax.ShapeDtypeStruct((*batch, *s), d) for n, (s, d) in specs.items()}
    exported = jax.export.export(jax.jit(function), platforms=platforms)(args)
    with open(os.path.join(folder, "model.jax_export"), "wb") as f:
        f.write(exported.serialize())
    outputs = jax.eval_shape(
        function, {n: jax.ShapeDtypeStruct((1, *s), d) for n, (s, d) in specs.items()}
    )
    metadata = {
        "task": "classification",
        "class_names": CLASSES,
        "multilabel": False,
        "inputs": [{"name": n, "shape": ["b", *s], "dtype": d} for n, (s, d) in specs.items()],
        "input_contract": contract,
        "outputs": [
            {"name": n, "shape": ["b", *o.shape[1:]], "dtype": o.dtype.name}
            for n, o in outputs.items()
        ],
        "operating_point": {"method": "youden", "threshold": 0.05, "rule": "..."},
        "calibration": {"method": "temperature", "scale": 2.0, "offset": 0.0, "center": 0.0},
        "files": {"jax_export": "model.jax_export", "saved_model": "saved_model"},
        "platforms": ["cpu", "cuda"],
    } | changes
    with open(os.path.join(folder, "metadata.json"), "w") as f:
        json.dump(metadata, f, indent=2)
    return str(folder)


@pytest.fixture(scope="module")
def exports(tmp_path_factory):
    """{"ct": a 2D HU model [b, 8, 8], "ct3d": a 3D one with its volume grid, "icu": stays}."""
    root = tmp_path_factory.mktemp("exports")
    hu = {"image": "Hounsfield units, windowed inside (center -600, width 1500)"}
    grid = {"spacing_mm": [5.0, 5.0, 5.0], "ct_geometry": "resample", "reader": "..."}
    return {
        "ct": _write_export(root / "ct", _image_function, {"image": ((8, 8), "float32")}, hu),
        "ct3d": _write_export(
            root / "ct3d",
            _image_function,
            {"image": ((4, 4, 4), "float32")},
            hu | {"volume_grid": grid},
        ),
        "icu": _write_export(
            root / "icu", _icu_function, ICU, {"grid": {"hours": float(STEPS), "step_hours": 1.0}}
        ),
    }


def _strict(line: str) -> dict:
    """RFC 8259 JSON: no NaN or Infinity."""

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    return json.loads(line, parse_constant=refuse)


def _run(capsys, export, path, batch_size=32):
    """(exit status, the JSON objects printed, stderr) of medjax.infer, run in this process."""
    status = infer.run(str(export), str(path), batch_size)
    out, err = capsys.readouterr()
    return status, [_strict(line) for line in out.splitlines()], err


def _error(capsys, export, path, batch_size=32) -> str:
    status = infer.run(str(export), str(path), batch_size)
    out, err = capsys.readouterr()
    assert status == 1 and not out, out
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def _call(export, inputs) -> dict:
    with open(os.path.join(export, "model.jax_export"), "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    return {k: np.asarray(v) for k, v in exported.call(inputs).items()}


def test_non_finite_images_are_refused_one_by_one_and_the_others_scored(exports, tmp_path, capsys):
    images = np.random.default_rng(0).uniform(-1000, 400, (6, 8, 8))
    images[1, 2, 3] = np.nan
    images[2] = np.nan  # all NaN: once printed NaN probabilities and "decision": 0
    images[3, 0, 0] = np.inf  # once scored: the model's windowing clipped it
    images[4, 5, 5] = 1e39  # finite in float64, inf as the model's float32
    np.savez(tmp_path / "x.npz", test_images=images)
    for batch_size in (1, 2, 32):
        status, rows, err = _run(capsys, exports["ct"], tmp_path / "x.npz", batch_size)
        assert status == 0 and [r["scored"] for r in rows] == [1, 0, 0, 0, 0, 1]
        assert [r["id"] for r in rows] == [f"test-{i}" for i in range(6)]
        assert err == "warning: 4 of 6 examples not scored; their objects say why\n"
        for row, count in zip(rows[1:5], (1, 64, 1, 1)):
            assert set(row) == {"id", "scored", "reason"}
            assert row["reason"] == (
                f"not scored: image: {count} of 64 values not finite (NaN, inf, or beyond float32)"
            )
        expected = _call(exports["ct"], {"image": images[[0, 5]].astype(np.float32)})
        for row, probs, score in zip(rows[::5], expected["probs"], expected["score"]):
            assert row["score"] == pytest.approx(score) and row["probability"] == pytest.approx(
                probs[1]
            )
            assert row["decision"] == int(score >= 0.05)


def test_an_overflowing_model_is_reported_not_printed_as_nan(exports, tmp_path, capsys):
    images = np.zeros((2, 8, 8), np.float32)
    images[1] = 1e37  # finite; the sum of 64 of them is beyond float32
    np.savez(tmp_path / "x.npz", images=images)
    status, rows, err = _run(capsys, exports["ct"], tmp_path / "x.npz")
    assert status == 0 and rows[0]["scored"] and rows[0]["score"] == 0.0
    assert rows[1] == {
        "id": "1",
        "scored": False,
        "reason": "not scored: the model's logits, "
        "probs, score: not finite (NaN or inf), the model overflowed on this input",
    }
    assert err.startswith("warning: 1 of 2 examples not scored")


def _stays(n: int) -> dict:
    rng = np.random.default_rng(1)
    mask = (rng.uniform(size=(n, STEPS, VARIABLES)) < 0.3).astype(np.float32)
    return {
        "values": rng.uniform(50, 100, mask.shape).astype(np.float32) * mask,
        "mask": mask,
        "delta": np.ones_like(mask),
        "lengths": np.full(n, STEPS, np.int32),
        "descriptors": np.full((n, 5), np.nan, np.float32),
    }


def test_icu_stays_with_non_finite_or_impossible_values_are_refused(exports, tmp_path, capsys):
    stays = _stays(8)
    stays["descriptors"][0] = [54, 1, np.nan, 2, 80]  # NaN: an unknown descriptor, scored
    stays["descriptors"][1, 0] = np.inf
    stays["values"][2, 1, 3] = np.nan
    stays["mask"][3, 0, 0] = 2.0
    stays["lengths"][4] = 0
    stays["lengths"][5] = STEPS + 1
    stays["delta"][6, 1, 1] = -1.0
    stays["delta"][6, 2, 2] = np.inf
    np.savez(tmp_path / "stays.npz", **stays)
    status, rows, _ = _run(capsys, exports["icu"], tmp_path / "stays.npz")
    assert status == 0 and [r["scored"] for r in rows] == [1, 0, 0, 0, 0, 0, 0, 1]
    assert [r["reason"].removeprefix("not scored: ") for r in rows[1:7]] == [
        "descriptors: 1 of 5 values infinite (NaN: unknown)",
        f"values: 1 of {STEPS * VARIABLES} values not finite (NaN, inf, or beyond float32)",
        f"mask: 1 of {STEPS * VARIABLES} values outside 0 or 1 (T = {STEPS})",
        f"lengths: 1 of 1 values outside steps from 1 to T (T = {STEPS})",
        f"lengths: 1 of 1 values outside steps from 1 to T (T = {STEPS})",
        f"delta: 1 of {STEPS * VARIABLES} values not finite (NaN, inf, or beyond float32); "
        f"delta: 1 of {STEPS * VARIABLES} values outside hours >= 0 (T = {STEPS})",  # 2 reasons
    ]
    expected = _call(exports["icu"], {k: v[[0, 7]] for k, v in stays.items()})
    assert [rows[0]["score"], rows[7]["score"]] == pytest.approx(expected["score"].tolist())

    # lengths the model's int32 cannot hold, or not whole
    stays = _stays(3) | {"lengths": np.array([STEPS, 2**32 + 1, 2.5])}
    np.savez(tmp_path / "stays.npz", **stays)
    status, rows, _ = _run(capsys, exports["icu"], tmp_path / "stays.npz")
    assert [r["scored"] for r in rows] == [1, 0, 0]
    assert rows[1]["reason"] == "not scored: lengths: 1 of 1 values not whole numbers within int32"

    record = tmp_path / "7.txt"
    record.write_text(RECORD)
    status, rows, err = _run(capsys, exports["icu"], record)
    assert status == 0 and not err and rows[0]["id"] == "7" and rows[0]["scored"]
    for value in ("nan", "inf", "-Infinity", "1e400"):  # a record file is one stay
        record.write_text(RECORD.replace("01:37,HR,80", f"01:37,HR,{value}"))
        status, rows, err = _run(capsys, exports["icu"], record)
        assert status == 0 and err.startswith("warning: 1 of 1 examples not scored")
        assert rows == [
            {
                "id": "7",
                "scored": False,
                "reason": f"not scored: {record} line 5: "
                f'"01:37,HR,{value}" is not HH:MM,Parameter,Value (a finite number); '
                f"fix the line or re-download the set from {physionet2012.URL}",
            }
        ]


def test_a_scan_with_non_finite_voxels_is_refused(exports, tmp_path, capsys):
    volume = np.full((8, 8, 8), -500.0, np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4) * [5, 5, 5, 1]), tmp_path / "good.nii.gz")
    volume[3:5, 3:5, 3:5] = np.nan
    nib.save(nib.Nifti1Image(volume, np.eye(4) * [5, 5, 5, 1]), tmp_path / "bad.NII")
    status, rows, _ = _run(capsys, exports["ct3d"], tmp_path / "good.nii.gz")
    assert status == 0 and rows[0]["id"] == "good" and rows[0]["score"] == pytest.approx(-32.0)
    status, rows, _ = _run(capsys, exports["ct3d"], tmp_path / "bad.NII")
    assert status == 0 and rows[0]["id"] == "bad" and not rows[0]["scored"]
    assert re.fullmatch(r"not scored: image: \d+ of 64 values not finite .*", rows[0]["reason"])


def _change_metadata(folder, change):
    path = os.path.join(folder, "metadata.json")
    with open(path) as f:
        metadata = json.load(f)
    result = change(metadata)
    with open(path, "w") as f:
        f.write(result if isinstance(result, str) else json.dumps(metadata))


def _set(key, value):
    return lambda m: m.update({key: value})


def _drop(key):
    return lambda m: m.pop(key)


EXPORT_FAULTS = [  # (the damage, the file the message names, what it says)
    (
        "empty model",
        lambda d: open(f"{d}/model.jax_export", "wb").close(),
        "model.jax_export",
        "is empty; export the run again",
    ),
    (
        "truncated model",
        lambda d: _truncate(f"{d}/model.jax_export", 1000),
        "model.jax_export",
        r"not a readable jax.export model \(struct.error: .*truncated",
    ),
    (
        "garbage model",
        lambda d: open(f"{d}/model.jax_export", "wb").write(b"\x01" * 64),
        "model.jax_export",
        "not a readable jax.export model",
    ),
    (
        "no model",
        lambda d: os.remove(f"{d}/model.jax_export"),
        "model.jax_export",
        "No such file or directory; the export is incomplete",
    ),
    (
        "no metadata",
        lambda d: os.remove(f"{d}/metadata.json"),
        "metadata.json",
        "no such file; --export must be the export/ folder",
    ),
    (
        "bad JSON",
        lambda d: _change_metadata(d, lambda m: "{"),
        "metadata.json",
        "not readable JSON",
    ),
    (
        "NaN in JSON",
        lambda d: _change_metadata(
            d, lambda m: json.dumps(m | {"operating_point": {"threshold": float("nan")}})
        ),
        "metadata.json",
        r"not readable JSON \(NaN is not a JSON number\)",
    ),
    (
        "1e999 threshold",
        lambda d: _change_metadata(
            d,
            lambda m: json.dumps(m | {"operating_point": {"threshold": 0}}).replace(
                '"threshold": 0', '"threshold": 1e999'
            ),
        ),
        "metadata.json",
        'operating_point is .*; expected null or {"threshold": a finite number',
    ),
    (
        "a list",
        lambda d: _change_metadata(d, lambda m: "[]"),
        "metadata.json",
        "holds a JSON list; expected an object",
    ),
    (
        "no class_names",
        lambda d: _change_metadata(d, _drop("class_names")),
        "metadata.json",
        "no 'class_names'; expected a list of class names",
    ),
    ("no files", lambda d: _change_metadata(d, _drop("files")), "metadata.json", "no 'files'"),
    (
        "inputs a string",
        lambda d: _change_metadata(d, _set("inputs", "image")),
        "metadata.json",
        r'inputs is "image"; expected a list of \{"name", "shape"',
    ),
    (
        "a dtype numpy lacks",
        lambda d: _change_metadata(
            d, _set("inputs", [{"name": "image", "shape": ["b", 8, 8], "dtype": "float99"}])
        ),
        "metadata.json",
        "inputs is",
    ),
    (
        "a string size",
        lambda d: _change_metadata(
            d, _set("inputs", [{"name": "image", "shape": ["b", "8", 8], "dtype": "float32"}])
        ),
        "metadata.json",
        "inputs is",
    ),
    (
        "multilabel a string",
        lambda d: _change_metadata(d, _set("multilabel", "no")),
        "metadata.json",
        'multilabel is "no"; expected true or false',
    ),
    (
        "calibration without offset",
        lambda d: _change_metadata(d, _set("calibration", {"scale": 1.0, "center": 0.0})),
        "metadata.json",
        "calibration is",
    ),
    (
        "3 classes, binary",
        lambda d: _change_metadata(d, _set("class_names", ["a", "b", "c"])),
        "metadata.json",
        "an operating point or calibration, but not 2 classes",
    ),
    (
        "shapes other than the function's",
        lambda d: _change_metadata(
            d, _set("inputs", [{"name": "image", "shape": ["b", 28, 28], "dtype": "float32"}])
        ),
        "metadata.json",
        r"disagrees with .*model.jax_export: its inputs are image float32 \[N, 28, "
        r"28\], the function's image float32 \[N, 8, 8\]",
    ),
    (
        "a dtype other than the function's",
        lambda d: _change_metadata(
            d, _set("inputs", [{"name": "image", "shape": ["b", 8, 8], "dtype": "uint8"}])
        ),
        "metadata.json",
        "disagrees with",
    ),
    (
        "outputs other than the function's",
        lambda d: _change_metadata(d, lambda m: m["outputs"].pop(0)),
        "metadata.json",
        "its outputs are probs",
    ),
]


def _truncate(path, size):
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:size])


@pytest.mark.parametrize("fault", EXPORT_FAULTS, ids=[f[0] for f in EXPORT_FAULTS])
def test_a_damaged_or_inconsistent_export_is_one_line(exports, tmp_path, capsys, fault):
    _, damage, file, message = fault
    folder = str(tmp_path / "export")
    shutil.copytree(exports["ct"], folder)
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 8, 8), np.float32))
    damage(folder)
    err = _error(capsys, folder, tmp_path / "x.npz")
    assert os.path.join(folder, file) in err and re.search(message, err), err


def test_export_and_batch_size_arguments(exports, tmp_path, capsys):
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 8, 8), np.float32))
    for batch_size in (0, -1):
        err = _error(capsys, exports["ct"], tmp_path / "x.npz", batch_size)
        assert err == f"error: --batch_size={batch_size}: examples per call must be 1 or more\n"
    err = _error(capsys, tmp_path / "nowhere", tmp_path / "x.npz")
    assert "nowhere: no such folder; give the export/ folder" in err
    err = _error(capsys, tmp_path / "x.npz", tmp_path / "x.npz")  # a file, not a folder
    assert "x.npz: no such folder" in err
    shutil.copytree(exports["ct"], tmp_path / "run" / "export")
    err = _error(capsys, tmp_path / "run", tmp_path / "x.npz")  # the workdir, not its export
    assert err == (
        f"error: {tmp_path / 'run' / 'metadata.json'}: no such file; --export must be "
        "the export/ folder that --mode=export wrote; "
        f"{tmp_path / 'run'} holds a run's export: give "
        f"--export={tmp_path / 'run' / 'export'}\n"
    )


def test_an_export_for_other_platforms_is_one_line(tmp_path, capsys):
    folder = _write_export(
        tmp_path / "tpu", _image_function, {"image": ((8, 8), "float32")}, {}, platforms=("tpu",)
    )
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 8, 8), np.float32))
    err = _error(capsys, folder, tmp_path / "x.npz")
    platform = jax.export.default_export_platform()
    assert f"model.jax_export runs on tpu; JAX here runs on {platform}" in err


def _object_npz(path):
    np.savez(path, images=np.array([None, 1], dtype=object))


INPUT_FAULTS = [  # (name, export, writes the input at the path given, message)
    (
        "strings",
        "ct",
        lambda p: np.savez(p, images=np.full((1, 8, 8), "a")),
        r"image is <U1 \[1, 8, 8\]; this model takes image float32 \[N, 8, 8\]",
    ),
    ("objects", "ct", _object_npz, "not a readable .npz .*allow_pickle"),
    (
        "complex numbers",
        "ct",
        lambda p: np.savez(p, images=np.zeros((1, 8, 8), complex)),
        r"image is complex128 \[1, 8, 8\]",
    ),
    ("no rows", "ct", lambda p: np.savez(p, images=np.zeros((0, 8, 8))), r"no examples \(0 rows\)"),
    ("a scalar", "ct", lambda p: np.savez(p, images=np.float32(3)), "its images are images"),
    ("rank", "ct", lambda p: np.savez(p, images=np.zeros((8, 8))), r"image is float64 \[8, 8\]"),
    (
        "channels",
        "ct",
        lambda p: np.savez(p, images=np.zeros((2, 8, 8, 3))),
        r"image is float64 \[2, 8, 8, 3\]; this model takes image float32 \[N, 8, 8\]",
    ),
    (
        "splits of other shapes",
        "ct",
        lambda p: np.savez(p, train_images=np.zeros((2, 8, 8)), test_images=np.zeros((2, 7, 8))),
        r"its images are train_images float64 \[2, 8, 8\], test_images float64 \[2, 7, 8\]",
    ),
    (
        "no image arrays",
        "ct",
        lambda p: np.savez(p, labels=np.zeros(3)),
        "holds labels; expected images or <split>_images, image float32",
    ),
    (
        "an .npy",
        "ct",
        lambda p: np.save(open(p, "wb"), np.zeros((1, 8, 8))),
        r"not a readable .npz \(ValueError: not a zip archive",
    ),
    ("a truncated .npz", "ct", lambda p: _savez_truncated(p), "not a readable .npz"),
    ("an empty file", "ct", lambda p: open(p, "wb").close(), "not a readable .npz"),
    (
        "stays of other sizes",
        "icu",
        lambda p: np.savez(p, **(_stays(3) | {"lengths": np.ones(2, np.int32)})),
        r"arrays values \[3, 4, 37\].*lengths \[2\]",
    ),
    (
        "a stay without descriptors",
        "icu",
        lambda p: np.savez(p, **{k: v for k, v in _stays(2).items() if k != "descriptors"}),
        "holds delta, lengths, mask, values; expected values float32",
    ),
]


def _savez_truncated(path):
    np.savez(path, images=np.zeros((4, 8, 8)))
    _truncate(path, 300)


@pytest.mark.parametrize("fault", INPUT_FAULTS, ids=[f[0] for f in INPUT_FAULTS])
def test_an_npz_the_model_cannot_take_is_one_line(exports, tmp_path, capsys, fault):
    _, export, write, message = fault
    path = str(tmp_path / "x.npz")
    write(path)
    err = _error(capsys, exports[export], path)
    assert err.startswith(f"error: {path}") and re.search(message, err), err


def test_files_and_folders_the_model_cannot_take_are_one_line(exports, tmp_path, capsys):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("no DICOM here")
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "1.dcm").write_bytes(b"\x00" * 200)
    (tmp_path / "scan.nii").write_text("not a NIfTI")
    (tmp_path / "x.csv").write_text("1,2\n")
    (tmp_path / "7.txt").write_text(RECORD)
    (tmp_path / "8.txt").write_text(RECORD.replace("01:37,HR,80", "1:37;HR;80"))
    (tmp_path / "9.txt").write_text("hello\n")
    for export, path, message in [
        ("ct3d", "notes", "no DICOM files; expected one file per slice"),
        ("ct3d", "damaged", "not a readable DICOM file"),
        ("ct3d", "scan.nii", "not a readable NIfTI file"),
        ("ct", "notes", "a CT scan, but this model reads an .npz"),
        ("ct", "x.csv", "not an input this model reads; expected an .npz"),
        ("ct", "7.txt", "not an input this model reads"),
        ("icu", "8.txt", "is not HH:MM,Parameter,Value"),
        ("icu", "9.txt", "not a PhysioNet 2012 record file"),
        ("icu", "scan.nii", "a CT scan, but this model reads a PhysioNet 2012 record file"),
        ("icu", "missing.txt", "no such file or folder"),
        ("icu", "", "--input=: no such file or folder"),
    ]:
        full = str(tmp_path / path) if path else ""
        err = _error(capsys, exports[export], full)
        assert re.search(message, err), (path, err)


@pytest.mark.slow
def test_the_command_line_reports_a_bad_flag_in_one_line(exports, tmp_path):
    np.savez(tmp_path / "x.npz", images=np.full((2, 8, 8), np.nan, np.float32))
    for flags, message in [
        (["--batch_size=abc"], "flag --batch_size=abc: invalid literal for int()"),
        (["--batch_size=0"], "--batch_size=0: examples per call must be 1 or more"),
        (["--nope=1"], "Unknown command line flag 'nope'"),
        (["extra"], "unexpected arguments: extra"),
    ]:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "medjax.infer",
                f"--export={exports['ct']}",
                f"--input={tmp_path / 'x.npz'}",
                *flags,
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        assert result.returncode == 1 and not result.stdout, result
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result
        assert message in result.stderr
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "medjax.infer",
            f"--export={exports['ct']}",
            f"--input={tmp_path / 'x.npz'}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and [
        _strict(line)["scored"] for line in result.stdout.splitlines()
    ] == [False, False]
