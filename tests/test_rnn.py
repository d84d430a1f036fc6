"""Tests for medjax.models.rnn: cells against numpy, padding, pooling, GRU-D imputation, shapes.

XLA:CPU compiles slowly, so each model configuration is built and jitted once (`case`), with
seeded numpy parameters placed into the abstract variables of `jax.eval_shape(init)`; one jitted
function returns the outputs, every recurrent layer's hidden states and the gradients, and the
tests share it. The one real init uses the `unsafe_rbg` key (threefry compiles slowly).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from medjax import models
from medjax.errors import ConfigError
from medjax.models.rnn import GRUDCell

create_model = models.create

KEY = jax.random.key(0, impl="unsafe_rbg")
B, T, V, S, H = 3, 6, 4, 2, 5
LENGTHS = (6, 4, 1)
FLOATS = ("values", "mask", "delta")
X_MEAN = (0.3, -0.6, 1.2, 0.0)
jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def make_batch(seed=0, lengths=LENGTHS, num_steps=T, num_static=S):
    rng = np.random.default_rng(seed)
    shape = (len(lengths), num_steps, V)
    mask = (rng.random(shape) < 0.5).astype(np.float32)
    return {
        "values": rng.normal(size=shape).astype(np.float32),  # not 0 where missing: m x counts
        "mask": mask,
        "delta": rng.uniform(0, 5, shape).astype(np.float32),
        "lengths": np.asarray(lengths, np.int32),
        "static": rng.normal(size=(len(lengths), num_static)).astype(np.float32),
    }


def fill(model, batch, seed=0):
    """Seeded variables: kernels ~ N(0, 1/fan_in), biases ~ N(0, 0.25), input decay U(0.05, 1)."""
    rng = np.random.default_rng(seed)

    def leaf(path, a):
        name = path[-1].key
        if name == "input_decay_kernel":
            value = rng.uniform(0.05, 1.0, a.shape)
        elif name == "kernel":
            value = rng.normal(size=a.shape) / np.sqrt(a.shape[0])
        else:
            value = 0.5 * rng.normal(size=a.shape)
        return jnp.asarray(value, a.dtype)

    abstract = jax.eval_shape(lambda: model.init(KEY, batch, train=False))
    return jax.tree_util.tree_map_with_path(leaf, abstract)


@functools.cache
def case(cell, pooling="last", bidirectional=False, num_layers=1, input_mean=None):
    """(model, variables, fn): fn(variables, batch) -> (outputs, hidden, grads), jitted once.

    hidden maps "layer{i}" to that layer's output sequence [B, T, D]; grads is the gradient of
    sum(logits) wrt (variables, {values, mask, delta}).
    """
    model = create_model(
        cell,
        hidden_size=H,
        num_layers=num_layers,
        bidirectional=bidirectional,
        pooling=pooling,
        num_classes=2,
        dropout_rate=0.5,
        input_mean=input_mean,
    )
    variables = fill(model, make_batch())
    layers = lambda mdl, _: isinstance(mdl, (nn.RNN, nn.Bidirectional))  # noqa: E731

    def total(variables, batch, floats):
        out, state = model.apply(
            variables,
            {**batch, **floats},
            train=False,
            capture_intermediates=layers,
            mutable=["intermediates"],
        )
        hidden = {k: v["__call__"][0] for k, v in state["intermediates"].items()}
        return out["logits"].sum(), (out, hidden)

    @jit
    def fn(variables, batch):
        floats = {k: batch[k] for k in FLOATS}
        grads, (out, hidden) = jax.grad(total, (0, 2), has_aux=True)(variables, batch, floats)
        return out, hidden, grads

    return model, variables, fn


def np64(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


def np_gru(p, x):
    """flax GRUCell equations: h' = (1 - z) n + z h, n = tanh(W_in x + b_in + r (W_hn h + b_hn))."""
    h, out = np.zeros((x.shape[0], p["hn"]["kernel"].shape[0])), []
    for xt in x.transpose(1, 0, 2):
        r = sigmoid(xt @ p["ir"]["kernel"] + p["ir"]["bias"] + h @ p["hr"]["kernel"])
        z = sigmoid(xt @ p["iz"]["kernel"] + p["iz"]["bias"] + h @ p["hz"]["kernel"])
        n = np.tanh(
            xt @ p["in"]["kernel"] + p["in"]["bias"] + r * (h @ p["hn"]["kernel"] + p["hn"]["bias"])
        )
        h = (1 - z) * n + z * h
        out.append(h)
    return np.stack(out, 1)


