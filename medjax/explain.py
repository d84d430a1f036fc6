"""Attributions of one score per example to a model's input: gradient saliency, SmoothGrad
(Smilkov et al. 2017), integrated gradients (Sundararajan et al. 2017) and Grad-CAM (Selvaraju
et al. 2017), as pure, jittable functions, plus the PNG writers that `--mode=explain` calls.

A `score_fn` maps an input batch [B, ...] to one score per example [B]; it must treat examples
independently (as an eval-mode model does), so that the gradient of the summed score is each
example's own gradient. Images are scored by the log-odds of class 1 of the two-class ResNet,
logits[:, 1] - logits[:, 0]; series by the RNN's single logit, logits[:, 0].
"""

import os
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from medjax.errors import ConfigError
from medjax.outputs import plots

ScoreFn = Callable[[jax.Array], jax.Array]
IMAGE_METHODS = ("saliency", "smoothgrad", "integrated_gradients", "gradcam")


def _grad(score_fn: ScoreFn, x: jax.Array) -> jax.Array:
    return jax.grad(lambda x: jnp.sum(score_fn(x)))(x)


def saliency(score_fn: ScoreFn, x: jax.Array) -> jax.Array:
    """d score / d x, signed, with the shape of `x`."""
    return _grad(score_fn, x)


def smoothgrad(
    score_fn: ScoreFn, x: jax.Array, key: jax.Array, *, num_samples: int, noise_std: float
) -> jax.Array:
    """Mean gradient at `num_samples` copies of `x` plus N(0, noise_std^2) noise (absolute units).

    The copies are taken one at a time (a scan), so memory does not grow with `num_samples`.
    """

    def add(total, sample_key):
        noise = noise_std * jax.random.normal(sample_key, x.shape, x.dtype)
        return total + _grad(score_fn, x + noise), None

    total, _ = jax.lax.scan(add, jnp.zeros_like(x), jax.random.split(key, num_samples))
    return total / num_samples


def integrated_gradients(
    score_fn: ScoreFn, x: jax.Array, baseline: jax.Array | float, *, num_steps: int
) -> jax.Array:
    """(x - baseline) times the mean gradient on the straight path from `baseline` to `x`, by the
    midpoint rule over `num_steps` points (a scan: memory does not grow with the steps).

    `baseline` broadcasts against `x`. The attributions of each example sum to
    score(x) - score(baseline) up to the rule's error (see `completeness_gap`).
    """
    baseline = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)

    def add(total, alpha):
        return total + _grad(score_fn, baseline + alpha * (x - baseline)), None

    alphas = (jnp.arange(num_steps, dtype=x.dtype) + 0.5) / num_steps
    total, _ = jax.lax.scan(add, jnp.zeros_like(x), alphas)
    return (x - baseline) * total / num_steps


def completeness_gap(
    score_fn: ScoreFn, x: jax.Array, baseline: jax.Array | float, attributions: jax.Array
) -> jax.Array:
    """sum(attributions) - (score(x) - score(baseline)) per example [B]; 0 for exact IG."""
    baseline = jnp.broadcast_to(jnp.asarray(baseline, x.dtype), x.shape)
    total = attributions.reshape(len(x), -1).sum(-1)
    return total - (score_fn(x) - score_fn(baseline))


def log_odds(logits: jax.Array) -> jax.Array:
    """The log-odds of class 1 of a two-class softmax, logits[:, 1] - logits[:, 0] [B]."""
    if logits.shape[-1] != 2:
        raise ValueError(
            f"explanations need a two-class model; got {logits.shape[-1]} logits per example"
        )
    return logits[:, 1] - logits[:, 0]


def gradcam(
    model, variables: dict, x: jax.Array, logit_score=log_odds, *, upsample: bool = True
) -> jax.Array:
    """Grad-CAM of `logit_score(logits)` [B] for a `medjax.models.cnn.ResNet` on [B, *S, C]:
    ReLU(sum_k w_k A_k) over the last stage's maps A_k, w_k the spatial mean of d score / d A_k,
    linearly resized to the input's spatial size S ([B, *S]), or with `upsample=False` at the
    maps' own resolution; not normalised."""

    def score(perturbation):
        logits, state = model.apply(
            {**variables, "perturbations": {"features": perturbation}},
            x,
            train=False,
            mutable=["intermediates"],
        )
        return jnp.sum(logit_score(logits)), state["intermediates"]["features"][0]

    shape = jax.eval_shape(
        lambda: model.apply(variables, x, train=False, mutable=["intermediates"])[1]
    )["intermediates"]["features"][0]
    grads, features = jax.grad(score, has_aux=True)(jnp.zeros(shape.shape, shape.dtype))
    spatial = tuple(range(1, features.ndim - 1))
    weights = jnp.mean(grads, axis=spatial, keepdims=True)
    cam = jax.nn.relu(jnp.sum(weights * features, axis=-1)).astype(jnp.float32)
    return jax.image.resize(cam, x.shape[:-1], "linear") if upsample else cam


