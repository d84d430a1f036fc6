"""Starting from other weights (init.from_workdir, init.from_file) and freezing (init.freeze)."""

import json
import os

import jax
import numpy as np
import optax
import pytest
from flax import traverse_util
from test_medmnist import tiny_medmnist, write_npz

from medjax import models, optim, parallel, pretrained, train
from medjax.errors import ConfigError
from medjax.settings import defaults
from medjax.tasks import build_task
from medjax.train import loop
from medjax.train.state import open_checkpoints


def _flat(tree):
    return traverse_util.flatten_dict(jax.device_get(tree), sep="/")


def _restored(config, workdir, kind="latest"):
    task = build_task(config)
    ckpts, abstract = open_checkpoints(config, task, workdir, parallel.data_mesh())
    state, _ = getattr(ckpts, f"restore_{kind}")(abstract)
    ckpts.close()
    return state


def _eleven_class_config(tmp_path, source_config):
    """A tiny OrganAMNIST run (11 classes, 1 channel) with the source's backbone."""
    write_npz(tmp_path, "organamnist")
    config = tiny_medmnist("organamnist", tmp_path, steps=10)
    model = source_config.model
    config.model.update(name=model.name, width=model.width, small_input=model.small_input)
    config.explain.num_examples = 0
    return config


def test_from_workdir_loads_the_backbone_and_keeps_a_fresh_head(finished_tiny_run, tmp_path):
    source = _restored(finished_tiny_run.config, finished_tiny_run.workdir, "best")
    config = _eleven_class_config(tmp_path, finished_tiny_run.config)
    config.init.from_workdir = finished_tiny_run.workdir
    task, mesh = build_task(config), parallel.data_mesh()
    workdir = str(tmp_path / "run")
    os.makedirs(workdir)
    tx = optim.run_optimizer(config)[0]
    state = loop._initial_state(config, task, tx, mesh, pretrained.source_of(config.init), workdir)
    fresh = loop._initial_state(config, task, tx, mesh, None, workdir)

    for collection in ("params", "batch_stats"):
        ours, theirs = _flat(getattr(state, collection)), _flat(getattr(source, collection))
        new = _flat(getattr(fresh, collection))
        for name, value in ours.items():
            if name.startswith("head/"):  # 2 classes there, 11 here: a fresh head
                assert value.shape != theirs[name].shape
                np.testing.assert_array_equal(value, new[name])
            else:
                np.testing.assert_array_equal(value, theirs[name])
    with open(os.path.join(workdir, "init.json")) as f:
        summary = json.load(f)
    assert set(summary["skipped"]) == {"params/head/bias", "params/head/kernel"}
    assert summary["skipped"]["params/head/kernel"].startswith(
        "shape (64, 2) in the source, (64, 11) here"
    )
    assert len(summary["loaded"]) == len(_flat(state.params)) + len(_flat(state.batch_stats)) - 2


@pytest.mark.slow
def test_frozen_backbone_stays_bit_identical_and_keeps_no_optimiser_state(
    finished_tiny_run, tmp_path
):
    config = _eleven_class_config(tmp_path, finished_tiny_run.config)
    config.init.update(from_workdir=finished_tiny_run.workdir, freeze="backbone")
    workdir = str(tmp_path / "probe")
    train.train_and_evaluate(config, workdir)
    source = _flat(_restored(finished_tiny_run.config, finished_tiny_run.workdir, "best").params)
    state = _restored(config, workdir)
    assert int(state.step) == 10
    trained = _flat(state.params)
    for name, value in trained.items():
        if not name.startswith("head/"):
            np.testing.assert_array_equal(value, source[name])
    tx, mesh = optim.run_optimizer(config)[0], parallel.data_mesh()
    first = loop._initial_state(config, build_task(config), tx, mesh, None, workdir)
    assert not np.array_equal(trained["head/kernel"], _flat(first.params)["head/kernel"])
    # Adam's two moments exist for the head's two tensors only.
    moments = [x for x in jax.tree.leaves(state.opt_state) if np.ndim(x) > 0]
    assert sorted(x.shape for x in moments) == sorted(
        [trained["head/kernel"].shape, trained["head/bias"].shape] * 2
    )
    with open(os.path.join(workdir, "report.md")) as f:
        report = f.read()
    assert f"- initialised from the run in {finished_tiny_run.workdir}: " in report
    assert "- frozen (not trained): backbone" in report


