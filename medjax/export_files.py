"""The files of an export/ folder (medjax.train.export) as `medjax.infer` reads them:
metadata.json, checked for every key it reads, and the serialised jax.export function, checked
against it up front (its inputs' and outputs' names, shapes and dtypes, its platforms), so that
a damaged or mismatched export is one ConfigError naming the file, not an error of JAX's."""

import json
import math
import os

import jax
import numpy as np

from medjax.errors import ConfigError

METADATA = "metadata.json"
AGAIN = "export the run again with --mode=export"


def load_model(folder: str):
    """(metadata, jax.export.Exported) of an export/ folder, each checked against the other."""
    metadata = read_metadata(folder)
    path = os.path.join(folder, metadata["files"]["jax_export"])
    try:
        with open(path, "rb") as f:
            serialized = f.read()
    except OSError as e:
        raise ConfigError(f"{path}: {e.strerror or e}; the export is incomplete: {AGAIN}") from None
    if not serialized:
        raise ConfigError(f"{path} is empty; {AGAIN}")
    try:
        exported = jax.export.deserialize(bytearray(serialized))
    except Exception as e:  # a damaged flatbuffer fails as it may: struct.error, IndexError, ...
        raise ConfigError(
            f"{path}: not a readable jax.export model ({named(e)}); it is "
            f"damaged or truncated: {AGAIN}"
        ) from None
    _check_function(exported, metadata, folder, path)
    return metadata, exported


def read_metadata(folder: str) -> dict:
    """The export folder's metadata.json, checked for what this module reads."""
    if not os.path.isdir(folder):
        raise ConfigError(
            f"--export={folder}: no such folder; give the export/ folder that "
            "--mode=export wrote (<workdir>/export)"
        )
    path = os.path.join(folder, METADATA)
    if not os.path.exists(path):
        inside = os.path.join(folder, "export")
        hint = (
            f"; {folder} holds a run's export: give --export={inside}"
            if os.path.isfile(os.path.join(inside, METADATA))
            else ""
        )
        raise ConfigError(
            f"{path}: no such file; --export must be the export/ folder that "
            f"--mode=export wrote{hint}"
        )
    try:
        with open(path, encoding="utf-8") as f:
            metadata = json.load(f, parse_constant=_no_constant)
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ConfigError(f"{path}: not readable JSON ({line(e)}); {AGAIN}") from None
    problem = _metadata_problem(metadata)
    if problem:
        raise ConfigError(f"{path}: {problem}; {AGAIN}")
    return metadata


def _no_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _spec(s) -> bool:
    """{name, shape ["b", sizes...], dtype (numeric)}, as metadata.json describes an array."""
    if not (isinstance(s, dict) and isinstance(s.get("name"), str) and s["name"]):
        return False
    shape, dtype = s.get("shape"), s.get("dtype")
    if not (isinstance(shape, list) and shape[:1] == ["b"] and isinstance(dtype, str)):
        return False
    try:
        kind = np.dtype(dtype).kind
    except (TypeError, ValueError):
        return False
    sizes = shape[1:]
    return kind in "iuf" and all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in sizes
    )


def _specs(v) -> bool:
    return (
        isinstance(v, list)
        and bool(v)
        and all(map(_spec, v))
        and len({s["name"] for s in v}) == len(v)
    )