def np_lstm(p, x):
    """LSTM: gates from x W_i* + h W_h* + b_h*; c' = f c + i g; h' = o tanh(c')."""
    h = c = np.zeros((x.shape[0], p["hi"]["kernel"].shape[0]))
    out = []
    for xt in x.transpose(1, 0, 2):
        a = {
            k: xt @ p[f"i{k}"]["kernel"] + h @ p[f"h{k}"]["kernel"] + p[f"h{k}"]["bias"]
            for k in "ifgo"
        }
        c = sigmoid(a["f"]) * c + sigmoid(a["i"]) * np.tanh(a["g"])
        h = sigmoid(a["o"]) * np.tanh(c)
        out.append(h)
    return np.stack(out, 1)


def np_grud(p, x, m, d, x_mean, no_decay=False):
    """GRU-D of Che et al. (2018): decays gamma, imputed x_hat, update h' = (1 - z) h + z h~."""
    hidden = p["recurrent_n"]["kernel"].shape[0]
    h, x_last, out = np.zeros((x.shape[0], hidden)), np.broadcast_to(x_mean, x[:, 0].shape), []
    for t in range(x.shape[1]):
        xt, mt, dt = x[:, t], m[:, t], d[:, t]
        gx = np.exp(-np.maximum(0, p["input_decay_kernel"] * dt + p["input_decay_bias"]))
        gh = np.exp(-np.maximum(0, dt @ p["hidden_decay"]["kernel"] + p["hidden_decay"]["bias"]))
        if no_decay:
            gx, gh = np.ones_like(gx), np.ones_like(gh)
        x_hat = mt * xt + (1 - mt) * (gx * x_last + (1 - gx) * x_mean)
        h = gh * h
        w, b = p["input"]["kernel"], p["input"]["bias"]
        wz, wr, wn = w[:V, :hidden], w[:V, hidden : 2 * hidden], w[:V, 2 * hidden :]
        vz, vr, vn = w[V:, :hidden], w[V:, hidden : 2 * hidden], w[V:, 2 * hidden :]
        bz, br, bn = b[:hidden], b[hidden : 2 * hidden], b[2 * hidden :]
        uz, ur = p["recurrent_zr"]["kernel"][:, :hidden], p["recurrent_zr"]["kernel"][:, hidden:]
        z = sigmoid(x_hat @ wz + h @ uz + mt @ vz + bz)
        r = sigmoid(x_hat @ wr + h @ ur + mt @ vr + br)
        h_tilde = np.tanh(x_hat @ wn + (r * h) @ p["recurrent_n"]["kernel"] + mt @ vn + bn)
        h = (1 - z) * h + z * h_tilde
        x_last = np.where(mt > 0, xt, x_last)
        out.append(h)
    return np.stack(out, 1)


def rnn_inputs(batch):
    """GRU and LSTM inputs: values, mask and log1p of the hours since the last observation."""
    values, mask, delta = (np64(batch[k]) for k in FLOATS)
    return np.concatenate([values, mask, np.log1p(delta)], -1)


def np_bigru(p, x, lengths):
    """Bidirectional GRU layer: the backward GRU runs over each sequence's valid steps only."""
    fwd, bwd = np_gru(p["forward_rnn"]["cell"], x), np.zeros((*x.shape[:2], H))
    for b, n in enumerate(lengths):
        bwd[b, :n] = np_gru(p["backward_rnn"]["cell"], x[b : b + 1, :n][:, ::-1])[0, ::-1]
    return np.concatenate([fwd, bwd], -1)


def head(p, features, static):
    return np.concatenate([features, static], -1) @ p["head"]["kernel"] + p["head"]["bias"]


def assert_valid_steps_close(actual, expected, atol=1e-5):
    for b, n in enumerate(LENGTHS):
        np.testing.assert_allclose(np.asarray(actual)[b, :n], expected[b, :n], atol=atol, rtol=0)