def test_freeze_patterns_name_paths_or_their_folders():
    params = {"stem_conv": {"kernel": 0}, "stage0_block0": {"conv1": {"kernel": 0}},
              "stage1_block0": {"conv1": {"kernel": 0}},
              "head": {"kernel": 0, "bias": 0}}  # fmt: skip
    frozen = lambda freeze: sorted(  # noqa: E731
        k for k, v in _flat(optim.frozen_mask(params, freeze)).items() if v
    )
    assert frozen("backbone") == ["stage0_block0/conv1/kernel", "stage1_block0/conv1/kernel",
                                  "stem_conv/kernel"]  # fmt: skip
    assert frozen("stem_*, stage0_*") == ["stage0_block0/conv1/kernel", "stem_conv/kernel"]
    assert frozen("head/bias") == ["head/bias"]
    with pytest.raises(ConfigError, match="'stage9_\\*' matches no parameter"):
        frozen("stem_conv,stage9_*")
    with pytest.raises(ConfigError, match="no layer named head"):
        optim.frozen_mask({"encoder": {"kernel": 0}}, "backbone")
    with pytest.raises(ConfigError, match="'stem_conv,stage\\*,head' freezes all 5 parameters"):
        frozen("stem_conv,stage*,head")


def test_frozen_parameters_get_no_update_nor_decay():
    params = {"body": {"kernel": np.ones((2, 2), np.float32)}, "head": {"kernel": np.ones(2)}}
    opt = defaults.get_config().optimizer
    opt.update(weight_decay=0.5, warmup_steps=0)
    tx, _ = optim.create_optimizer(opt, 10, freeze="body")
    state = tx.init(params)
    grads = jax.tree.map(np.ones_like, params)
    updates, _ = tx.update(grads, state, params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(new["body"]["kernel"], params["body"]["kernel"])
    assert np.all(new["head"]["kernel"] < 1)


# torchvision's ResNet-18 names and shapes: stem, four stages of two basic blocks, classifier.
def torchvision_resnet18_state_dict(num_classes=10, seed=0):
    rng = np.random.default_rng(seed)
    state = {}

    def conv(name, out, inp, k):
        state[f"{name}.weight"] = rng.normal(0, (2 / (inp * k * k)) ** 0.5, (out, inp, k, k))

    def bn(name, n):
        state[f"{name}.weight"] = rng.uniform(0.5, 1.5, n)
        state[f"{name}.bias"] = rng.normal(0, 0.1, n)
        state[f"{name}.running_mean"] = rng.normal(0, 0.1, n)
        state[f"{name}.running_var"] = rng.uniform(0.5, 1.5, n)
        state[f"{name}.num_batches_tracked"] = np.array(7)

    conv("conv1", 64, 3, 7)
    bn("bn1", 64)
    inp = 64
    for stage, out in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            name = f"layer{stage}.{block}"
            conv(f"{name}.conv1", out, inp if block == 0 else out, 3)
            bn(f"{name}.bn1", out)
            conv(f"{name}.conv2", out, out, 3)
            bn(f"{name}.bn2", out)
            if block == 0 and stage > 1:
                conv(f"{name}.downsample.0", out, inp, 1)
                bn(f"{name}.downsample.1", out)
        inp = out
    state["fc.weight"] = rng.normal(0, 0.05, (num_classes, 512))
    state["fc.bias"] = rng.normal(0, 0.05, num_classes)
    return {k: v.astype(np.float32) for k, v in state.items()}


def _conv(x, w, stride, pad):
    """PyTorch's conv2d in numpy, float64: x [N, C, H, W], w [O, C, k, k]."""
    x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[-1]
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))
    return np.einsum("nchwij,ocij->nohw", windows[:, :, ::stride, ::stride], w)


def _numpy_resnet18(state, x):
    """torchvision's ResNet-18 forward pass in eval mode, from its state dict."""
    s = {k: v.astype(np.float64) for k, v in state.items()}

    def bn(x, name):
        shape = (1, -1, 1, 1)
        scale = s[f"{name}.weight"] / np.sqrt(s[f"{name}.running_var"] + 1e-5)
        return (x - s[f"{name}.running_mean"].reshape(shape)) * scale.reshape(shape) + s[
            f"{name}.bias"
        ].reshape(shape)

    relu = lambda x: np.maximum(x, 0)  # noqa: E731
    x = relu(bn(_conv(x, s["conv1.weight"], 2, 3), "bn1"))
    x = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    x = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(2, 3))[:, :, ::2, ::2]
    x = x.max(axis=(-1, -2))
    for stage in range(1, 5):
        for block in range(2):
            name, stride = f"layer{stage}.{block}", 2 if stage > 1 and block == 0 else 1
            y = relu(bn(_conv(x, s[f"{name}.conv1.weight"], stride, 1), f"{name}.bn1"))
            y = bn(_conv(y, s[f"{name}.conv2.weight"], 1, 1), f"{name}.bn2")
            if f"{name}.downsample.0.weight" in s:
                x = bn(
                    _conv(x, s[f"{name}.downsample.0.weight"], stride, 0), f"{name}.downsample.1"
                )
            x = relu(y + x)
    return x.mean(axis=(2, 3)) @ s["fc.weight"].T + s["fc.bias"]


