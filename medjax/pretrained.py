"""Starting from weights learned elsewhere: another run's best checkpoint (`init.from_workdir`)
or a torchvision ResNet state dict on disk (`init.from_file`, .safetensors or .npz, read
without PyTorch).

Tensors are named by their path in the model's variables, "params/stage0_block0/conv1/kernel"
or "batch_stats/stem_norm/mean". Every tensor of the model whose name and shape match one of
the source's is loaded; the others keep their fresh initialisation, and `load` says why.
"""

import os
import re

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import traverse_util

from medjax import ensemble_file
from medjax.errors import ConfigError

FILE_TYPES = (".safetensors", ".npz")


def flatten(variables: dict) -> dict[str, np.ndarray]:
    """{"params/a/kernel": array, ...} of a {collection: tree} dict."""
    return traverse_util.flatten_dict(variables, sep="/")


def from_workdir(workdir: str) -> dict[str, np.ndarray]:
    """The params and batch statistics of the best checkpoint of `workdir` (its latest where
    it kept no best), the moving average of the params where the run kept one (what its
    evaluation used). An ensemble's workdir is refused, naming a member to start from."""
    ensemble_file.refuse(
        workdir, "a model starts from one run's weights", "--config.init.from_workdir"
    )
    steps = {}
    for kind in ("best", "latest"):
        folder = os.path.join(workdir, "checkpoints", kind)
        steps[kind] = sorted(int(s) for s in os.listdir(folder) if s.isdigit()) if (
            os.path.isdir(folder)) else []  # fmt: skip
    kind = "best" if steps["best"] else "latest"
    if not steps[kind]:
        raise ConfigError(
            f"init.from_workdir={workdir!r} holds no checkpoint (no {workdir}/checkpoints/best/"
            "<step>); give the workdir of a finished --mode=train run"
        )
    path = os.path.abspath(
        os.path.join(workdir, "checkpoints", kind, str(steps[kind][-1]), "state")
    )
    stored = ocp.StandardCheckpointer().metadata(path).item_metadata.tree
    params = "ema_params" if stored.get("ema_params") else "params"
    wanted = {name: stored[name] for name in (params, "batch_stats") if stored.get(name)}
    abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), wanted)
    restored = ocp.PyTreeCheckpointer().restore(
        path,
        args=ocp.args.PyTreeRestore(
            item=abstract,
            restore_args=jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), abstract),
            partial_restore=True,
        ),
    )
    restored["params"] = restored.pop(params)
    return flatten(restored)


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """A PyTorch state dict saved as .safetensors or .npz: {name: array}."""
    if not path.endswith(FILE_TYPES):
        raise ConfigError(
            f"init.from_file={path!r}: give a state dict as {' or '.join(FILE_TYPES)} (from "
            "PyTorch: safetensors.torch.save_file(model.state_dict(), 'resnet18.safetensors'))"
        )
    if not os.path.isfile(path):
        raise ConfigError(f"init.from_file={path!r}: no such file")
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as stored:
            return dict(stored)
    from safetensors.numpy import load_file

    return load_file(path)


_TORCHVISION_STEM = {"conv1": ("stem_conv", "conv"), "bn1": ("stem_norm", "norm"),
                    "fc": ("head", "dense")}  # fmt: skip
_TORCHVISION_BLOCK = re.compile(r"layer(\d+)\.(\d+)\.(conv\d|bn\d|downsample\.[01])")
_TORCHVISION_PROJECTION = {"downsample.0": ("conv_proj", "conv"),
                           "downsample.1": ("norm_proj", "norm")}  # fmt: skip
_NORM_TENSORS = {"weight": "params/{}/scale", "bias": "params/{}/bias",
                 "running_mean": "batch_stats/{}/mean",
                 "running_var": "batch_stats/{}/var"}  # fmt: skip


def _flax_module(module: str) -> tuple[str | None, str | None]:
    """A torchvision ResNet module's name -> (medjax's, its kind: conv, norm or dense)."""
    if module in _TORCHVISION_STEM:
        return _TORCHVISION_STEM[module]
    match = _TORCHVISION_BLOCK.fullmatch(module)
    if not match:
        return None, None
    stage, block, inner = match.groups()
    inner, kind = _TORCHVISION_PROJECTION.get(inner) or (
        (inner, "conv") if inner.startswith("conv") else ("norm" + inner[2:], "norm")
    )
    return f"stage{int(stage) - 1}_block{block}/{inner}", kind