class TestCellsMatchNumpy:
    @pytest.mark.parametrize(
        "cell, pooling, num_layers, reference",
        [("gru", "mean", 1, np_gru), ("lstm", "attention", 2, np_lstm)],
    )
    def test_gru_lstm(self, cell, pooling, num_layers, reference):
        _, variables, fn = case(cell, pooling, num_layers=num_layers)
        batch = make_batch(seed=1)
        _, hidden, _ = fn(variables, batch)
        p, h = np64(variables["params"]), rnn_inputs(batch)
        for i in range(num_layers):
            h = reference(p[f"layer{i}"]["cell"], h)
            assert_valid_steps_close(hidden[f"layer{i}"], h)

    @pytest.mark.parametrize(
        "pooling, num_layers, input_mean", [("last", 1, None), ("mean", 2, X_MEAN)]
    )
    def test_grud(self, pooling, num_layers, input_mean):
        _, variables, fn = case("gru_d", pooling, num_layers=num_layers, input_mean=input_mean)
        batch = make_batch(seed=2)
        _, hidden, _ = fn(variables, batch)
        p = np64(variables["params"])
        assert np.any(p["layer0"]["cell"]["input_decay_bias"] > 0)
        assert np.any(p["layer0"]["cell"]["input_decay_bias"] < 0)
        x_mean = np.zeros(V) if input_mean is None else np.asarray(input_mean)
        args = (p["layer0"]["cell"], *(np64(batch[k]) for k in FLOATS), x_mean)
        h = np_grud(*args)
        assert np.abs(np_grud(*args, no_decay=True) - h).max() > 1e-2  # the decays matter here
        assert_valid_steps_close(hidden["layer0"], h)
        if num_layers == 2:  # layers above GRU-D are GRUs
            assert_valid_steps_close(hidden["layer1"], np_gru(p["layer1"]["cell"], h))

    def test_bidirectional_gru_and_last_pooling(self):
        _, variables, fn = case("gru", "last", bidirectional=True, num_layers=2)
        batch = make_batch(seed=3)
        out, hidden, _ = fn(variables, batch)
        p = np64(variables["params"])
        h0 = np_bigru(p["layer0"], rnn_inputs(batch), LENGTHS)
        h1 = np_bigru(p["layer1"], h0, LENGTHS)
        assert_valid_steps_close(hidden["layer0"], h0)
        assert_valid_steps_close(hidden["layer1"], h1)
        # forward state at length - 1, backward state (after the whole sequence) at step 0
        pooled = np.concatenate([h1[np.arange(B), np.asarray(LENGTHS) - 1, :H], h1[:, 0, H:]], -1)
        np.testing.assert_allclose(out["logits"], head(p, pooled, batch["static"]), atol=1e-5)


@pytest.mark.parametrize("pooling", ["last", "mean", "attention"])
def test_pooling_and_head_match_numpy(pooling):
    _, variables, fn = case("gru", pooling)
    batch = make_batch(seed=4)
    out, hidden, _ = fn(variables, batch)
    h, p, lengths = np64(hidden["layer0"]), np64(variables["params"]), np.asarray(LENGTHS)
    if pooling == "last":
        pooled = h[np.arange(B), lengths - 1]
    elif pooling == "mean":
        pooled = np.stack([h[b, :n].mean(0) for b, n in enumerate(lengths)])
    else:
        att = np.tanh(h @ p["attention_hidden"]["kernel"] + p["attention_hidden"]["bias"])
        score = (att @ p["attention_score"]["kernel"] + p["attention_score"]["bias"])[..., 0]
        valid = np.arange(T) < lengths[:, None]
        w = np.where(valid, np.exp(score - score.max(1, keepdims=True)), 0)
        pooled = np.einsum("bt,btd->bd", w / w.sum(1, keepdims=True), h)
    np.testing.assert_allclose(out["logits"], head(p, pooled, batch["static"]), atol=1e-5)
    static = np.broadcast_to(batch["static"][:, None], (B, T, S))
    assert_valid_steps_close(out["step_logits"], head(p, h, static))


PADDING_CASES = [
    ("gru", "last", False, 1, None),
    ("gru", "mean", False, 1, None),
    ("gru", "attention", False, 1, None),
    ("lstm", "last", False, 1, None),
    ("lstm", "mean", False, 1, None),
    ("lstm", "attention", False, 2, None),
    ("gru_d", "last", False, 1, None),
    ("gru_d", "mean", False, 2, X_MEAN),
    ("gru_d", "attention", False, 1, X_MEAN),
    ("gru", "last", True, 2, None),
    ("gru", "mean", True, 1, None),
    ("gru", "attention", True, 1, None),
]


def config_id(config):
    cell, pooling, bidirectional, num_layers, input_mean = (*config, False, 1, None)[:5]
    extra = "-bi" * bidirectional + f"-{num_layers}layers" + "-xmean" * (input_mean is not None)
    return f"{cell}-{pooling}{extra}"


