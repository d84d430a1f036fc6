"""medjax.models.conv: the depth-folded 3D convolution equals XLA's, values and gradients; and the
XLA:CPU flag that medjax.xla_cpu sets for the entry points (importing medjax sets nothing)."""

import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from medjax import models, xla_cpu
from medjax.errors import ConfigError
from medjax.models import cnn
from medjax.models.conv import ACSConv, Conv, conv_general_dilated, depth_folded_conv

DIMS = ("NDHWC", "DHWIO", "NDHWC")


def _random(shape, seed):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _loss_and_grads(conv, x, kernel):
    """A non-linear scalar of the output, and its gradients w.r.t. the input and the kernel."""
    return jax.jit(jax.value_and_grad(lambda x, k: jnp.sum(jnp.sin(conv(x, k))), (0, 1)))(x, kernel)


def _assert_close(actual, expected):
    scale = float(jnp.max(jnp.abs(expected)))
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-4 * scale)


@pytest.mark.parametrize(
    "x_shape, kernel, strides, padding",
    [
        ((2, 9, 8, 7, 3), (3, 3, 3), (1, 1, 1), ((1, 1),) * 3),
        ((2, 9, 8, 7, 3), (3, 3, 3), (2, 2, 2), ((1, 1),) * 3),  # odd sizes, stride 2
        ((1, 8, 8, 8, 2), (4, 4, 4), (2, 2, 2), ((0, 0),) * 3),  # VAE: even kernel, VALID
        ((2, 10, 6, 6, 3), (7, 3, 5), (2, 1, 2), ((3, 2), (1, 1), (2, 0))),  # uneven
        ((2, 6, 6, 6, 4), (1, 1, 1), (2, 2, 2), ((0, 0),) * 3),  # projection shortcut
    ],
)
def test_depth_folded_conv_equals_xla(x_shape, kernel, strides, padding):
    x = _random(x_shape, 0)
    k = _random((*kernel, x_shape[-1], 5), 1)

    def reference(x, k):
        return lax.conv_general_dilated(x, k, strides, padding, dimension_numbers=DIMS)

    def folded(x, k):
        return depth_folded_conv(x, k, strides, padding)

    assert folded(x, k).shape == reference(x, k).shape
    _assert_close(folded(x, k), reference(x, k))
    (value, grads), (expected, expected_grads) = (
        _loss_and_grads(folded, x, k),
        _loss_and_grads(reference, x, k),
    )
    _assert_close(value, expected)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        _assert_close(grad, expected_grad)


@pytest.mark.parametrize("padding", ["SAME", "VALID"])
def test_dispatch_resolves_string_padding(padding):
    x, k = _random((2, 7, 6, 5, 3), 2), _random((3, 3, 3, 3, 4), 3)
    dims = lax.conv_dimension_numbers(x.shape, k.shape, DIMS)
    expected = lax.conv_general_dilated(x, k, (2, 1, 2), padding, dimension_numbers=dims)
    _assert_close(conv_general_dilated(x, k, (2, 1, 2), padding, dimension_numbers=dims), expected)


@pytest.mark.parametrize("x_shape", [(2, 6, 7, 5, 3), (2, 9, 8, 3)])
def test_conv_module_equals_nn_conv_with_the_same_parameters(x_shape):
    x = _random(x_shape, 4)
    ndim = len(x_shape) - 2
    kwargs = dict(features=4, kernel_size=(3,) * ndim, strides=2, padding=((1, 1),) * ndim)
    ours, theirs = Conv(**kwargs), nn.Conv(**kwargs)
    variables = theirs.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(
        jnp.shape, variables
    )
    _assert_close(ours.apply(variables, x), theirs.apply(variables, x))


def test_3d_resnet_block_equals_one_built_on_xla_convolutions(monkeypatch):
    """A strided 3D ResNet block's output and parameter gradients, against the same block with
    every convolution left to `lax.conv_general_dilated`."""
    x = _random((2, 6, 7, 5, 3), 5)
    model = cnn.BasicBlock(4, strides=2)
    variables = model.init(jax.random.key(0), x, train=False)

    def loss_and_grads():  # a new function each time: jit traces the model anew
        def loss(params):  # running statistics: batch norm of a tiny batch is ill-conditioned
            return jnp.sum(model.apply({**variables, "params": params}, x, train=False) ** 2)

        return jax.jit(jax.value_and_grad(loss))(variables["params"])

    def conv_input_ranks():
        apply = lambda p: model.apply({**variables, "params": p}, x, train=False)  # noqa: E731
        eqns = jax.make_jaxpr(apply)(variables["params"]).jaxpr.eqns
        return {e.invars[0].aval.ndim for e in eqns if e.primitive.name == "conv_general_dilated"}

    value, grads = loss_and_grads()
    assert conv_input_ranks() == {4}  # on CPU every 3D convolution is folded into a 2D one
    monkeypatch.setattr(cnn, "Conv", nn.Conv)
    assert conv_input_ranks() == {5}
    expected, expected_grads = loss_and_grads()
    _assert_close(value, expected)
    jax.tree.map(_assert_close, grads, expected_grads)


