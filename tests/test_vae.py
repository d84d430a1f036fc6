"""Tests for the VAE: medjax.models.conv_vae and the VAE terms of medjax.losses.

Losses are checked through jax.jit against scipy.stats and float64 numpy, at extremes, and with
check_grads; the KL also against a Monte Carlo estimate. The model: shapes and dtypes for 2D and
3D inputs and each likelihood (from jax.eval_shape, no compilation), the sub-pixel shuffle against
loops, sampling, gradients of the reparameterised ELBO, and the importance-weighted bound.
Model keys use the 'unsafe_rbg' implementation: threefry init compiles slowly on XLA:CPU.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
from jax.test_util import check_grads

from medjax import losses, models
from medjax.errors import ConfigError
from medjax.models.conv_vae import (
    LIKELIHOODS,
    PRIORS,
    ConvVAE,
    depth_to_space,
)
from medjax.tasks.vae import eval_outputs, log_likelihood


def key(seed):
    return jax.random.key(seed, impl="unsafe_rbg")


def tiny_model_and_data(likelihood="bernoulli", dtype=jnp.float32, batch=4, seed=0, **options):
    model = ConvVAE(latent_size=4, widths=(4, 8), likelihood=likelihood, dtype=dtype, **options)
    x = np.random.default_rng(seed).uniform(size=(batch, 8, 8, 1)).astype(np.float32)
    init = jax.jit(lambda x: model.init({"params": key(1), "latent": key(2)}, x, train=False))
    return model, init(x), x


class TestGaussianKL:
    def test_matches_numpy_closed_form(self):
        rng = np.random.default_rng(0)
        mean, log_var = rng.normal(size=(2, 8, 5)) * [[[1.5]], [[2.0]]]
        expected = 0.5 * np.sum(np.exp(log_var) + mean**2 - 1.0 - log_var, axis=-1)
        got = jax.jit(losses.gaussian_kl)(mean.astype(np.float32), log_var.astype(np.float32))
        assert got.shape == (8,) and got.dtype == jnp.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)

    def test_matches_monte_carlo(self):
        rng = np.random.default_rng(1)
        mean, log_var = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
        std = np.exp(0.5 * log_var)
        z = mean + std * rng.normal(size=(200_000, 3, 4))
        log_ratio = np.sum(
            scipy.stats.norm.logpdf(z, mean, std) - scipy.stats.norm.logpdf(z), axis=-1
        )
        estimate = log_ratio.mean(0)
        stderr = log_ratio.std(0) / np.sqrt(len(log_ratio))
        got = np.asarray(jax.jit(losses.gaussian_kl)(mean, log_var))
        assert np.all(np.abs(got - estimate) < 5 * stderr), (got, estimate, stderr)

    def test_zero_exactly_at_the_prior(self):
        got = jax.jit(losses.gaussian_kl)(jnp.zeros((4, 3)), jnp.zeros((4, 3)))
        np.testing.assert_array_equal(got, np.zeros(4))

    def test_grads(self, x64):
        rng = np.random.default_rng(2)
        check_grads(jax.jit(losses.gaussian_kl), tuple(rng.normal(size=(2, 4, 3))), order=2)

    def test_shape_mismatch_raises(self):
        with pytest.raises(ValueError, match="log_var has shape"):
            losses.gaussian_kl(jnp.zeros((4, 3)), jnp.zeros((4, 2)))


class TestBernoulliLogLikelihood:
    def test_binary_matches_scipy(self):
        rng = np.random.default_rng(3)
        logits = 3.0 * rng.normal(size=(6, 5, 5, 2))
        x = rng.integers(0, 2, size=logits.shape)
        p = scipy.special.expit(logits)
        expected = scipy.stats.bernoulli.logpmf(x, p).reshape(6, -1).sum(-1)
        got = jax.jit(losses.bernoulli_log_likelihood)(logits.astype(np.float32), x)
        assert got.shape == (6,) and got.dtype == jnp.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5)

    def test_continuous_x_matches_formula(self):
        rng = np.random.default_rng(4)
        logits, x = 3.0 * rng.normal(size=(4, 7, 3)), rng.uniform(size=(4, 7, 3))
        log_p, log_not_p = -np.log1p(np.exp(-logits)), -np.log1p(np.exp(logits))
        expected = np.sum(x * log_p + (1 - x) * log_not_p, axis=(1, 2))
        got = jax.jit(losses.bernoulli_log_likelihood)(logits.astype(np.float32), x)
        np.testing.assert_allclose(got, expected, rtol=1e-5)

    def test_finite_at_extreme_logits(self):
        logits = jnp.array([[100.0, -100.0, 100.0, -100.0, 100.0]])
        x = jnp.array([[1.0, 0.0, 0.0, 1.0, 0.5]])
        fn = jax.jit(jax.value_and_grad(lambda lo: losses.bernoulli_log_likelihood(lo, x).sum()))
        value, grad = fn(logits)
        np.testing.assert_allclose(value, -100.0 - 100.0 - 50.0, rtol=1e-6)
        assert np.all(np.isfinite(grad))
        np.testing.assert_allclose(grad, x - jax.nn.sigmoid(logits), atol=1e-6)

    def test_grads(self, x64):
        rng = np.random.default_rng(5)
        x = rng.uniform(size=(3, 4))
        check_grads(
            jax.jit(lambda lo: losses.bernoulli_log_likelihood(lo, x)),
            (rng.normal(size=(3, 4)),),
            2,
        )

    def test_shape_mismatch_raises(self):
        with pytest.raises(ValueError, match="x has shape"):
            losses.bernoulli_log_likelihood(jnp.zeros((2, 4, 4, 1)), jnp.zeros((2, 4, 4)))


class TestGaussianLogLikelihood:
    @pytest.mark.parametrize("log_std_shape", [(), (4, 1, 1, 1), (4, 6, 5, 1)])
    def test_matches_scipy(self, log_std_shape):
        rng = np.random.default_rng(6)
        x, mean = rng.uniform(size=(2, 4, 6, 5, 1))
        log_std = rng.normal(size=log_std_shape) - 1.0
        expected = scipy.stats.norm.logpdf(x, mean, np.exp(log_std)).reshape(4, -1).sum(-1)
        got = jax.jit(losses.gaussian_log_likelihood)(
            x.astype(np.float32), mean.astype(np.float32), np.float32(log_std)
        )
        assert got.shape == (4,) and got.dtype == jnp.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5)

    def test_grads(self, x64):
        rng = np.random.default_rng(7)
        args = (rng.uniform(size=(3, 5)), rng.uniform(size=(3, 5)), rng.normal(size=(3, 1)))
        check_grads(jax.jit(losses.gaussian_log_likelihood), args, order=2)

    def test_bad_shapes_raise(self):
        with pytest.raises(ValueError, match="does not broadcast"):
            losses.gaussian_log_likelihood(jnp.zeros((2, 4)), jnp.zeros((2, 4)), jnp.zeros(3))
        with pytest.raises(ValueError, match="mean has shape"):
            losses.gaussian_log_likelihood(jnp.zeros((2, 4)), jnp.zeros((2, 3)), 0.0)


class TestGaussianLogDensity:
    def test_matches_scipy_with_broadcasting(self):
        rng = np.random.default_rng(8)
        z, mean, log_var = rng.normal(size=(5, 3, 4)), rng.normal(size=(3, 4)), rng.normal(size=4)
        fn = jax.jit(losses.gaussian_log_density)
        expected = scipy.stats.norm.logpdf(z, mean, np.exp(0.5 * log_var)).sum(-1)
        np.testing.assert_allclose(fn(z, mean, log_var), expected, rtol=1e-5)
        prior = fn(z.astype(np.float32), 0.0, 0.0)
        assert prior.shape == (5, 3) and prior.dtype == jnp.float32
        np.testing.assert_allclose(prior, scipy.stats.norm.logpdf(z).sum(-1), rtol=1e-5)

    def test_bad_shapes_raise(self):
        with pytest.raises(ValueError, match="must broadcast"):
            losses.gaussian_log_density(jnp.zeros((5, 3, 4)), jnp.zeros((2, 4)), 0.0)


class TestGaussianMixtureLogDensity:
    def test_matches_scipy(self):
        rng = np.random.default_rng(13)
        z, logits = rng.normal(size=(5, 3, 4)), rng.normal(size=6)
        means, log_vars = 2.0 * rng.normal(size=(2, 6, 4))
        weights = scipy.special.softmax(logits)
        per_component = [
            np.log(w) + scipy.stats.norm.logpdf(z, m, np.exp(0.5 * v)).sum(-1)
            for w, m, v in zip(weights, means, log_vars)
        ]
        expected = scipy.special.logsumexp(per_component, axis=0)
        args = [a.astype(np.float32) for a in (z, logits, means, log_vars)]
        got = jax.jit(losses.gaussian_mixture_log_density)(*args)
        assert got.shape == (5, 3) and got.dtype == jnp.float32
        np.testing.assert_allclose(got, expected, rtol=1e-5)

    def test_one_component_is_the_gaussian_and_far_z_stays_finite(self):
        rng = np.random.default_rng(14)
        z, mean, log_var = rng.normal(size=(3, 7, 4)).astype(np.float32)
        got = losses.gaussian_mixture_log_density(z, jnp.array([3.0]), mean[:1], log_var[:1])
        np.testing.assert_allclose(got, losses.gaussian_log_density(z, mean[:1], log_var[:1]))
        far = losses.gaussian_mixture_log_density(1e3 * z, jnp.zeros(2), mean[:2], log_var[:2])
        assert np.all(np.isfinite(far)) and np.all(far < -1e4)

    def test_bad_shapes_raise(self):
        with pytest.raises(ValueError, match=r"\[\.\.\., L\], \[M\] and \[M, L\]"):
            losses.gaussian_mixture_log_density(
                jnp.zeros((2, 4)), jnp.zeros(3), *[jnp.zeros((2, 4))] * 2
            )
        with pytest.raises(ValueError, match="log_vars has shape"):
            losses.gaussian_mixture_log_density(
                jnp.zeros((2, 4)), jnp.zeros(3), jnp.zeros((3, 4)), jnp.zeros((3, 5))
            )


class TestNegativeElbo:
    def test_value(self):
        got = jax.jit(losses.negative_elbo, static_argnames="beta")(
            jnp.array([-10.0, -3.0]), jnp.array([2.0, 0.5]), beta=4.0
        )
        np.testing.assert_allclose(got, [18.0, 5.0])
        with pytest.raises(ValueError, match="kl has shape"):
            losses.negative_elbo(jnp.zeros(3), jnp.zeros(2))


class TestImportanceWeightedBound:
    def test_matches_scipy_logsumexp_at_extremes(self):
        rng = np.random.default_rng(9)
        a, b, c = 50.0 * rng.normal(size=(3, 7, 4))
        a[:, 0] = -1e4  # tiny weights everywhere: must not underflow to -inf
        expected = scipy.special.logsumexp(a + b - c, axis=0) - np.log(7)
        got = jax.jit(losses.importance_weighted_bound)(a, b, c)
        assert got.shape == (4,) and np.all(np.isfinite(got))
        np.testing.assert_allclose(got, expected, rtol=1e-5)

    def test_one_sample_is_the_log_weight(self):
        a, b, c = np.random.default_rng(10).normal(size=(3, 1, 6)).astype(np.float32)
        got = jax.jit(losses.importance_weighted_bound)(a, b, c)
        np.testing.assert_array_equal(got, (a + b - c)[0])

    def test_bad_shapes_raise(self):
        with pytest.raises(ValueError, match="expected \\[K, B\\]"):
            losses.importance_weighted_bound(*[jnp.zeros(3)] * 3)
        with pytest.raises(ValueError, match="log_qz has shape"):
            losses.importance_weighted_bound(jnp.zeros((2, 3)), jnp.zeros((2, 3)), jnp.zeros(3))


def test_depth_to_space_matches_loops():
    rng = np.random.default_rng(11)
    for spatial in [(3, 2), (2, 3, 2)]:
        ndim, c = len(spatial), 3
        x = rng.normal(size=(2, *spatial, 2**ndim * c))
        got = np.asarray(depth_to_space(jnp.asarray(x)))
        assert got.shape == (2, *(2 * s for s in spatial), c)
        for index in np.ndindex(*got.shape):
            b, *pos, ch = index
            offset = np.ravel_multi_index([p % 2 for p in pos], (2,) * ndim)
            assert got[index] == np.float32(x[(b, *(p // 2 for p in pos), offset * c + ch)])


SHAPE_CASES = [
    ((64, 64), {}),
    ((28, 28), {"widths": (32, 64)}),
    ((16, 16, 16), {"widths": (8, 16), "latent_size": 8}),
    ((32, 32, 32), {}),
]


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("spatial, options", SHAPE_CASES)
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_shapes_and_dtypes(spatial, options, likelihood, dtype):
    model = models.create("conv_vae", likelihood=likelihood, channels=2, dtype=dtype, **options)
    x = jax.ShapeDtypeStruct((3, *spatial, 2), jnp.float32)
    rngs = {"params": key(0), "latent": key(1)}
    out, variables = jax.eval_shape(
        lambda x: model.init_with_output(rngs, x, train=True, num_samples=5), x
    )
    latent = model.latent_size
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), out)
    image = ((5, 3, *spatial, 2), jnp.float32)
    expected_lik = {"logits": image} if likelihood == "bernoulli" else {}
    if likelihood != "bernoulli":
        expected_lik = {"mean": image, "log_std": ((), jnp.float32)}
    assert shapes == {
        "posterior": {"mean": ((3, latent), jnp.float32), "log_var": ((3, latent), jnp.float32)},
        "z": ((5, 3, latent), jnp.float32),
        "log_prior": ((5, 3), jnp.float32),
        "likelihood": expected_lik,
    }
    params = variables["params"]
    assert {a.dtype for a in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}
    assert ("log_std" in params) == (likelihood == "gaussian_learned")
    widths = model.widths
    assert params["encoder"]["conv0"]["kernel"].shape == (4,) * len(spatial) + (2, widths[0])
    up_last = params["decoder"][f"up{len(widths) - 1}_conv"]["kernel"]
    assert up_last.shape == (3,) * len(spatial) + (widths[0], 2 ** len(spatial) * 2)


def test_bfloat16_forward_gives_float32_close_to_float32():
    model32, variables, x = tiny_model_and_data()
    model16 = model32.clone(dtype=jnp.bfloat16)
    out32 = jax.jit(lambda v, x: model32.apply(v, x, train=False, rngs={"latent": key(3)}))
    out16 = jax.jit(lambda v, x: model16.apply(v, x, train=False, rngs={"latent": key(3)}))
    a, b = out32(variables, x), out16(variables, x)
    for leaf32, leaf16 in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        assert leaf16.dtype == jnp.float32
        np.testing.assert_allclose(leaf16, leaf32, atol=0.05, rtol=0.05)
    assert not np.array_equal(a["likelihood"]["logits"], b["likelihood"]["logits"])


def test_call_samples_reparameterised_z_and_decodes_each():
    model, variables, x = tiny_model_and_data()
    out = jax.jit(
        lambda v, x: model.apply(v, x, train=True, num_samples=256, rngs={"latent": key(4)})
    )(variables, x)
    mean, log_var = model.apply(variables, x, method="encode")
    np.testing.assert_allclose(out["posterior"]["mean"], mean, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["posterior"]["log_var"], log_var, rtol=1e-6, atol=1e-6)
    eps = (out["z"] - mean) / np.exp(0.5 * log_var)
    assert abs(eps.mean()) < 5 / np.sqrt(eps.size) and abs(eps.std() - 1) < 0.05
    decoded = model.apply(variables, out["z"][7], (8, 8), method="decode")
    np.testing.assert_allclose(out["likelihood"]["logits"][7], decoded["logits"], atol=1e-5)
    assert not np.allclose(out["likelihood"]["logits"][0], out["likelihood"]["logits"][1])


def test_learned_log_std_is_a_trained_parameter():
    model, variables, x = tiny_model_and_data("gaussian_learned")
    np.testing.assert_allclose(variables["params"]["log_std"], np.log(0.1), rtol=1e-6)

    def loss(params):
        out = model.apply({"params": params}, x, train=True, rngs={"latent": key(5)})
        return -log_likelihood(out["likelihood"], x).mean()

    grads = jax.jit(jax.grad(loss))(variables["params"])
    assert np.isfinite(grads["log_std"]) and grads["log_std"] != 0


def test_unknown_names_and_bad_inputs_raise():
    with pytest.raises(ConfigError, match="'vae' is not a model.*conv_vae"):
        models.create("vae")
    with pytest.raises(ConfigError, match="one of 'bernoulli', 'gaussian_fixed'"):
        models.create("conv_vae", likelihood="poisson")
    model, variables, _ = tiny_model_and_data()
    apply = lambda x: model.apply(variables, x, train=False, rngs={"latent": key(0)})  # noqa: E731
    with pytest.raises(ValueError, match="multiple of 2\\*\\*len\\(widths\\) = 4"):
        apply(jnp.zeros((2, 10, 8, 1)))
    with pytest.raises(ValueError, match="x\\[..., None\\]"):
        apply(jnp.zeros((2, 8, 8)))
    with pytest.raises(ValueError, match="latent_size = 4"):
        model.apply(variables, jnp.zeros((2, 3)), (8, 8), method="decode")


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian_learned"])
def test_check_grads_through_reparameterised_elbo(x64, likelihood):
    model = ConvVAE(latent_size=3, widths=(2, 4), likelihood=likelihood, dtype=jnp.float64)
    x = np.random.default_rng(12).uniform(size=(2, 8, 8, 1))
    rngs = {"params": key(6), "latent": key(7)}
    params = jax.jit(lambda x: model.init(rngs, x, train=True))(x)
    params = jax.tree.map(lambda p: p.astype(jnp.float64), params)

    def nelbo(params, x):
        out = model.apply(params, x, train=True, rngs={"latent": key(8)})
        ll = log_likelihood(out["likelihood"], x)[0]
        return jnp.mean(losses.negative_elbo(ll, losses.gaussian_kl(**out["posterior"])))

    assert jax.jit(nelbo)(params, x).dtype == jnp.float64
    check_grads(
        jax.jit(nelbo), (params, x), order=1, modes=("rev",), eps=1e-7, atol=1e-5, rtol=1e-5
    )


def test_importance_weighted_bound_of_the_model():
    model, variables, x = tiny_model_and_data(batch=4)
    samples = 1000
    out = jax.jit(
        lambda v, x: model.apply(v, x, train=False, num_samples=samples, rngs={"latent": key(9)})
    )(variables, x)
    post, z = out["posterior"], out["z"]
    log_px_z = log_likelihood(out["likelihood"], x)  # [S, B]
    log_pz = losses.gaussian_log_density(z, 0.0, 0.0)
    log_qz = losses.gaussian_log_density(z, post["mean"], post["log_var"])
    single = log_px_z + log_pz - log_qz  # single-sample ELBOs, [S, B]

    # K = 1 is the single-sample ELBO, exactly (same z).
    one = losses.importance_weighted_bound(log_px_z[:1], log_pz[:1], log_qz[:1])
    np.testing.assert_array_equal(one, single[0])
    # Its mean matches the analytic-KL ELBO within Monte Carlo error.
    analytic = log_px_z.mean(0) - losses.gaussian_kl(**post)
    stderr = np.std(log_pz - log_qz, axis=0) / np.sqrt(samples)
    assert np.all(np.abs(single.mean(0) - analytic) < 5 * stderr)

    def mean_bound(k):  # the pool split into samples / k disjoint groups of k
        groups = [a.reshape(samples // k, k, -1) for a in (log_px_z, log_pz, log_qz)]
        return jax.vmap(losses.importance_weighted_bound)(*groups).mean(0)

    bounds = {k: np.asarray(mean_bound(k)) for k in (1, 5, 50)}
    np.testing.assert_allclose(bounds[1], single.mean(0), rtol=1e-6)
    assert np.all(bounds[5] > bounds[1]) and np.all(bounds[50] > bounds[5]), bounds


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian_fixed"])
def test_reconstruct_is_the_decoded_mean_at_the_posterior_mean(likelihood):
    model, variables, x = tiny_model_and_data(likelihood)
    recon = model.apply(variables, x, method="reconstruct")
    mean, _ = model.apply(variables, x, method="encode")
    params = model.apply(variables, mean, (8, 8), method="decode")
    expected = jax.nn.sigmoid(params["logits"]) if "logits" in params else params["mean"]
    assert recon.shape == x.shape and recon.dtype == jnp.float32
    np.testing.assert_allclose(recon, expected, rtol=1e-6, atol=1e-6)
    if likelihood == "bernoulli":
        assert np.all((recon > 0) & (recon < 1))


def test_default_options_keep_the_old_model():
    model, variables, x = tiny_model_and_data("gaussian_learned")
    params = variables["params"]
    assert set(params) == {"encoder", "decoder", "log_std"}
    assert set(params["decoder"]) == {"dense", "up0_conv", "up1_conv"}
    out = model.apply(variables, x, train=False, num_samples=3, rngs={"latent": key(15)})
    expected = scipy.stats.norm.logpdf(np.asarray(out["z"], np.float64)).sum(-1)
    np.testing.assert_allclose(out["log_prior"], expected, rtol=1e-5)
    z = model.apply(variables, key(16), 5, (8, 8), method="sample_prior")
    np.testing.assert_array_equal(z, jax.random.normal(key(16), (5, 4)))


def mixture_log_density(z, logits, means, log_vars):
    """scipy reference of log sum_m w_m N(z; means_m, diag(exp(log_vars_m)))."""
    z, weights = np.asarray(z, np.float64), scipy.special.softmax(np.asarray(logits, np.float64))
    per_component = [
        np.log(w) + scipy.stats.norm.logpdf(z, m, np.exp(0.5 * v)).sum(-1)
        for w, m, v in zip(weights, np.asarray(means), np.asarray(log_vars))
    ]
    return scipy.special.logsumexp(per_component, axis=0)


def test_mixture_prior_density_and_samples():
    model, variables, x = tiny_model_and_data(prior="mixture", prior_components=3)
    params = dict(variables["params"])
    assert params["prior_means"].shape == params["prior_log_vars"].shape == (3, 4)
    params["prior_logits"] = jnp.log(jnp.array([0.2, 0.3, 0.5]))
    params["prior_means"] = 30.0 * jnp.arange(3.0)[:, None] * jnp.ones(4)
    params["prior_log_vars"] = jnp.log(jnp.array([0.25, 1.0, 4.0]))[:, None] * jnp.ones(4)
    variables = {"params": params}
    out = model.apply(variables, x, train=False, num_samples=3, rngs={"latent": key(17)})
    expected = mixture_log_density(
        out["z"], params["prior_logits"], params["prior_means"], params["prior_log_vars"]
    )
    np.testing.assert_allclose(out["log_prior"], expected, rtol=1e-5)
    z = np.asarray(model.apply(variables, key(18), 20_000, (8, 8), method="sample_prior"))
    component = np.round(z[:, 0] / 30).astype(int)  # >= 15 std apart
    counts = np.bincount(component, minlength=3) / len(z)
    np.testing.assert_allclose(counts, [0.2, 0.3, 0.5], atol=5 * np.sqrt(0.25 / len(z)))
    for m, std in enumerate([0.5, 1.0, 2.0]):
        np.testing.assert_allclose(z[component == m].mean(0), 30.0 * m, atol=0.1)
        np.testing.assert_allclose(z[component == m].std(0), std, rtol=0.05)


def test_vamp_prior_is_the_mean_posterior_of_learned_pseudo_inputs():
    model, variables, x = tiny_model_and_data(prior="vamp", prior_components=3)
    pseudo = variables["params"]["pseudo_inputs"]["value"]
    assert pseudo.shape == (3, 8, 8, 1) and 0 <= pseudo.min() and pseudo.max() <= 1
    means, log_vars = model.apply(variables, pseudo, method="encode")
    out = model.apply(variables, x, train=False, num_samples=3, rngs={"latent": key(19)})
    expected = mixture_log_density(out["z"], np.zeros(3), means, log_vars)
    np.testing.assert_allclose(out["log_prior"], expected, rtol=1e-5)

    def log_prior(params):
        z = jnp.ones((2, 4))
        return model.apply({"params": params}, z, (8, 8), method="prior_log_density").sum()

    grads = jax.jit(jax.grad(log_prior))(variables["params"])
    assert np.all(np.isfinite(grads["pseudo_inputs"]["value"]))
    assert np.any(grads["pseudo_inputs"]["value"] != 0)


@pytest.mark.parametrize("prior", PRIORS)
@pytest.mark.parametrize("spatial", [(16, 16), (8, 16, 16)])
def test_shapes_of_every_prior(prior, spatial):
    model = ConvVAE(latent_size=6, widths=(4, 8), prior=prior, prior_components=5, channels=2)
    x = jax.ShapeDtypeStruct((3, *spatial, 2), jnp.float32)
    rngs = {"params": key(0), "latent": key(1)}
    out, variables = jax.eval_shape(
        lambda x: model.init_with_output(rngs, x, train=True, num_samples=7), x
    )
    assert out["log_prior"].shape == (7, 3) and out["log_prior"].dtype == jnp.float32
    samples = jax.eval_shape(
        lambda v: model.apply(v, key(2), 9, spatial, method="sample_prior"), variables
    )
    assert samples.shape == (9, 6)
    if prior == "vamp":
        assert variables["params"]["pseudo_inputs"]["value"].shape == (5, *spatial, 2)


def test_learned_prior_kl_estimate_is_unbiased():
    # A one-component mixture at N(0, I): the sampled KL must average to the analytic one.
    model, variables, x = tiny_model_and_data("gaussian_fixed", prior="mixture", prior_components=1)
    params = {**variables["params"], "prior_means": jnp.zeros((1, 4))}
    params["prior_log_vars"] = jnp.zeros((1, 4))
    apply = jax.jit(
        lambda x: model.apply(
            {"params": params}, x, train=False, num_samples=4000, rngs={"latent": key(20)}
        )
    )
    out = apply(x)
    np.testing.assert_allclose(
        out["log_prior"], losses.gaussian_log_density(out["z"], 0.0, 0.0), rtol=1e-6
    )
    batch = {"image": 2 * x - 1, "label": np.zeros(4, np.int32), "index": np.arange(4)}
    sampled = eval_outputs(out, batch, analytic_kl=False)
    analytic = eval_outputs(out, batch, analytic_kl=True)
    posterior = out["posterior"]
    log_qz = losses.gaussian_log_density(out["z"], posterior["mean"], posterior["log_var"])
    stderr = np.std(log_qz - out["log_prior"], axis=0) / np.sqrt(4000)
    np.testing.assert_allclose(analytic["kl"], losses.gaussian_kl(**posterior), rtol=1e-6)
    assert np.all(np.abs(sampled["kl"] - analytic["kl"]) < 5 * stderr), (sampled, analytic)
    np.testing.assert_allclose(
        sampled["nelbo"] - sampled["kl"], analytic["nelbo"] - analytic["kl"], rtol=1e-6
    )


def test_pixel_std_learns_one_std_per_pixel():
    model, variables, x = tiny_model_and_data("gaussian_learned", pixel_std=True)
    params = variables["params"]
    assert "log_std" not in params
    np.testing.assert_allclose(params["pixel_log_std"]["value"], np.full((8, 8, 1), np.log(0.1)))
    log_std = np.random.default_rng(21).normal(size=(8, 8, 1)).astype(np.float32) - 2
    params = {**params, "pixel_log_std": {"value": log_std}}
    out = model.apply({"params": params}, x, train=True, rngs={"latent": key(22)})
    assert out["likelihood"]["log_std"].shape == (8, 8, 1)
    mean = np.asarray(out["likelihood"]["mean"][0])
    expected = scipy.stats.norm.logpdf(x, mean, np.exp(log_std)).reshape(4, -1).sum(-1)
    np.testing.assert_allclose(log_likelihood(out["likelihood"], x)[0], expected, rtol=1e-5)
    with pytest.raises(ValueError, match="set likelihood to gaussian_learned"):
        ConvVAE(likelihood="gaussian_fixed", pixel_std=True)


def test_decoder_blocks_are_residual_blocks_at_each_scale_below_the_output():
    model, variables, x = tiny_model_and_data(decoder_blocks=2)
    decoder = variables["params"]["decoder"]
    for scale, width in enumerate((8, 4)):  # at 2x2 (widths[-1]), then at 4x4 (widths[0])
        for block in range(2):
            for conv in range(2):
                kernel = decoder[f"res{scale}_{block}_conv{conv}"]["kernel"]
                assert kernel.shape == (3, 3, width, width)
    assert len(decoder) == 3 + 2 * 2 * 2
    plain = ConvVAE(latent_size=4, widths=(4, 8))

    def outputs(variables):  # (with blocks, without: the blocks' weights dropped)
        params = variables["params"]
        decoder = {k: v for k, v in params["decoder"].items() if not k.startswith("res")}
        plain_variables = {"params": {**params, "decoder": decoder}}
        return (
            model.apply(variables, x, method="reconstruct"),
            plain.apply(plain_variables, x, method="reconstruct"),
        )

    with_blocks, without = outputs(variables)
    assert with_blocks.shape == x.shape and not np.allclose(with_blocks, without, atol=1e-3)
    # Zeroed second convs make each block h -> relu(h) = h (h follows a ReLU): no blocks.
    zeroed = jax.tree_util.tree_map_with_path(
        lambda path, p: jnp.zeros_like(p) if "_conv1" in jax.tree_util.keystr(path) else p,
        variables,
    )
    np.testing.assert_allclose(*outputs(zeroed), rtol=1e-6)


def test_bad_prior_options_raise():
    with pytest.raises(ConfigError, match="one of 'normal', 'mixture', 'vamp'"):
        models.create("conv_vae", prior="flow")
    with pytest.raises(ConfigError, match="model.prior_components=0 must be an integer >= 1"):
        models.create("conv_vae", prior="vamp", prior_components=0)
    with pytest.raises(ConfigError, match="model.decoder_blocks=-1 must be an integer >= 0"):
        models.create("conv_vae", decoder_blocks=-1)


@pytest.mark.slow
@pytest.mark.parametrize("image_shape", [(32, 32), (16, 16, 16)])
def test_ct_vae_end_to_end(tiny, tmp_path, image_shape):
    from medjax import train

    config = tiny("ct_vae", image_shape=image_shape)
    config.model.eval_samples = 4
    metrics = train.train_and_evaluate(config, str(tmp_path))
    for name in ("nelbo", "bits_per_dim", "kl", "iw_nll", "recon_error", "anomaly_auroc"):
        assert np.isfinite(metrics[name]), name
    assert metrics["iw_nll"] <= metrics["nelbo"] + 1e-3 * abs(metrics["nelbo"])
    for name in ("reconstructions", "samples", "latent_traversal"):
        assert (tmp_path / "plots" / f"{name}.png").stat().st_size > 0
    for split, size in (("train", 96), ("val", 40), ("test", 48)):
        embeddings = np.load(tmp_path / "embeddings" / f"{split}.npz", allow_pickle=False)
        assert embeddings["posterior_mean"].shape == (size, config.model.latent_size)
        assert len(embeddings["ids"]) == len(set(embeddings["ids"])) == size
        assert set(embeddings["labels"]) <= {0, 1}
    lines = (tmp_path / "predictions" / "test.csv").read_text().splitlines()
    assert lines[0] == "id,label,nelbo,recon_error" and len(lines) == 49
    test = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert test["anomaly_auroc_low"] <= test["anomaly_auroc_high"]  # 95% bootstrap interval
    report = (tmp_path / "report.md").read_text()
    assert "| anomaly_auroc |" in report
    # The operating point and the Platt-scaled calibration of the anomaly score.
    assert test["operating_specificity_low"] <= test["operating_specificity_high"]
    assert "platt_scale" in test and "temperature" not in test
    assert "## Operating point" in report and "Platt scaling of the anomaly score" in report
    assert (tmp_path / "plots" / "calibration.png").stat().st_size > 0
