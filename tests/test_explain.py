"""Attributions: closed forms, completeness, Grad-CAM by hand, and mass on the region that
carries the label of a synthetic task (measured on a trained model)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from medjax import explain, models


def _init(model, key, *, volumes=False):
    """model.init under jax.jit (eagerly, each of the initialisers' operations would be compiled
    on its own) on one input shape for images and one for volumes: the parameters do not depend
    on the spatial size, and the tests share the compilation."""
    shape = (1, 8, 16, 16, 1) if volumes else (1, 16, 16, 1)
    return jax.jit(lambda key: model.init(key, jnp.zeros(shape), train=False))(key)


def _resnet(num_classes=2):
    return models.create("resnet10", num_classes=num_classes, width=0.125, small_input=True)


class TestClosedForms:
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 4)), jnp.float32)
    w = jnp.asarray(np.random.default_rng(1).normal(size=(5, 4)), jnp.float32)

    def linear(self, x):
        return jnp.sum(x * self.w, axis=(1, 2))

    def test_linear_score(self):
        w = np.broadcast_to(self.w, self.x.shape)
        np.testing.assert_allclose(explain.saliency(self.linear, self.x), w, rtol=1e-6)
        smooth = explain.smoothgrad(
            self.linear, self.x, jax.random.key(0), num_samples=8, noise_std=0.5
        )
        np.testing.assert_allclose(smooth, w, rtol=1e-5)
        ig = explain.integrated_gradients(self.linear, self.x, -1.0, num_steps=3)
        np.testing.assert_allclose(ig, (self.x + 1.0) * w, rtol=1e-5)

    def test_quadratic_score_is_integrated_exactly_by_the_midpoint_rule(self):
        def quadratic(x):
            return jnp.sum(self.w * x**2, axis=(1, 2))

        baseline = 0.3
        ig = explain.integrated_gradients(quadratic, self.x, baseline, num_steps=4)
        np.testing.assert_allclose(ig, self.w * (self.x**2 - baseline**2), rtol=1e-5, atol=1e-6)
        gap = explain.completeness_gap(quadratic, self.x, baseline, ig)
        np.testing.assert_allclose(gap, 0.0, atol=1e-4)


def test_integrated_gradients_are_complete_for_the_resnet():
    model = _resnet()
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, 16, 16, 1)), jnp.float32)
    variables = _init(model, jax.random.key(0))

    def score(images):
        return explain.log_odds(model.apply(variables, images, train=False))

    change = score(x) - score(jnp.full_like(x, -1.0))
    gaps = []
    for steps in (8, 256):
        ig = explain.integrated_gradients(score, x, -1.0, num_steps=steps)
        gaps.append(np.abs(explain.completeness_gap(score, x, -1.0, ig)))
    assert np.all(gaps[1] <= 0.01 * np.abs(change) + 1e-4), (gaps[1], change)
    assert gaps[1].sum() < gaps[0].sum()  # converges with the number of steps


@pytest.mark.parametrize("cell", ["gru", "gru_d"])
def test_series_integrated_gradients_are_complete_and_zero_on_padding(cell):
    rng = np.random.default_rng(3)
    b, t, v = 3, 10, 4
    lengths = np.array([10, 6, 3], np.int32)
    batch = {
        "values": rng.normal(size=(b, t, v)).astype(np.float32),
        "mask": (rng.random((b, t, v)) < 0.6).astype(np.float32),
        "delta": rng.uniform(0, 3, (b, t, v)).astype(np.float32),
        "lengths": lengths,
        "static": rng.normal(size=(b, 2)).astype(np.float32),
    }
    batch["values"][2, 3:] = np.nan  # padding may hold anything
    model = models.create(cell, hidden_size=8)
    variables = jax.jit(model.init, static_argnames="train")(jax.random.key(0), batch, train=False)

    def score(inputs):
        return model.apply(variables, inputs, train=False)["logits"][:, 0]

    attributions = np.asarray(explain.series_integrated_gradients(score, batch, num_steps=128))
    for i, n in enumerate(lengths):
        assert np.all(attributions[i, n:] == 0), i
    clean = {**batch, "values": np.nan_to_num(batch["values"])}
    change = score(clean) - score({**clean, "values": np.zeros_like(clean["values"])})
    np.testing.assert_allclose(attributions.sum(axis=(1, 2)), change, rtol=1e-2, atol=1e-4)


def test_gradcam_equals_its_closed_form_for_the_resnet():
    # After the last stage the ResNet mean-pools and applies a dense head, so d(log-odds)/dA_k
    # is (W[k, 1] - W[k, 0]) / positions at every position.
    model = _resnet()
    x = jnp.asarray(np.random.default_rng(4).normal(size=(2, 16, 16, 1)), jnp.float32)
    variables = _init(model, jax.random.key(1))
    _, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    features = state["intermediates"]["features"][0]  # [B, h, w, K]
    kernel = variables["params"]["head"]["kernel"]
    weights = (kernel[:, 1] - kernel[:, 0]) / (features.shape[1] * features.shape[2])
    expected = jax.image.resize(
        jax.nn.relu(jnp.einsum("bhwk,k->bhw", features, weights)), (2, 16, 16), "linear"
    )
    np.testing.assert_allclose(explain.gradcam(model, variables, x), expected, atol=1e-5)


def _blob_images(n, rng):
    """32x32 noise; label 1 puts a bright blob in the top-left quadrant, and every image has a
    dark distractor blob in one of the other three, so only the top-left carries the label."""
    images = rng.normal(0, 0.3, (n, 32, 32, 1)).astype(np.float32)
    labels = rng.integers(0, 2, n)
    yy, xx = np.mgrid[:32, :32]

    def add_blob(image, top, left, amplitude):
        cy, cx = top + rng.integers(3, 10), left + rng.integers(3, 10)
        image[..., 0] += amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 6.0)

    for image, label in zip(images, labels):
        top, left = [(0, 16), (16, 0), (16, 16)][rng.integers(3)]
        add_blob(image, top, left, -2.0)
        if label:
            add_blob(image, 0, 0, 2.0)
    return images, labels


@pytest.fixture(scope="module")
def trained_blob_model():
    model = _resnet()
    rng = np.random.default_rng(5)
    variables = _init(model, jax.random.key(2))
    tx = optax.adam(3e-3)

    @jax.jit
    def step(params, batch_stats, opt_state, images, labels):
        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": batch_stats},
                images,
                train=True,
                mutable=["batch_stats"],
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            return loss, updates["batch_stats"]

        (_, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state)
        return optax.apply_updates(params, updates), batch_stats, opt_state

    params, batch_stats = variables["params"], variables["batch_stats"]
    opt_state = tx.init(params)
    for _ in range(150):
        images, labels = _blob_images(64, rng)
        params, batch_stats, opt_state = step(params, batch_stats, opt_state, images, labels)
    return model, {"params": params, "batch_stats": batch_stats}


@pytest.mark.slow  # a training
def test_gradcam_and_integrated_gradients_point_at_the_region_that_carries_the_label(
    trained_blob_model,
):
    model, variables = trained_blob_model
    images, labels = _blob_images(200, np.random.default_rng(6))
    logits = model.apply(variables, images, train=False)
    accuracy = float(np.mean(np.argmax(logits, 1) == labels))
    assert accuracy > 0.9, accuracy  # it learned the task

    positives = jnp.asarray(images[labels == 1][:32])

    def score(x):
        return explain.log_odds(model.apply(variables, x, train=False))

    def top_left_share(maps):
        maps = np.abs(np.asarray(maps)).reshape(maps.shape[:3])
        half = maps.shape[1] // 2
        return float(np.mean(maps[:, :half, :half].sum((1, 2)) / maps.sum((1, 2))))

    # Grad-CAM's mass is measured on the last stage's 4x4 grid, where the top-left 2x2 cells
    # are the quadrant: upsampling to 32x32 spreads each cell over its neighbours' pixels.
    gradcam_share = top_left_share(explain.gradcam(model, variables, positives, upsample=False))
    # The baseline 0 is the noise's mean: the image with no blob.
    ig_share = top_left_share(explain.integrated_gradients(score, positives, 0.0, num_steps=32))
    # The quadrant is 25% of the image; a dark distractor blob sits in another quadrant.
    assert gradcam_share > 0.5 and ig_share > 0.5, (gradcam_share, ig_share)


@pytest.mark.slow  # files, and a 3D model
def test_the_plots_are_written_under_the_required_names(tmp_path):
    model = _resnet()
    images = np.random.default_rng(7).normal(size=(2, 16, 16, 1)).astype(np.float32)
    variables = _init(model, jax.random.key(0))
    paths = explain.write_image_explanations(
        str(tmp_path), model, variables, images, [0, 1], ["a", "b"], baseline=-1.0,
        num_samples=2, noise_std=0.1, ig_steps=4, key=jax.random.key(0), suffix="test",
    )  # fmt: skip
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(f"{m}_test.png" for m in explain.IMAGE_METHODS)
    assert all(p.stat().st_size > 0 for p in tmp_path.iterdir()) and len(paths) == 4
    volumes = np.random.default_rng(8).normal(size=(1, 8, 16, 16, 1)).astype(np.float32)
    variables = _init(model, jax.random.key(0), volumes=True)
    explain.write_image_explanations(
        str(tmp_path), model, variables, volumes, [1], ["v"], baseline=-1.0,
        num_samples=2, noise_std=0.1, ig_steps=4, key=jax.random.key(0), suffix="volume",
    )  # fmt: skip
    assert (tmp_path / "gradcam_volume.png").stat().st_size > 0