@pytest.mark.parametrize("suffix", [".safetensors", ".npz"])
def test_torchvision_weights_give_torchvisions_outputs(tmp_path, suffix):
    state_dict = torchvision_resnet18_state_dict()
    path = str(tmp_path / f"resnet18{suffix}")
    if suffix == ".npz":
        np.savez(path, **state_dict)
    else:
        from safetensors.numpy import save_file

        save_file(state_dict, path)
    init = defaults.get_config().init
    init.from_file = path
    model = models.create("resnet18", num_classes=10, small_input=False)
    images = np.random.default_rng(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    fresh = model.init(jax.random.key(0), images, train=False)
    variables, summary = pretrained.load(dict(fresh), *pretrained.source_of(init))
    assert summary["skipped"] == {} and summary["unused"] == []
    logits = model.apply(variables, images, train=False)
    expected = _numpy_resnet18(state_dict, images.transpose(0, 3, 1, 2).astype(np.float64))
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


def test_rgb_stem_loads_into_a_grayscale_model_summed_over_colours():
    state_dict = torchvision_resnet18_state_dict()
    model = models.create("resnet18", num_classes=10, small_input=False)
    fresh = model.init(jax.random.key(0), np.zeros((1, 32, 32, 1)), train=False)
    variables, summary = pretrained.load(
        dict(fresh), pretrained.torchvision_resnet(state_dict), "weights"
    )
    assert summary["skipped"] == {}
    expected = state_dict["conv1.weight"].sum(axis=1, keepdims=True).transpose(2, 3, 1, 0)
    np.testing.assert_allclose(variables["params"]["stem_conv"]["kernel"], expected, rtol=1e-6)


def test_every_torchvision_resnet18_tensor_loads_into_an_acs_resnet18():
    state_dict = torchvision_resnet18_state_dict()
    model = models.create("resnet18", num_classes=10, small_input=False, conv3d="acs")
    fresh = model.init(jax.random.key(0), np.zeros((1, 16, 16, 16, 1)), train=False)
    converted = pretrained.torchvision_resnet(state_dict)
    variables, summary = pretrained.load(dict(fresh), converted, "weights")
    assert summary["skipped"] == {} and summary["unused"] == []
    assert len(summary["loaded"]) == len(converted) == 102
    projection = variables["params"]["stage1_block0"]["conv_proj"]["kernel"]
    assert projection.shape == (1, 1, 1, 64, 128)  # a 3D convolution, loaded as the 2D one
    expected = state_dict["layer2.0.downsample.0.weight"].transpose(2, 3, 1, 0)
    np.testing.assert_array_equal(projection[0], expected)


def test_bad_sources_are_refused_before_the_workdir_is_touched(tiny_config, tmp_path):
    workdir = str(tmp_path / "run")
    cases = {
        "holds no checkpoint": dict(from_workdir=str(tmp_path)),
        "none of its 2 tensors has a torchvision ResNet name": dict(from_file="other.npz"),
        "none of its 102 tensors matches the model's names and shapes \\(0 of 62": dict(
            from_file="vgg.npz"
        ),
        "matches no parameter": dict(freeze="encoder_*"),
        "freezes all 38 parameters: nothing would be trained": dict(freeze="*"),
        "no such file": dict(from_file="missing.safetensors"),
        "give a state dict as .safetensors or .npz": dict(from_file="resnet18.pth"),
    }
    np.savez(tmp_path / "other.npz", **{"features.0.weight": np.ones(1), "classifier": np.ones(1)})
    # A torchvision ResNet-18 whose layers all have other shapes than the tiny model's.
    odd = {
        k: np.ones((3,) * v.ndim, np.float32) for k, v in torchvision_resnet18_state_dict().items()
    }
    np.savez(tmp_path / "vgg.npz", **odd)
    for message, init in cases.items():
        config = tiny_config.copy_and_resolve_references()
        config.init.update(
            {k: str(tmp_path / v) if k == "from_file" else v for k, v in init.items()}
        )
        with pytest.raises(ConfigError, match=message):
            train.train_and_evaluate(config, workdir)
        assert not os.path.exists(workdir)
