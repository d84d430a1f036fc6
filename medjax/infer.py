"""Scores inputs with a model exported by `--mode=export`, and nothing else of medjax's:

  python -m medjax.infer --export=runs/ct/export --input=PATH

PATH is a DICOM series folder or a NIfTI file (.nii, .nii.gz) for a 3D CT model (resampled as
ct_folder does, to the metadata's grid), an .npz (MedMNIST's `<split>_images` arrays, an
`images` array, or one array per input name of the metadata), or a PhysioNet 2012 record file
(.txt) for an ICU model. Prints one JSON object per example: its `id`, the class
`probabilities` (with `probability`, of class 1, for binary classifiers), the per-example
scalar outputs (`score`; the VAE's `nelbo`, ...), and for binary models the
`calibrated_probability` and the `decision` at the threshold chosen on validation (1: class 1),
for multi-class ones the argmax `prediction`; with the `class` it names. Bad input: one
`error:` line, exit status 1.

Imports numpy, jax (jax.export) and, for scans and records only, medjax.data's readers; not
medjax's training code (medjax.train, medjax.tasks) nor its models.
"""

import json
import os
import sys

import jax
import numpy as np
from absl import app, flags, logging
from scipy import special

from medjax import xla_cpu
from medjax.errors import ConfigError

FLAGS = flags.FLAGS
flags.DEFINE_string("export", None, "The export/ folder --mode=export wrote.")
flags.DEFINE_string("input", None, "A DICOM folder, a .nii/.nii.gz, an .npz or a .txt record.")
flags.DEFINE_integer("batch_size", 32, "Examples per call of the model.")
flags.mark_flags_as_required(["export", "input"])
SPLITS = ("train", "val", "test")


def load_model(folder: str):
    """(metadata, jax.export.Exported) of an export/ folder."""
    try:
        with open(os.path.join(folder, "metadata.json")) as f:
            metadata = json.load(f)
        with open(os.path.join(folder, metadata["files"]["jax_export"]), "rb") as f:
            exported = jax.export.deserialize(bytearray(f.read()))
    except (OSError, ValueError, KeyError) as e:
        raise ConfigError(
            f"--export={folder}: no readable exported model ({e}); give the export/ folder "
            "that --mode=export wrote"
        ) from None
    return metadata, exported


def read_inputs(path: str, metadata: dict) -> tuple[list[str], dict[str, np.ndarray]]:
    """(example ids, {input name: [N, ...]}) of the file or folder at `path`."""
    specs = {i["name"]: i for i in metadata["inputs"]}
    if not os.path.exists(path):
        raise ConfigError(f"{path}: no such file or folder; expected {_kinds(metadata)}")
    if os.path.isdir(path) or path.endswith((".nii", ".nii.gz")):
        return _read_scan(path, metadata)
    if path.endswith(".txt") and "descriptors" in specs:
        from medjax.data import physionet2012, time_grid

        grid = metadata["input_contract"]["grid"]
        record = physionet2012.read_record(path)
        arrays = time_grid.to_grid([record], hours=grid["hours"], step_hours=grid["step_hours"])
        return [str(record.record_id)], {name: arrays[name] for name in specs}
    if path.endswith(".npz"):
        return _read_npz(path, specs)
    raise ConfigError(f"{path}: not an input this model reads; expected {_kinds(metadata)}")


def _kinds(metadata: dict) -> str:
    if "descriptors" in {i["name"] for i in metadata["inputs"]}:
        return "a PhysioNet 2012 record file (.txt), or an .npz with the arrays " + ", ".join(
            _describe(i) for i in metadata["inputs"]
        )
    kinds = "an .npz with `images` or MedMNIST's `<split>_images`, " + _describe(
        metadata["inputs"][0]
    )
    if "volume_grid" in metadata["input_contract"]:
        kinds = "a DICOM series folder, a NIfTI file (.nii, .nii.gz), or " + kinds
    return kinds


def _describe(spec: dict) -> str:
    return f"{spec['name']} {spec['dtype']} [{', '.join(['N', *map(str, spec['shape'][1:])])}]"