@pytest.mark.parametrize("config", PADDING_CASES, ids=config_id)
def test_padded_steps_change_nothing(config):
    """Garbage (1e3 or NaN) at padded steps: same outputs and gradients, zero input gradients."""
    _, variables, fn = case(*config)
    batch = make_batch(seed=5)
    out, _, (g_params, g_inputs) = fn(variables, batch)
    assert out["logits"].shape == (B, 2) and out["step_logits"].shape == (B, T, 2)
    padded = np.arange(T) >= np.asarray(LENGTHS)[:, None]  # [B, T]
    assert all(np.abs(g_inputs[k])[~padded].max() > 0 for k in FLOATS)
    rng = np.random.default_rng(6)
    for garbage in (lambda s: 1e3 * rng.normal(size=s), lambda s: np.full(s, np.nan)):
        dirty = dict(batch)
        for k in FLOATS:
            dirty[k] = np.where(padded[..., None], garbage(batch[k].shape), batch[k])
            dirty[k] = dirty[k].astype(np.float32)
        out2, _, (g_params2, g_inputs2) = fn(variables, dirty)
        np.testing.assert_array_equal(out2["logits"], out["logits"])
        np.testing.assert_array_equal(
            np.asarray(out2["step_logits"])[~padded], np.asarray(out["step_logits"])[~padded]
        )
        jax.tree.map(np.testing.assert_array_equal, g_params2, g_params)
        for k in FLOATS:
            np.testing.assert_array_equal(np.asarray(g_inputs2[k])[padded], 0.0)
            np.testing.assert_array_equal(g_inputs2[k], g_inputs[k])


@pytest.mark.parametrize(
    "config",
    [("gru_d", "last", False, 1, None), ("lstm", "last"), ("gru", "last", True, 2, None)],
    ids=config_id,
)
def test_last_pooling_equals_truncated_sequence(config):
    model, variables, fn = case(*config)
    batch = make_batch(seed=7)
    logits = fn(variables, batch)[0]["logits"]
    n = LENGTHS[1]
    short = {k: v[1:2, :n] if k in FLOATS else v[1:2] for k, v in batch.items()}
    truncated = jit(functools.partial(model.apply, train=False))(variables, short)["logits"]
    np.testing.assert_allclose(logits[1], truncated[0], atol=1e-6, rtol=0)


def with_layer0(variables, cell_params):
    params = {**variables["params"], "layer0": {"cell": cell_params}}
    return {**variables, "params": params}


class TestGRUD:
    def test_fully_observed_input_is_not_imputed(self):
        """mask = 1: x_hat = x, so neither the input decay nor x_mean has any effect."""
        _, variables, fn = case("gru_d", "last")  # x_mean = 0
        _, other_variables, other_fn = case("gru_d", "attention", input_mean=X_MEAN)
        cell = variables["params"]["layer0"]["cell"]
        changed = {**cell, "input_decay_kernel": cell["input_decay_kernel"] + 1.0}
        changed["input_decay_bias"] = cell["input_decay_bias"] - 1.0
        other_variables = with_layer0(other_variables, changed)
        batch = make_batch(seed=8)
        batch["mask"] = np.ones_like(batch["mask"])
        hidden = fn(variables, batch)[1]["layer0"]
        assert_valid_steps_close(other_fn(other_variables, batch)[1]["layer0"], hidden, atol=0)
        batch["mask"][0, 2, 1] = 0.0  # one value missing: now the imputation shows
        other = other_fn(other_variables, batch)[1]["layer0"]
        assert np.abs(np.asarray(other - hidden)[0, 2:]).min() > 0

    def test_zero_delta_at_init_means_no_decay(self):
        """Init biases are 0, so gamma = exp(-max(0, w * 0 + 0)) = 1 exactly at delta = 0."""
        cell = GRUDCell(H, X_MEAN)
        carry = cell.initialize_carry(KEY, (B, 3 * V))
        params = jit(cell.init)(KEY, carry, jnp.zeros((B, 3 * V)))["params"]
        np.testing.assert_array_equal(params["input_decay_bias"], 0.0)
        np.testing.assert_array_equal(params["hidden_decay"]["bias"], 0.0)
        np.testing.assert_array_equal(params["input_decay_kernel"], np.float32(0.1))
        _, variables, fn = case("gru_d", "attention", input_mean=X_MEAN)
        batch = make_batch(seed=9)
        batch["delta"] = np.zeros_like(batch["delta"])
        hidden = fn(with_layer0(variables, params), batch)[1]["layer0"]
        xs = (np64(batch[k]) for k in FLOATS)
        expected = np_grud(np64(params), *xs, np.asarray(X_MEAN), no_decay=True)
        assert_valid_steps_close(hidden, expected)

    def test_carry_holds_last_observed_value(self):
        x = np.arange(1, 5 * V + 1, dtype=np.float32).reshape(1, 5, V)
        m = np.zeros_like(x)
        m[0, [0, 3], 0] = 1  # variable 0 observed at steps 0 and 3, variable 1 at step 1 only,
        m[0, 1, 1] = 1  # variables 2 and 3 never: they keep x_mean
        inputs = jnp.asarray(np.concatenate([x * m, m, np.ones_like(x)], -1))
        rnn = nn.RNN(GRUDCell(H, X_MEAN), return_carry=True)
        variables = jax.eval_shape(rnn.init, KEY, inputs)
        variables = jax.tree.map(lambda a: jnp.full(a.shape, 0.1, a.dtype), variables)
        apply = jit(lambda n: rnn.apply(variables, inputs, seq_lengths=n)[0][1])
        np.testing.assert_array_equal(apply(jnp.array([5])), [[13, 6, np.float32(1.2), 0]])
        np.testing.assert_array_equal(apply(jnp.array([3])), [[1, 6, np.float32(1.2), 0]])

    def test_wrong_input_mean_length_raises(self):
        model = create_model("gru_d", hidden_size=H, input_mean=[0.0] * (V + 1))
        with pytest.raises(ValueError, match="input_mean has 5 entries but the data has 4"):
            jax.eval_shape(lambda: model.init(KEY, make_batch(), train=False))