def _metadata_problem(m) -> str | None:
    """What is wrong with the metadata for this module, or None."""
    if not isinstance(m, dict):
        return f"holds a JSON {type(m).__name__}; expected an object"
    specs = 'a list of {"name", "shape": ["b", sizes...], "dtype"}, names unique'
    checks = [
        (
            "class_names",
            lambda v: isinstance(v, list) and v and all(isinstance(c, str) for c in v),
            "a list of class names",
        ),
        ("multilabel", lambda v: isinstance(v, bool), "true or false"),
        ("inputs", _specs, specs),
        ("outputs", _specs, specs),
        ("input_contract", lambda v: isinstance(v, dict), "an object"),
        (
            "operating_point",
            lambda v: v is None or isinstance(v, dict) and _number(v.get("threshold")),
            'null or {"threshold": a finite number, ...}',
        ),
        (
            "calibration",
            lambda v: (
                v is None
                or isinstance(v, dict)
                and all(_number(v.get(k)) for k in ("scale", "offset", "center"))
            ),
            'null or {"scale", "offset", "center": finite numbers, ...}',
        ),
        (
            "files",
            lambda v: (
                isinstance(v, dict)
                and isinstance(v.get("jax_export"), str)
                and bool(v["jax_export"])
            ),
            '{"jax_export": a file name, ...}',
        ),
    ]
    for key, valid, expected in checks:
        if key not in m:
            return f"no {key!r}; expected {expected}"
        if not valid(m[key]):
            return f"{key} is {json.dumps(m[key])[:80]}; expected {expected}"
    contract, names = m["input_contract"], [s["name"] for s in m["inputs"]]
    grid, volume = contract.get("grid"), contract.get("volume_grid")
    if grid is not None and not (
        isinstance(grid, dict)
        and all(_number(grid.get(k)) and grid[k] > 0 for k in ("hours", "step_hours"))
    ):
        return (
            f"input_contract.grid is {json.dumps(grid)[:80]}; expected positive hours, step_hours"
        )
    if volume is not None and not (
        isinstance(volume, dict)
        and isinstance(volume.get("ct_geometry"), str)
        and isinstance(volume.get("spacing_mm"), list)
        and len(volume["spacing_mm"]) == 3
        and all(_number(s) and s > 0 for s in volume["spacing_mm"])
        and names == ["image"]
        and len(m["inputs"][0]["shape"]) == 4
    ):
        return (
            f"input_contract.volume_grid is {json.dumps(volume)[:80]}; expected "
            "spacing_mm (3 sizes > 0) and ct_geometry, for one 3D `image` input"
        )
    outputs = {o["name"]: o["shape"] for o in m["outputs"]}
    binary = m["operating_point"] is not None or m["calibration"] is not None
    if binary and (outputs.get("score") != ["b"] or len(m["class_names"]) != 2):
        return "an operating point or calibration, but not 2 classes and a `score` output [b]"
    if "probs" in outputs and outputs["probs"] != ["b", len(m["class_names"])]:
        return f"probs of shape {outputs['probs']} for {len(m['class_names'])} class_names"
    return None


def _check_function(exported, metadata: dict, folder: str, path: str) -> None:
    """ConfigError unless the serialised function runs here and takes and returns the arrays
    metadata.json describes."""
    platform = jax.export.default_export_platform()
    if platform not in exported.platforms:
        raise ConfigError(
            f"{path} runs on {', '.join(exported.platforms)}; JAX here runs on "
            f"{platform}: run it on a machine with one of those"
        )
    args, kwargs = jax.tree_util.tree_unflatten(exported.in_tree, exported.in_avals)
    outputs = jax.tree_util.tree_unflatten(exported.out_tree, exported.out_avals)
    if kwargs or len(args) != 1 or not isinstance(args[0], dict) or not isinstance(outputs, dict):
        raise ConfigError(
            f"{path} maps {exported.in_tree} to {exported.out_tree}; expected a "
            f"function of one dict of inputs to a dict of outputs: {AGAIN}"
        )
    pairs = [("inputs", args[0], metadata["inputs"]), ("outputs", outputs, metadata["outputs"])]
    for what, avals, specs in pairs:
        described = sorted(describe(s) for s in specs)
        actual = sorted(_describe_aval(str(n), a) for n, a in avals.items())
        if described != actual:
            raise ConfigError(
                f"{os.path.join(folder, METADATA)} disagrees with {path}: its {what} are "
                f"{'; '.join(described)}, the function's {'; '.join(actual)}; {AGAIN}"
            )


def _describe_aval(name: str, aval) -> str:
    dims = ["N" if i == 0 and not isinstance(d, int) else str(d) for i, d in enumerate(aval.shape)]
    return f"{name} {aval.dtype.name} [{', '.join(dims)}]"


def describe(spec: dict) -> str:
    return f"{spec['name']} {spec['dtype']} [{', '.join(['N', *map(str, spec['shape'][1:])])}]"


def line(error: Exception, limit: int | None = 300) -> str:
    """The message of `error` on one line, cut at `limit` characters (another library's)."""
    return " ".join(str(error).split())[:limit]


def named(error: Exception) -> str:
    """`error` on one line with its type (struct.error, ValueError: ...)."""
    kind = type(error)
    module = "" if kind.__module__ == "builtins" else f"{kind.__module__}."
    return f"{module}{kind.__qualname__}: {line(error)}"