@pytest.mark.parametrize("features, strides", [(7, 1), (8, 2), (2, 1)])
def test_acs_conv_equals_a_3d_conv_whose_kernel_is_zero_off_the_three_planes(features, strides):
    """Yang et al.'s ACS: output channels split in thirds (7 -> 3, 2, 2), the thirds' 2D kernels
    laid in the axial, coronal and sagittal planes through the centre of a 3x3x3 kernel."""
    x = _random((2, 7, 6, 5, 3), 6)
    model = ACSConv(features, 3, strides)
    variables = model.init(jax.random.key(0), x)
    kernel = np.asarray(variables["params"]["kernel"])  # [3, 3, C_in, C_out], one 2D kernel
    assert kernel.shape == (3, 3, 3, features)
    full = np.zeros((3, 3, 3, 3, features), np.float32)
    thirds = np.array_split(np.arange(features), 3)
    full[1, :, :, :, thirds[0]] = kernel[..., thirds[0]].transpose(3, 0, 1, 2)  # axial (H, W)
    full[:, 1, :, :, thirds[1]] = kernel[..., thirds[1]].transpose(3, 0, 1, 2)  # coronal (D, W)
    full[:, :, 1, :, thirds[2]] = kernel[..., thirds[2]].transpose(3, 0, 1, 2)  # sagittal (D, H)
    expected = lax.conv_general_dilated(
        x, jnp.asarray(full), (strides,) * 3, ((1, 1),) * 3, dimension_numbers=DIMS
    )
    _assert_close(model.apply(variables, x), expected)


def test_acs_resnet_has_2d_kernels_and_the_full_resnets_outputs_shape():
    x = _random((2, 8, 8, 8, 1), 7)
    kwargs = dict(num_classes=3, width=0.125, small_input=True)
    acs = models.create("resnet18", conv3d="acs", **kwargs)
    full = models.create("resnet18", **kwargs)

    def kernel_shapes(model):
        params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))["params"]
        flat = jax.tree_util.tree_flatten_with_path(params)[0]
        return {jax.tree_util.keystr(path): k.shape for path, k in flat if k.ndim > 2}

    acs_shapes, full_shapes = kernel_shapes(acs), kernel_shapes(full)
    assert acs_shapes.keys() == full_shapes.keys()
    for name, shape in acs_shapes.items():  # 3x3x3 -> 3x3; the 1x1x1 projections stay
        assert shape == (full_shapes[name][1:] if "proj" not in name else full_shapes[name])
    assert {len(s) for n, s in acs_shapes.items() if "proj" not in n} == {4}
    logits = jax.jit(lambda x: acs.init_with_output(jax.random.key(0), x, train=False)[0])(x)
    assert logits.shape == (2, 3) and np.all(np.isfinite(logits))
    with pytest.raises(ConfigError, match="model.conv3d='axial' must be one of 'full', 'acs'"):
        models.create("resnet18", conv3d="axial", **kwargs)


def test_leave_convolutions_to_eigen_sets_the_flag_on_jaxlib_0_10_only(monkeypatch):
    monkeypatch.setattr(xla_cpu.importlib.metadata, "version", lambda _: "0.10.2")
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_to=/tmp/x")
    xla_cpu.leave_convolutions_to_eigen()
    flags = "--xla_dump_to=/tmp/x --xla_cpu_experimental_ynn_fusion_type=individual_dot,reduce"
    assert os.environ["XLA_FLAGS"] == flags
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_experimental_ynn_fusion_type=dot")  # the user's
    xla_cpu.leave_convolutions_to_eigen()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_experimental_ynn_fusion_type=dot"
    monkeypatch.setattr(xla_cpu.importlib.metadata, "version", lambda _: "0.11.0")
    monkeypatch.delenv("XLA_FLAGS")
    xla_cpu.leave_convolutions_to_eigen()
    assert "XLA_FLAGS" not in os.environ


@pytest.mark.slow
def test_importing_medjax_changes_no_environment():
    check = (
        "import os; before = dict(os.environ); import medjax, medjax.main, medjax.train; "
        "assert dict(os.environ) == before, 'changed'; print(os.environ.get('XLA_FLAGS'))"
    )
    env = {**os.environ, "XLA_FLAGS": "--xla_dump_to=/tmp/x"}
    result = subprocess.run(
        [sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "--xla_dump_to=/tmp/x"