@pytest.mark.parametrize(
    "cell, pooling, num_layers, bidirectional, num_static, dtype",
    [
        ("gru", "last", 3, True, 0, jnp.bfloat16),
        ("lstm", "mean", 1, True, S, jnp.float32),
        ("lstm", "attention", 3, False, 0, jnp.bfloat16),
        ("gru_d", "attention", 3, False, 0, jnp.bfloat16),
        ("gru_d", "mean", 1, False, S, jnp.float32),
    ],
)
def test_shapes_and_dtypes(cell, pooling, num_layers, bidirectional, num_static, dtype):
    model = create_model(
        cell,
        hidden_size=H,
        num_layers=num_layers,
        bidirectional=bidirectional,
        pooling=pooling,
        num_classes=3,
        dtype=dtype,
    )
    batch = make_batch(num_static=num_static)
    variables = jax.eval_shape(lambda: model.init(KEY, batch, train=False))
    out = jax.eval_shape(functools.partial(model.apply, train=False), variables, batch)
    assert out["logits"].shape == (B, 3) and out["step_logits"].shape == (B, T, 3)
    assert out["logits"].dtype == out["step_logits"].dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
    width = H * (2 if bidirectional else 1)
    assert variables["params"]["head"]["kernel"].shape == (width + num_static, 3)
    layers = sorted(k for k in variables["params"] if k.startswith("layer"))
    assert layers == [f"layer{i}" for i in range(num_layers)]


@pytest.mark.parametrize(
    "config",
    [("gru_d", "attention", False, 1, X_MEAN), ("lstm", "attention", False, 2, None)],
    ids=config_id,
)
def test_bfloat16_compute_is_close_to_float32(config):
    model, variables, fn = case(*config)
    batch = make_batch(seed=10)
    out32 = fn(variables, batch)[0]
    apply16 = functools.partial(model.clone(dtype=jnp.bfloat16).apply, train=False)
    out16 = jit(apply16)(variables, batch)
    assert out16["logits"].dtype == out16["step_logits"].dtype == jnp.float32
    assert not np.array_equal(out16["logits"], out32["logits"])
    np.testing.assert_allclose(out16["logits"], out32["logits"], atol=0.05)


def test_dropout_only_in_training():
    model, variables, fn = case("gru", "mean")  # dropout_rate 0.5
    batch = make_batch(seed=11)
    evals = fn(variables, batch)[0]["logits"]
    train = jit(lambda seed: model.apply(variables, batch, train=True, rngs={"dropout": seed}))
    keys = [jax.random.key(s, impl="unsafe_rbg") for s in (0, 0, 1)]
    logits = [train(k)["logits"] for k in keys]
    np.testing.assert_array_equal(logits[0], logits[1])
    assert not np.allclose(logits[0], evals) and not np.allclose(logits[0], logits[2])


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"name": "transformer"}, ConfigError, "'transformer' is not a model.*gru, gru_d"),
        ({"name": "gru", "pooling": "max"}, ConfigError, "model.pooling='max' must be one of"),
        ({"name": "gru_d", "bidirectional": True}, ValueError, "bidirectional is not supported"),
    ],
)
def test_bad_names_raise(kwargs, error, message):
    with pytest.raises(error, match=message):
        create_model(**kwargs)