def _read_scan(path: str, metadata: dict):
    grid = metadata["input_contract"].get("volume_grid")
    if grid is None:
        raise ConfigError(f"{path}: a CT scan, but this model reads {_kinds(metadata)}")
    from medjax.data import ct_volume

    shape = metadata["inputs"][0]["shape"][1:]
    volume = ct_volume.load(
        path, spacing=tuple(grid["spacing_mm"]), shape=tuple(shape), geometry=grid["ct_geometry"]
    )
    scan_id = os.path.basename(os.path.normpath(path)).removesuffix(".gz").removesuffix(".nii")
    return [scan_id], {"image": ct_volume.rounded(volume)[None].astype(np.float32)}


def _read_npz(path: str, specs: dict):
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError) as e:
        raise ConfigError(f"{path}: not a readable .npz ({e})") from None
    if set(specs) <= set(arrays):
        found = {name: arrays[name] for name in specs}
        return [f"{i}" for i in range(len(next(iter(found.values()))))], found
    parts = [(s, arrays[f"{s}_images"]) for s in SPLITS if f"{s}_images" in arrays]
    if "images" in arrays and "image" in specs:
        parts = [("", arrays["images"])]
    if not parts or "image" not in specs:
        expected = ", ".join(_describe(s) for s in specs.values())
        raise ConfigError(
            f"{path} holds {', '.join(sorted(arrays)) or 'nothing'}; expected "
            f"{'images or <split>_images, ' if 'image' in specs else ''}{expected}"
        )
    ids = [f"{split}-{i}" if split else f"{i}" for split, a in parts for i in range(len(a))]
    return ids, {"image": np.concatenate([a for _, a in parts])}


def check_inputs(inputs: dict[str, np.ndarray], metadata: dict, path: str) -> dict:
    """The inputs as the model's dtypes; ConfigError naming the expected shape and dtype."""
    checked = {}
    for spec in metadata["inputs"]:
        array = np.asarray(inputs[spec["name"]])
        shape, dtype = tuple(spec["shape"][1:]), np.dtype(spec["dtype"])
        integer_pixels = dtype == np.uint8 and array.dtype != np.uint8
        if array.shape[1:] != shape or array.ndim != len(shape) + 1 or integer_pixels:
            raise ConfigError(
                f"{path}: {spec['name']} is {array.dtype} {list(array.shape)}; this model "
                f"takes {_describe(spec)} ({metadata['input_contract'].get(spec['name'], '')})"
            )
        checked[spec["name"]] = array.astype(dtype)
    return checked


def score(exported, inputs: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """The exported function's outputs over all examples, `batch_size` at a time."""
    size = len(next(iter(inputs.values())))
    parts = [
        exported.call({k: v[i : i + batch_size] for k, v in inputs.items()})
        for i in range(0, size, batch_size)
    ]
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


def rows(ids: list[str], outputs: dict[str, np.ndarray], metadata: dict) -> list[dict]:
    """One JSON-ready row per example (see the module docstring)."""
    names = metadata["class_names"]
    point, calibration = metadata["operating_point"], metadata["calibration"]
    result = []
    for i, example in enumerate(ids):
        row = {"id": example}
        if "probs" in outputs:
            row["probabilities"] = dict(zip(names, map(float, outputs["probs"][i])))
            if point is not None:
                row["probability"] = row["probabilities"][names[1]]
        row |= {k: float(v[i]) for k, v in outputs.items() if v.ndim == 1}
        if calibration is not None:  # as medjax.stats.calibration.Calibrator
            centered = row["score"] - calibration["center"]
            log_odds = calibration["scale"] * centered + calibration["offset"]
            row["calibrated_probability"] = float(special.expit(log_odds))
        if point is not None:
            row["decision"] = int(row["score"] >= point["threshold"])
            row["class"] = names[row["decision"]]
        elif "probs" in outputs and not metadata["multilabel"]:
            row["prediction"] = int(np.argmax(outputs["probs"][i]))
            row["class"] = names[row["prediction"]]
        result.append(row)
    return result


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    xla_cpu.leave_convolutions_to_eigen()  # before JAX starts its backend
    logging.set_verbosity(logging.WARNING)  # stderr: errors and warnings only
    try:
        metadata, exported = load_model(FLAGS.export)
        ids, inputs = read_inputs(FLAGS.input, metadata)
        outputs = score(exported, check_inputs(inputs, metadata, FLAGS.input), FLAGS.batch_size)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    for row in rows(ids, outputs, metadata):
        print(json.dumps(row))


if __name__ == "__main__":
    app.run(main)
