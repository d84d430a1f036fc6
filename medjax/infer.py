"""Scores inputs with a model exported by `--mode=export`, and nothing else of medjax's:

  python -m medjax.infer --export=runs/ct/export --input=PATH [--batch_size=32]

PATH is a DICOM series folder or a NIfTI file (.nii, .nii.gz) for a 3D CT model (resampled as
ct_folder does, to the metadata's grid), an .npz (MedMNIST's `<split>_images` arrays, an
`images` array, or one array per input name of the metadata), or a PhysioNet 2012 record file
(.txt) for an ICU model. Prints one JSON object (RFC 8259: no NaN) per example, in input order:
its `id`, `scored` (true), the class `probabilities` (with `probability`, of class 1, for binary
classifiers), the per-example scalar outputs (`score`; the VAE's `nelbo`, ...), and for binary
models the `calibrated_probability` and the `decision` at the threshold chosen on validation
(1: class 1), for multi-class ones the argmax `prediction`; with the `class` it names.

An example the model cannot score is not scored: its object is `{"id", "scored": false,
"reason"}`, and the others are scored (exit status 0, and a warning line on stderr). That is an
input with NaN or infinite values (pixels, HU, an ICU stay's values; a descriptor may be NaN,
unknown), values its dtype cannot hold, ICU `mask` other than 0/1, `delta` < 0 or `lengths`
outside 1..T, and an example on which the model's outputs are not finite (it overflowed).
A bad argument, or a file (the export's or the input) that is missing, damaged or not what the
model takes: one `error:` line naming it, exit status 1, nothing printed on stdout.

Imports numpy, jax (jax.export) and, for scans and records only, medjax.data's readers; not
medjax's training code (medjax.train, medjax.tasks) nor its models.
"""

import json
import os
import sys

import numpy as np
from absl import app, flags, logging
from scipy import special

from medjax import xla_cpu
from medjax.errors import ConfigError, NonFiniteValue
from medjax.export_files import describe, line, load_model, named

FLAGS = flags.FLAGS
SPLITS = ("train", "val", "test")
NIFTI = (".nii", ".nii.gz")
UNKNOWN_IS_NAN = ("descriptors",)  # the ICU contract: a descriptor is NaN where unknown
# What time_grid.to_grid gives an ICU model (its `values` input's T steps bound `lengths`).
RANGES = {
    "mask": ("0 or 1", lambda a, steps: (a == 0) | (a == 1)),
    "delta": ("hours >= 0", lambda a, steps: a >= 0),
    "lengths": ("steps from 1 to T", lambda a, steps: (a >= 1) & (a <= steps)),
}


def infer(export: str, path: str, batch_size: int) -> list[dict]:
    """The JSON objects (module docstring) of the examples at `path`, scored by the model in
    the folder `export`; ConfigError for a bad argument or file."""
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch_size={batch_size}: examples per call must be 1 or more")
    metadata, exported = load_model(export)
    try:
        ids, inputs = read_inputs(path, metadata)
    except NonFiniteValue as e:  # a record file (one stay) with a NaN or inf value
        return [_refused(os.path.basename(path).removesuffix(".txt"), line(e, None))]
    inputs, reasons = check_inputs(inputs, metadata, path)
    keep = [i for i in range(len(ids)) if i not in reasons]
    outputs = score(exported, {k: v[keep] for k, v in inputs.items()}, batch_size) if keep else {}
    scored = dict(zip(keep, rows([ids[i] for i in keep], outputs, metadata)))
    return [scored[i] if i in scored else _refused(ids[i], reasons[i]) for i in range(len(ids))]


