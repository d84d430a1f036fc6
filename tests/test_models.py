"""Tests for medjax.models.cnn: shapes, dtypes, parameter counts, norms, dropout, 2D and 3D.

XLA:CPU compiles random-number kernels slowly, so most tests fill the abstract variables from
`jax.eval_shape(model.init, ...)` with seeded numpy values; `test_init_*` runs the real init.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import models
from medjax.errors import ConfigError
from medjax.models.cnn import BasicBlock, BottleneckBlock, ResNet

create_model = models.create

TINY = 1 / 16  # width multiplier for forward passes: stage widths 4, 8, 16, 32


def abstract_variables(model, x):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False))


def fill_variables(model, x, seed=0):
    """Concrete variables without jax.random: kernels ~ N(0, 1/fan_in), torch-like norm state."""
    rng = np.random.default_rng(seed)

    def leaf(path, a):
        name = path[-1].key
        if name == "kernel":
            value = rng.normal(size=a.shape) / np.sqrt(np.prod(a.shape[:-1]))
        elif name in ("scale", "var"):
            value = np.ones(a.shape)
        else:
            value = 0.1 * rng.normal(size=a.shape)
        return jnp.asarray(value, a.dtype)

    return jax.tree_util.tree_map_with_path(leaf, abstract_variables(model, x))


def count(tree):
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


def closed_form_params(stage_sizes, bottleneck, in_channels, num_classes, ndim, small_input):
    """Independent parameter count: convs k^ndim*cin*cout (no bias), norms 2*c, dense head."""
    k = lambda n: n**ndim  # noqa: E731
    total = k(3 if small_input else 7) * in_channels * 64 + 2 * 64
    cin = 64
    for i, n in enumerate(stage_sizes):
        w = 64 * 2**i
        cout = 4 * w if bottleneck else w
        for j in range(n):
            if bottleneck:
                total += cin * w + k(3) * w * w + w * cout + 2 * (w + w + cout)
            else:
                total += k(3) * cin * w + k(3) * w * w + 2 * (w + w)
            if (i > 0 and j == 0) or cin != cout:
                total += cin * cout + 2 * cout
            cin = cout
    return total + cin * num_classes + num_classes


class TestParameterCounts:
    @pytest.mark.parametrize(
        "name, published",
        [("resnet18", 11_689_512), ("resnet34", 21_797_672), ("resnet50", 25_557_032)],
    )
    def test_torchvision_imagenet_counts(self, name, published):
        model = create_model(name, num_classes=1000)
        variables = abstract_variables(model, jnp.zeros((1, 224, 224, 3)))
        assert count(variables["params"]) == published
        sizes = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3], "resnet50": [3, 4, 6, 3]}
        assert closed_form_params(sizes[name], name == "resnet50", 3, 1000, 2, False) == published

    @pytest.mark.parametrize(
        "name, stage_sizes, x_shape, num_classes, small_input",
        [
            ("resnet18", [2, 2, 2, 2], (1, 28, 28, 1), 2, True),
            ("resnet50", [3, 4, 6, 3], (1, 64, 64, 1), 2, False),
            ("resnet10", [1, 1, 1, 1], (1, 32, 32, 32, 1), 3, False),
            ("resnet18", [2, 2, 2, 2], (1, 28, 28, 28, 2), 11, True),
        ],
    )
    @pytest.mark.parametrize("norm", ["batch", "group"])
    def test_matches_closed_form(self, name, stage_sizes, x_shape, num_classes, small_input, norm):
        model = create_model(name, num_classes=num_classes, small_input=small_input, norm=norm)
        variables = abstract_variables(model, jnp.zeros(x_shape))
        expected = closed_form_params(
            stage_sizes, name == "resnet50", x_shape[-1], num_classes, len(x_shape) - 2, small_input
        )
        assert count(variables["params"]) == expected

    def test_medmnist_resnet18_value(self):
        # torchvision's 11,689,512 less the 7x7x3 -> 3x3x1 stem and the 1000 -> 2 class head.
        expected = 11_689_512 - (7 * 7 * 3 - 3 * 3 * 1) * 64 - (512 + 1) * (1000 - 2)
        assert expected == 11_168_706
        model = create_model("resnet18", num_classes=2, small_input=True)
        assert count(abstract_variables(model, jnp.zeros((1, 28, 28, 1)))["params"]) == expected


@pytest.mark.parametrize(
    "block_type, x_shape, norm, num_classes, small_input",
    [
        (BasicBlock, (2, 16, 16, 1), "group", 1, True),
        (BottleneckBlock, (3, 32, 32, 3), "batch", 5, False),
        (BasicBlock, (2, 7, 9, 9, 1), "batch", 2, True),
        (BottleneckBlock, (1, 16, 16, 16, 2), "group", 3, False),
    ],
)
def test_forward_shapes_and_dtypes(block_type, x_shape, norm, num_classes, small_input):
    class OneBlockPerStage(ResNet):
        stage_sizes, block = (1, 1, 1, 1), block_type

    model = OneBlockPerStage(
        num_classes,
        width=TINY,
        norm=norm,
        small_input=small_input,
        dropout_rate=0.5,
    )
    x = jnp.asarray(np.random.default_rng(0).normal(size=x_shape), jnp.float32)
    variables = fill_variables(model, x)
    apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
    logits = apply(variables, x, train=False)
    train_logits, updates = apply(
        variables, x, train=True, mutable=("batch_stats",), rngs={"dropout": jax.random.key(1)}
    )
    for y in (logits, train_logits):
        assert y.shape == (x_shape[0], num_classes)
        assert y.dtype == jnp.float32
        assert np.all(np.isfinite(y))
    assert not np.allclose(logits, train_logits)
    assert set(updates) == ({"batch_stats"} if norm == "batch" else set())


@pytest.mark.parametrize(
    "x_shape, small_input, sizes",
    [
        ((1, 224, 224, 3), False, [56, 28, 14, 7]),  # torchvision's feature maps
        ((1, 28, 28, 1), True, [28, 14, 7, 4]),
        ((1, 7, 9, 9, 1), True, [(7, 9, 9), (4, 5, 5), (2, 3, 3), (1, 2, 2)]),
        ((1, 32, 33, 31, 1), False, [(8, 9, 8), (4, 5, 4), (2, 3, 2), (1, 2, 1)]),
    ],
)
def test_feature_map_sizes(x_shape, small_input, sizes):
    model = create_model("resnet18", num_classes=2, small_input=small_input)
    _, state = jax.eval_shape(
        lambda: model.init_with_output(
            jax.random.key(0), jnp.zeros(x_shape), train=False, capture_intermediates=True
        )
    )
    for i, size in enumerate(sizes):
        size = size if isinstance(size, tuple) else (size, size)
        shape = state["intermediates"][f"stage{i}_block1"]["__call__"][0].shape
        assert shape == (1, *size, 64 * 2**i)


def test_strided_conv_pads_symmetrically_like_torchvision():
    block = BasicBlock(features=8, strides=2)
    x = jnp.asarray(np.random.default_rng(2).normal(size=(1, 6, 6, 4)), jnp.float32)
    variables = fill_variables(block, x)
    _, state = block.apply(variables, x, train=False, capture_intermediates=True)
    expected = jax.lax.conv_general_dilated(
        x,
        variables["params"]["conv1"]["kernel"],
        (2, 2),
        ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(
        state["intermediates"]["conv1"]["__call__"][0], expected, rtol=1e-5, atol=1e-5
    )


def test_bfloat16_compute_float32_params_and_logits():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 16, 16, 1)), jnp.float32)
    kwargs = dict(num_classes=3, width=TINY, small_input=True)
    model16 = create_model("resnet10", dtype=jnp.bfloat16, **kwargs)
    variables = fill_variables(model16, x)
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
    logits16 = jax.jit(lambda v: model16.apply(v, x, train=False))(variables)
    logits32 = jax.jit(lambda v: create_model("resnet10", **kwargs).apply(v, x, train=False))(
        variables
    )
    assert logits16.dtype == jnp.float32
    np.testing.assert_allclose(logits16, logits32, rtol=0.1, atol=0.1)
    assert not np.array_equal(logits16, logits32)  # the computation did run in bfloat16


class TestBatchNormAndDropout:
    model = create_model("resnet10", num_classes=3, width=TINY, small_input=True, dropout_rate=0.5)
    x = jnp.asarray(np.random.default_rng(1).normal(size=(4, 8, 8, 1)) + 1.0, jnp.float32)
    jit_apply = staticmethod(jax.jit(model.apply, static_argnames=("train", "mutable")))

    @pytest.fixture(scope="class")
    def variables(self):
        return fill_variables(self.model, self.x)

    def apply(self, variables, train, seed=0):
        return self.jit_apply(
            variables,
            self.x,
            train=train,
            mutable=("batch_stats",),
            rngs={"dropout": jax.random.key(seed)},
        )

    def test_train_updates_running_stats_with_momentum_0_9(self, variables):
        _, updates = self.apply(variables, train=True)
        kernel = variables["params"]["stem_conv"]["kernel"]
        stem = jax.lax.conv_general_dilated(
            self.x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        old = variables["batch_stats"]["stem_norm"]
        new = updates["batch_stats"]["stem_norm"]
        np.testing.assert_allclose(
            new["mean"], 0.9 * old["mean"] + 0.1 * stem.mean((0, 1, 2)), rtol=1e-4, atol=1e-6
        )
        np.testing.assert_allclose(
            new["var"], 0.9 * old["var"] + 0.1 * stem.var((0, 1, 2)), rtol=1e-4
        )
        changed = jax.tree.map(
            lambda a, b: not np.allclose(a, b), variables["batch_stats"], updates["batch_stats"]
        )
        assert all(jax.tree.leaves(changed))

    def test_eval_keeps_stats_and_is_deterministic(self, variables):
        logits_a, updates = self.apply(variables, train=False, seed=0)
        logits_b, _ = self.apply(variables, train=False, seed=1)
        np.testing.assert_array_equal(logits_a, logits_b)
        jax.tree.map(
            np.testing.assert_array_equal, updates["batch_stats"], variables["batch_stats"]
        )

    def test_dropout_depends_on_rng_in_train_mode(self, variables):
        logits_a, _ = self.apply(variables, train=True, seed=0)
        logits_b, _ = self.apply(variables, train=True, seed=1)
        logits_a2, _ = self.apply(variables, train=True, seed=0)
        assert not np.allclose(logits_a, logits_b)
        np.testing.assert_array_equal(logits_a, logits_a2)


def test_init_uses_kaiming_fan_out_and_float32():
    # A strided block of stage 3 at width 1/16; initialising a whole model costs seconds on CPU.
    block = BasicBlock(features=32, strides=2)
    variables = jax.jit(lambda k: block.init(k, jnp.zeros((1, 4, 4, 16)), train=False))(
        jax.random.key(0, impl="unsafe_rbg")
    )  # rbg: XLA:CPU compiles threefry slowly
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
    kernel = variables["params"]["conv1"]["kernel"]
    assert kernel.shape == (3, 3, 16, 32)
    np.testing.assert_allclose(np.std(kernel), math.sqrt(2 / (9 * 32)), rtol=0.05)
    assert abs(np.mean(kernel)) < 0.01
    for name in ("norm1", "norm2", "norm_proj"):
        np.testing.assert_array_equal(variables["params"][name]["scale"], 1.0)
        np.testing.assert_array_equal(variables["params"][name]["bias"], 0.0)
        np.testing.assert_array_equal(variables["batch_stats"][name]["mean"], 0.0)
        np.testing.assert_array_equal(variables["batch_stats"][name]["var"], 1.0)


def test_group_norm_has_no_batch_stats_and_any_width_works():
    for width in (1.0, 0.3, 0.001):  # 19 channels at 0.3 (gcd 1 group), 1 channel at 0.001
        model = create_model("resnet18", num_classes=2, norm="group", width=width)
        variables = abstract_variables(model, jnp.zeros((1, 32, 32, 1)))
        assert set(variables) == {"params"}
    model = create_model("resnet18", num_classes=2, norm="batch")
    assert set(abstract_variables(model, jnp.zeros((1, 32, 32, 1)))) == {"params", "batch_stats"}


def test_width_multiplier_sets_channel_counts():
    params = abstract_variables(
        create_model("resnet18", num_classes=5, width=0.5), jnp.zeros((1, 32, 32, 3))
    )["params"]
    assert params["stem_conv"]["kernel"].shape == (7, 7, 3, 32)
    assert params["stage1_block0"]["conv_proj"]["kernel"].shape == (1, 1, 32, 64)
    assert params["stage3_block1"]["conv2"]["kernel"].shape == (3, 3, 256, 256)
    assert params["head"]["kernel"].shape == (256, 5)
    params = abstract_variables(
        create_model("resnet50", num_classes=2, width=0.3), jnp.zeros((1, 32, 32, 1))
    )["params"]
    assert params["stem_conv"]["kernel"].shape == (7, 7, 1, 19)  # round(64 * 0.3)
    assert params["stage3_block2"]["conv3"]["kernel"].shape == (1, 1, 154, 4 * 154)
    assert params["head"]["kernel"].shape == (4 * 154, 2)


def test_model_names_and_stage_sizes():
    assert {"resnet10", "resnet18", "resnet34", "resnet50"} <= set(models.available())
    params = abstract_variables(create_model("resnet34", num_classes=2), jnp.zeros((1, 32, 32, 1)))[
        "params"
    ]
    blocks = [k for k in params if k.startswith("stage")]
    assert [sum(b.startswith(f"stage{i}_") for b in blocks) for i in range(4)] == [3, 4, 6, 3]
    assert isinstance(create_model("resnet10", num_classes=2), ResNet)


def test_unknown_name_and_norm_raise():
    with pytest.raises(ConfigError, match="'resnet99' is not a model.*resnet10, resnet18"):
        create_model("resnet99", num_classes=2)
    with pytest.raises(ConfigError, match="model.norm='layer' must be one of 'batch', 'group'"):
        create_model("resnet18", num_classes=2, norm="layer")


def test_3d_model_has_2d_tree_with_3d_kernels():
    model = create_model("resnet50", num_classes=2)
    params2 = abstract_variables(model, jnp.zeros((1, 32, 32, 1)))["params"]
    params3 = abstract_variables(model, jnp.zeros((1, 32, 32, 32, 1)))["params"]
    assert jax.tree.structure(params2) == jax.tree.structure(params3)
    flat2 = jax.tree_util.tree_leaves_with_path(params2)
    flat3 = jax.tree_util.tree_leaves_with_path(params3)
    convs = 0
    for (path, a2), (_, a3) in zip(flat2, flat3, strict=True):
        if path[-1].key == "kernel" and path[0].key != "head":
            convs += 1
            assert a3.ndim == 5 and a2.ndim == 4
            assert a3.shape[:3] == (a2.shape[0],) * 3 and a3.shape[3:] == a2.shape[2:]
        else:
            assert a3.shape == a2.shape
    assert convs == 1 + 3 * 16 + 4  # stem, 3 per bottleneck block, 4 projections