def check_gradcam(model, variables: dict, x: jax.Array) -> None:
    """Refuses, in one line, a model without Grad-CAM's part of the model contract
    (medjax/models/__init__.py): it sows its last feature maps as intermediates/features and
    adds the perturbations/features variable to them, so the score's gradient reaches them."""
    module = type(model).__module__
    state = jax.eval_shape(
        lambda: model.apply(variables, x, train=False, mutable=["intermediates"])[1]
    )
    if "features" not in state.get("intermediates", {}):
        raise ConfigError(
            f"Grad-CAM needs the last feature maps, and {module} does not sow them: add "
            "self.sow('intermediates', 'features', maps) to its Model (medjax/models/__init__.py)"
        )
    features = state["intermediates"]["features"][0]
    grads = jax.grad(
        lambda p: jnp.sum(
            log_odds(model.apply({**variables, "perturbations": {"features": p}}, x, train=False))
        )  # fmt: skip
    )(jnp.zeros(features.shape, features.dtype))
    if not jnp.any(grads != 0):
        raise ConfigError(
            f"Grad-CAM needs the score's gradient at the last feature maps, and {module} does "
            "not read the perturbations/features variable: add it to the maps after the sow "
            "(medjax/models/__init__.py)"
        )


def series_integrated_gradients(
    score_fn: Callable[[dict], jax.Array], batch: dict, *, num_steps: int
) -> jax.Array:
    """Integrated gradients of `score_fn(batch)` [B] w.r.t. batch["values"] [B, T, V] from the
    baseline 0 (the training mean of normalised values), the other entries held fixed; exactly 0
    at padded steps (t >= lengths)."""
    values = jnp.asarray(batch["values"], jnp.float32)
    valid = jnp.arange(values.shape[1]) < batch["lengths"][:, None]
    values = jnp.where(valid[..., None], values, 0.0)  # padding may hold NaN
    attributions = integrated_gradients(
        lambda v: score_fn({**batch, "values": v}), values, 0.0, num_steps=num_steps
    )
    return jnp.where(valid[..., None], attributions, 0.0)


def variable_importance(attributions: jax.Array, lengths: jax.Array) -> jax.Array:
    """Mean |attribution| of each variable over each series' valid steps: [B, T, V] -> [B, V]."""
    valid = jnp.arange(attributions.shape[1]) < lengths[:, None]
    total = jnp.sum(jnp.where(valid[..., None], jnp.abs(attributions), 0.0), axis=1)
    return total / lengths[:, None].astype(total.dtype)


def write_image_explanations(
    plots_dir: str,
    model,
    variables: dict,
    images: np.ndarray,
    labels: Sequence,
    ids: Sequence,
    *,
    baseline: float | np.ndarray,
    num_samples: int,
    noise_std: float,
    ig_steps: int,
    key: jax.Array,
    suffix: str,
) -> list[str]:
    """Writes `<method>_<suffix>.png` for each of `IMAGE_METHODS` (2D images [N, H, W, C]: one
    column per example; volumes [N, D, H, W, C]: a row of axial slices per example) and returns
    their paths. Gradient maps show |attribution| summed over channels; Grad-CAM its map."""
    check_gradcam(model, variables, jnp.asarray(images[:1], jnp.float32))

    @jax.jit
    def explain(variables, images, key):
        def score_fn(x):
            return log_odds(model.apply(variables, x, train=False))

        maps = {
            "saliency": saliency(score_fn, images),
            "smoothgrad": smoothgrad(
                score_fn, images, key, num_samples=num_samples, noise_std=noise_std
            ),
            "integrated_gradients": integrated_gradients(
                score_fn, images, baseline, num_steps=ig_steps
            ),
        }
        maps = {name: jnp.abs(m).sum(-1) for name, m in maps.items()}
        return maps | {"gradcam": gradcam(model, variables, images)}, score_fn(images)

    maps, scores = explain(variables, jnp.asarray(images, jnp.float32), key)
    titles = [f"{i}\nlabel {y}, score {s:.2f}" for i, y, s in zip(ids, labels, np.asarray(scores))]
    paths = []
    for name in IMAGE_METHODS:
        paths.append(os.path.join(plots_dir, f"{name}_{suffix}.png"))
        plots.attribution_overlay(paths[-1], np.asarray(images), np.asarray(maps[name]), titles)
    return paths


def write_series_explanations(
    plots_dir: str,
    model,
    variables: dict,
    batch: dict,
    ids: Sequence,
    variable_names: Sequence[str],
    *,
    ig_steps: int,
    suffix: str,
) -> list[str]:
    """Writes `integrated_gradients_<suffix>_patient_<id>.png` (a time x variable heatmap per
    series) and `integrated_gradients_<suffix>_variables.png` (mean |attribution| per variable,
    averaged over the series) for the RNN's logits[:, 0]; returns their paths."""

    @jax.jit
    def explain(variables, batch):
        def score_fn(b):
            return model.apply(variables, b, train=False)["logits"][:, 0]

        attributions = series_integrated_gradients(score_fn, batch, num_steps=ig_steps)
        return attributions, score_fn(batch)

    batch = jax.tree.map(jnp.asarray, batch)
    attributions, scores = jax.device_get(explain(variables, batch))
    lengths = np.asarray(batch["lengths"])
    paths = []
    for a, n, i, s in zip(attributions, lengths, ids, scores):
        safe_id = "".join(c if c.isalnum() or c in "-." else "_" for c in str(i))
        paths.append(
            os.path.join(plots_dir, f"integrated_gradients_{suffix}_patient_{safe_id}.png")
        )
        plots.series_attribution(paths[-1], a[:n], variable_names, f"{i}: logit {s:.2f}")
    importance = np.asarray(variable_importance(attributions, lengths)).mean(0)
    paths.append(os.path.join(plots_dir, f"integrated_gradients_{suffix}_variables.png"))
    plots.variable_importance(paths[-1], importance, variable_names)
    return paths