def torchvision_resnet(state_dict: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A torchvision ResNet's state dict in medjax.models.cnn.ResNet's names and layouts:
    convolution kernels [O, I, *k] -> [*k, I, O], the classifier's [O, I] -> [I, O], batch norm
    weight and bias -> scale and bias, running statistics -> batch_stats. Names it does not
    know (num_batches_tracked too) are left out."""
    converted = {}
    for name, value in state_dict.items():
        module, _, tensor = name.rpartition(".")
        flax_module, kind = _flax_module(module)
        value = np.asarray(value)
        if kind in ("conv", "dense") and tensor == "weight":
            converted[f"params/{flax_module}/kernel"] = np.moveaxis(value, (0, 1), (-1, -2))
        elif kind == "dense" and tensor == "bias":
            converted[f"params/{flax_module}/bias"] = value
        elif kind == "norm" and tensor in _NORM_TENSORS:
            converted[_NORM_TENSORS[tensor].format(flax_module)] = value
    return converted


def load(variables: dict, source: dict[str, np.ndarray], described: str) -> tuple[dict, dict]:
    """`variables` ({collection: tree}) with every tensor of `source` (flat names) whose name and
    shape match loaded, and a summary: {"source", "loaded", "skipped" {name: why},
    "unused" (the source's names the model lacks)}. A 3-channel first convolution loads into
    a 1-channel one summed over its input channels (ImageNet weights on grayscale images), and
    a 2D 1x1 kernel into a 3D 1x1x1 one (the shortcut projections of ACS models, whose wider
    kernels are 2D). ConfigError when nothing matches."""
    flat = flatten(variables)
    loaded, skipped = {}, {}
    for name, value in flat.items():
        if name not in source:
            skipped[name] = "not in the source"
            continue
        theirs = np.asarray(source[name])
        if theirs.ndim >= 3 and theirs.shape[-2] == 3 and value.shape[-2] == 1:
            theirs = theirs.sum(axis=-2, keepdims=True)
        if theirs.ndim >= 3 and value.shape == (1, *theirs.shape):
            theirs = theirs[None]  # a 2D kernel as a 3D one of depth 1: the same map per slice
        if theirs.shape != value.shape:
            skipped[name] = f"shape {theirs.shape} in the source, {value.shape} here"
            continue
        loaded[name] = theirs.astype(value.dtype)
    if not loaded:
        raise ConfigError(
            f"{described}: none of its {len(source)} tensors matches the model's names and shapes "
            f"(0 of {len(flat)} loaded; the model's are named like {next(iter(flat))!r}); "
            "check that the source is the same kind of model"
        )
    summary = {"source": described, "loaded": sorted(loaded), "skipped": skipped,
               "unused": sorted(source.keys() - flat.keys())}  # fmt: skip
    return traverse_util.unflatten_dict(flat | loaded, sep="/"), summary


def describe(summary: dict) -> str:
    """One line: what was loaded from where, and what was not."""
    skipped = "; ".join(f"{name}: {why}" for name, why in list(summary["skipped"].items())[:4])
    more = len(summary["skipped"]) - 4
    total = len(summary["loaded"]) + len(summary["skipped"])
    return (
        f"initialised from {summary['source']}: {len(summary['loaded'])} of {total} tensors loaded"
        + (
            f"; kept fresh: {skipped}" + (f" (and {more} more)" if more > 0 else "")
            if skipped
            else ""
        )
    )


def source_of(init) -> tuple[dict[str, np.ndarray], str] | None:
    """The tensors the `init` config names, and a description; None where it names none."""
    if init.from_workdir and init.from_file:
        raise ConfigError("init.from_workdir and init.from_file are exclusive: give one")
    if init.from_workdir:
        return from_workdir(init.from_workdir), f"the run in {init.from_workdir}"
    if init.from_file:
        state_dict = read_state_dict(init.from_file)
        converted = torchvision_resnet(state_dict)
        if not converted:
            raise ConfigError(
                f"init.from_file={init.from_file!r}: none of its {len(state_dict)} tensors has a "
                "torchvision ResNet name (conv1.weight, layer1.0.bn1.running_mean, fc.bias, ...)"
            )
        return converted, f"the torchvision ResNet weights {init.from_file}"
    return None