def read_inputs(path: str, metadata: dict) -> tuple[list[str], dict[str, np.ndarray]]:
    """(example ids, {input name: [N, ...]}) of the file or folder at `path`."""
    specs = {i["name"]: i for i in metadata["inputs"]}
    if not path or not os.path.exists(path):
        raise ConfigError(f"--input={path}: no such file or folder; expected {_kinds(metadata)}")
    name = path.lower()
    if os.path.isdir(path) or name.endswith(NIFTI):
        return _read_scan(path, metadata)
    if name.endswith(".txt") and "grid" in metadata["input_contract"]:
        from medjax.data import physionet2012, time_grid

        grid = metadata["input_contract"]["grid"]
        with np.errstate(over="ignore"):  # values beyond float32 are clipped, as in training
            record = physionet2012.read_record(path)
        try:
            arrays = time_grid.to_grid([record], hours=grid["hours"], step_hours=grid["step_hours"])
        except (OverflowError, ValueError) as e:  # a RecordID beyond int64, ...
            raise ConfigError(
                f"{path}: not a PhysioNet 2012 record this reads ({line(e)})"
            ) from None
        missing = sorted(set(specs) - set(arrays))
        if missing:
            raise ConfigError(
                f"{path}: a record gives no {', '.join(missing)}; this model "
                f"reads {_kinds(metadata)}"
            )
        return [str(record.record_id)], {name: arrays[name] for name in specs}
    if name.endswith(".npz"):
        return _read_npz(path, specs)
    raise ConfigError(f"{path}: not an input this model reads; expected {_kinds(metadata)}")


def _kinds(metadata: dict) -> str:
    described = ", ".join(describe(i) for i in metadata["inputs"])
    if "grid" in metadata["input_contract"]:
        return "a PhysioNet 2012 record file (.txt), or an .npz with the arrays " + described
    if [i["name"] for i in metadata["inputs"]] != ["image"]:
        return "an .npz with the arrays " + described
    kinds = "an .npz with `images` or MedMNIST's `<split>_images`, " + described
    if "volume_grid" in metadata["input_contract"]:
        kinds = "a DICOM series folder, a NIfTI file (.nii, .nii.gz), or " + kinds
    return kinds


def _read_scan(path: str, metadata: dict):
    grid = metadata["input_contract"].get("volume_grid")
    if grid is None:
        raise ConfigError(f"{path}: a CT scan, but this model reads {_kinds(metadata)}")
    from medjax.data import ct_volume

    shape = tuple(metadata["inputs"][0]["shape"][1:])
    try:
        scan = (ct_volume.read_dicom_series if os.path.isdir(path) else ct_volume.read_nifti)(path)
    except OSError as e:
        raise ConfigError(f"{path}: not readable ({e})") from None
    with np.errstate(invalid="ignore", over="ignore"):  # non-finite HU: refused, not scored
        volume = ct_volume.to_grid(
            scan, spacing=tuple(grid["spacing_mm"]), shape=shape, geometry=grid["ct_geometry"]
        )
    if np.isfinite(volume).all():  # else left as it is, for check_inputs to refuse
        volume = ct_volume.rounded(volume)
    scan_id = os.path.basename(os.path.normpath(path))
    suffix = next((s for s in (".nii.gz", ".nii") if scan_id.lower().endswith(s)), "")
    scan_id = scan_id[: len(scan_id) - len(suffix)]
    return [scan_id], {"image": volume[None].astype(np.float32)}


def _read_npz(path: str, specs: dict):
    try:
        with open(path, "rb") as f:
            if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):
                raise ValueError("not a zip archive of .npy arrays, as numpy.savez writes")
        with np.load(path, allow_pickle=False) as npz:
            keys = sorted(npz.files)
            wanted = _npz_keys(keys, specs)
            arrays = {key: npz[key] for key in wanted}
    except Exception as e:  # zipfile, zlib, numpy's format checks (object arrays: no pickle)
        raise ConfigError(f"{path}: not a readable .npz ({named(e)})") from None
    if not arrays:
        expected = ", ".join(describe(s) for s in specs.values())
        raise ConfigError(
            f"{path} holds {', '.join(keys) or 'nothing'}; expected "
            f"{'images or <split>_images, ' if 'image' in specs else ''}{expected}"
        )
    if set(specs) <= set(arrays):
        return [f"{i}" for i in range(_examples(arrays, path))], arrays
    parts = [(key.removesuffix("images").removesuffix("_"), a) for key, a in arrays.items()]
    if any(a.ndim == 0 for _, a in parts) or len({(a.shape[1:], a.dtype) for _, a in parts}) > 1:
        found = ", ".join(f"{key} {a.dtype} {list(a.shape)}" for key, a in arrays.items())
        raise ConfigError(
            f"{path}: its images are {found}; expected {describe(specs['image'])} in each"
        )
    ids = [f"{split}-{i}" if split else f"{i}" for split, a in parts for i in range(len(a))]
    return ids, {"image": np.concatenate([a for _, a in parts])}


def _npz_keys(keys: list[str], specs: dict) -> list[str]:
    """The arrays of an .npz that hold the model's inputs (none: it holds none)."""
    if set(specs) <= set(keys):
        return list(specs)
    if "image" not in specs:
        return []
    return (
        ["images"] if "images" in keys else [f"{s}_images" for s in SPLITS if f"{s}_images" in keys]
    )


def _examples(arrays: dict[str, np.ndarray], path: str) -> int:
    """The examples in each array (the length of its first axis): one number, else ConfigError."""
    sizes = {key: (len(a) if np.ndim(a) else None) for key, a in arrays.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        found = ", ".join(f"{key} {list(np.shape(a))}" for key, a in arrays.items())
        raise ConfigError(
            f"{path}: arrays {found}; expected one example per row, the same number of rows in each"
        )
    return next(iter(sizes.values()))


def check_inputs(
    inputs: dict[str, np.ndarray], metadata: dict, path: str
) -> tuple[dict[str, np.ndarray], dict[int, str]]:
    """(the inputs as the model's dtypes, {example: why it is not scored}); ConfigError for
    arrays of another shape or kind than the model's, or no examples."""
    checked, reasons, inputs = {}, {}, dict(inputs)
    for spec in metadata["inputs"]:
        array = np.asarray(inputs[spec["name"]])
        shape, dtype = tuple(spec["shape"][1:]), np.dtype(spec["dtype"])
        numbers = array.dtype.kind in "iuf" and (dtype != np.uint8 or array.dtype == np.uint8)
        if array.shape[1:] != shape or array.ndim != len(shape) + 1 or not numbers:
            raise ConfigError(
                f"{path}: {spec['name']} is {array.dtype} {list(array.shape)}; this model "
                f"takes {describe(spec)} ({metadata['input_contract'].get(spec['name'], '')})"
            )
        inputs[spec["name"]] = array
        with np.errstate(over="ignore", invalid="ignore"):
            checked[spec["name"]] = array.astype(dtype)
    if not _examples(checked, path):
        raise ConfigError(f"{path}: no examples (0 rows); expected at least one")
    for name, cast in checked.items():
        for i, reason in _value_problems(name, inputs[name], cast, metadata):
            reasons[i] = f"{reasons[i]}; {reason}" if i in reasons else reason
    return checked, reasons


def _value_problems(name: str, array: np.ndarray, cast: np.ndarray, metadata: dict):
    """(example, reason) for each example whose values of input `name` the model cannot take."""
    with np.errstate(invalid="ignore", over="ignore"):
        if cast.dtype.kind == "f":
            unknown = name in UNKNOWN_IS_NAN
            bad = np.isinf(cast) if unknown else ~np.isfinite(cast)
            what = "infinite (NaN: unknown)" if unknown else "not finite (NaN, inf, or beyond "
            what += "" if unknown else f"{cast.dtype})"
        else:
            info = np.iinfo(cast.dtype)
            bad = ~((array >= info.min) & (array <= info.max) & (array == np.round(array)))
            what = f"not whole numbers within {cast.dtype}"
        problems = [(bad, what)]
        shapes = {s["name"]: s["shape"] for s in metadata["inputs"]}
        steps = shapes["values"][1] if len(shapes.get("values", ())) == 3 else None
        if name in RANGES and steps is not None:
            expected, valid = RANGES[name]
            problems.append((~bad & ~valid(cast, steps), f"outside {expected} (T = {steps})"))
    for mask, what in problems:
        counts = mask.reshape(len(mask), -1).sum(axis=1)
        for i in np.flatnonzero(counts):
            yield int(i), f"{name}: {counts[i]} of {mask[i].size} values {what}"


def score(exported, inputs: dict[str, np.ndarray], batch_size: int) -> dict[str, np.ndarray]:
    """The exported function's outputs over all examples, `batch_size` at a time."""
    size = len(next(iter(inputs.values())))
    parts = []
    for i in range(0, size, batch_size):
        try:
            parts.append(exported.call({k: v[i : i + batch_size] for k, v in inputs.items()}))
        except Exception as e:  # XLA's runtime errors (out of memory, ...) and compile errors
            raise ConfigError(
                f"the exported model failed on examples {i}..{min(i + batch_size, size) - 1} "
                f"({named(e)}); a smaller --batch_size needs less memory"
            ) from None
    return {k: np.concatenate([np.asarray(p[k]) for p in parts]) for k in parts[0]}


def rows(ids: list[str], outputs: dict[str, np.ndarray], metadata: dict) -> list[dict]:
    """One JSON-ready row per example (see the module docstring)."""
    names = metadata["class_names"]
    point, calibration = metadata["operating_point"], metadata["calibration"]
    result = []
    for i, example in enumerate(ids):
        overflowed = [k for k, v in outputs.items() if not np.isfinite(v[i]).all()]
        if overflowed:
            result.append(
                _refused(
                    example,
                    f"the model's {', '.join(overflowed)}: not finite "
                    "(NaN or inf), the model overflowed on this input",
                )
            )
            continue
        row = {"id": _text(example), "scored": True}
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


def _refused(example: str, reason: str) -> dict:
    return {"id": _text(example), "scored": False, "reason": f"not scored: {reason}"}


def _text(s: str) -> str:
    """`s` as valid Unicode (a file name's undecodable bytes become U+FFFD)."""
    return s.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def run(export: str, path: str, batch_size: int) -> int:
    """`python -m medjax.infer`: prints the JSON lines, or one error line; the exit status."""
    try:
        records = infer(export, path, batch_size)
    except ConfigError as e:
        print(f"error: {line(e, None)}", file=sys.stderr)
        return 1
    lines, refused = [], 0
    for record in records:
        try:
            lines.append(json.dumps(record, allow_nan=False))
        except ValueError:  # not expected after the checks in rows(); never printed as NaN
            record = _refused(record["id"], "a result that is not finite")
            lines.append(json.dumps(record, allow_nan=False))
        refused += not record["scored"]
    try:
        print("\n".join(lines), flush=True)
    except BrokenPipeError:  # a reader that stopped early (| head): no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    if refused:
        print(
            f"warning: {refused} of {len(lines)} examples not scored; their objects say why",
            file=sys.stderr,
        )
    return 0


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parsing, a bad flag reported in one line."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        sys.exit(f"error: {line(e)} (flags: --export=FOLDER --input=PATH [--batch_size=N])")


def main(argv):
    if len(argv) > 1:
        sys.exit(
            f"error: unexpected arguments: {' '.join(argv[1:])}; medjax.infer takes "
            "--export=FOLDER --input=PATH [--batch_size=N]"
        )
    xla_cpu.leave_convolutions_to_eigen()  # before JAX starts its backend
    logging.set_verbosity(logging.WARNING)  # stderr: errors and warnings only
    sys.exit(run(FLAGS.export, FLAGS.input, FLAGS.batch_size))


if __name__ == "__main__":  # flags only then: importing this module (tests) defines none
    flags.DEFINE_string("export", None, "The export/ folder --mode=export wrote.")
    flags.DEFINE_string("input", None, "A DICOM folder, a .nii/.nii.gz, an .npz or a .txt record.")
    flags.DEFINE_integer("batch_size", 32, "Examples per call of the model: 1 or more.")
    flags.mark_flags_as_required(["export", "input"])
    app.run(main, flags_parser=parse_flags)
