"""VAE on images: representation, reconstruction, and anomaly detection by negative ELBO.

By default the VAE trains on normal (label 0) examples only; every example of the evaluated
split is scored, and the scores are compared with the labels (label 1 = anomaly).
"""

import functools
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medjax import losses, models
from medjax.data import image_dataset, image_pipelines
from medjax.errors import ConfigError
from medjax.outputs import plots, writers
from medjax.stats import bootstrap, metrics
from medjax.tasks import scoring
from medjax.tasks.task import Task, compute_dtype


def build(config: ml_collections.ConfigDict, fit_data: ml_collections.ConfigDict) -> Task:
    del fit_data  # images are windowed or scaled by fixed rules: nothing is fitted on data
    dataset = image_dataset(config.data)
    if dataset.num_classes != 2:
        raise ConfigError(
            f"the vae task scores anomalies against binary labels (0 normal, 1 anomaly); "
            f"{dataset.name} has {dataset.num_classes} classes"
        )
    if config.data.augment.mixup_alpha > 0 or config.evaluation.test_time_flips:
        raise ConfigError(
            "data.augment.mixup_alpha and evaluation.test_time_flips are for classifiers; "
            "set them to 0 and False for the vae task"
        )
    model = models.from_config(config.model, channels=dataset.channels, dtype=compute_dtype(config))
    normal_only = config.data.normal_only
    train_batches, eval_batches = image_pipelines.image_pipelines(
        config, dataset, normal_only=normal_only
    )
    beta, warmup = config.loss.beta, config.loss.kl_warmup_steps
    analytic_kl = getattr(model, "prior", "normal") == "normal"
    example_image = np.zeros((1, *dataset.image_shape, dataset.channels), np.float32)
    return Task(
        model=model,
        model_inputs=lambda batch: to_unit(batch["image"]),
        example_batch={"image": example_image, "label": np.zeros(1, np.int32)},
        loss_fn=functools.partial(loss, beta=beta, kl_warmup_steps=warmup, analytic_kl=analytic_kl),
        eval_outputs_fn=functools.partial(eval_outputs, analytic_kl=analytic_kl),
        compute_metrics=functools.partial(
            compute_metrics, num_dims=int(np.prod(dataset.image_shape)) * dataset.channels
        ),
        metric_intervals=metric_intervals,
        train_batches=train_batches,
        eval_batches=eval_batches,
        write_outputs=functools.partial(
            write_outputs, model=model, dataset=dataset, eval_batches=eval_batches
        ),
        prediction_table=functools.partial(prediction_table, dataset=dataset),
        description=f"{dataset.description}; model {models.describe(config.model)}, trained on "
        f"{'normal examples only' if normal_only else 'all examples'}",
        selection_metrics=("nelbo", "iw_nll", "recon_error", "anomaly_auroc", "loss"),
        split_sizes=lambda: image_pipelines.image_split_sizes(dataset, normal_only=normal_only),
        data_fingerprint=lambda: image_pipelines.image_fingerprint(dataset),
        binary_scores=lambda gathered: (gathered["label"], gathered["nelbo"].astype(np.float64)),
        final_metrics=scoring.min_se_ppv,
        scores_are_log_odds=False,
        rng_streams=("latent",),
    )


def loss(outputs, batch, step, *, beta, kl_warmup_steps, analytic_kl):
    """The negative ELBO of one posterior sample, its KL term weighted by `beta` (ramped up
    linearly over `kl_warmup_steps`), mean over the batch."""
    x = to_unit(batch["image"])
    log_px_z = log_likelihood(outputs["likelihood"], x)[0]  # one training sample
    kl = _kl(outputs, analytic_kl)[0]
    weight = beta * jnp.minimum(1.0, step / kl_warmup_steps) if kl_warmup_steps else beta
    return jnp.mean(kl * weight - log_px_z)


def eval_outputs(outputs, batch, *, analytic_kl):
    """Per-example negative ELBO, KL, importance-weighted NLL, reconstruction error and
    posterior mean, with the label and row index."""
    x = to_unit(batch["image"])
    log_px_z = log_likelihood(outputs["likelihood"], x)  # [K, B]
    posterior = outputs["posterior"]
    kl = jnp.mean(_kl(outputs, analytic_kl), axis=0)
    log_qz = losses.gaussian_log_density(outputs["z"], posterior["mean"], posterior["log_var"])
    recon = outputs["reconstruction"]  # the decoder's mean at the posterior mean
    return {
        "nelbo": kl - log_px_z[0],
        "kl": kl,
        "iw_nll": -losses.importance_weighted_bound(log_px_z, outputs["log_prior"], log_qz),
        "recon_error": jnp.mean((recon - x) ** 2, axis=tuple(range(1, x.ndim))),
        "posterior_mean": posterior["mean"],
        "label": batch["label"],
        "index": batch["index"],
    }


def compute_metrics(gathered, *, num_dims: int):
    """Likelihood metrics (nats; bits per dimension of `num_dims`) and anomaly scores' AUROC."""
    labels = gathered["label"]
    nelbo = float(np.mean(gathered["nelbo"]))
    result = {
        "nelbo": nelbo,
        "bits_per_dim": nelbo / (num_dims * np.log(2)),
        "kl": float(np.mean(gathered["kl"])),
        "iw_nll": float(np.mean(gathered["iw_nll"])),
        "recon_error": float(np.mean(gathered["recon_error"])),
        # Active units (Burda et al. 2016): latents whose posterior mean varies with x.
        "active_units": int(np.sum(np.var(gathered["posterior_mean"], axis=0) > 0.01)),
        "anomaly_auroc": metrics.roc_auc(labels, gathered["nelbo"]),
        "anomaly_auprc": metrics.average_precision(labels, gathered["nelbo"]),
        "anomaly_auroc_recon": metrics.roc_auc(labels, gathered["recon_error"]),
        "anomaly_auprc_recon": metrics.average_precision(labels, gathered["recon_error"]),
    }
    result["loss"] = nelbo
    return result


def metric_intervals(gathered):
    """95% stratified bootstrap intervals of the negative ELBO's anomaly metrics."""
    found = bootstrap.intervals(gathered["label"], gathered["nelbo"])
    return {f"anomaly_{name}": interval for name, interval in found.items()}


def prediction_table(split, gathered, *, dataset):
    """id, label, and the anomaly scores nelbo and recon_error."""
    ids = dataset.load_split(split)["ids"][gathered["index"]]
    rows = zip(ids, gathered["label"], gathered["nelbo"], gathered["recon_error"])
    rows = [[i, int(y), f"{n:.6g}", f"{r:.6g}"] for i, y, n, r in rows]
    return ["id", "label", "nelbo", "recon_error"], rows


def write_outputs(workdir, split, gathered, variables, *, model, dataset, eval_batches):
    """predictions/<split>.csv, embeddings/<split>.npz (posterior means of train, val and
    `split`) and the image grids."""
    path = os.path.join(workdir, "predictions", f"{split}.csv")
    writers.write_table(path, *prediction_table(split, gathered, dataset=dataset))
    ids = dataset.load_split(split)["ids"][gathered["index"]]
    os.makedirs(os.path.join(workdir, "embeddings"), exist_ok=True)
    for name in ("train", "val", split):  # posterior means for downstream use
        if name == split:
            means, labels, index = gathered["posterior_mean"], gathered["label"], ids
        else:
            means, labels, index = _posterior_means(model, variables, eval_batches(name))
            index = dataset.load_split(name)["ids"][index]
        path = os.path.join(workdir, "embeddings", f"{name}.npz")
        np.savez(path, ids=index, labels=labels, posterior_mean=means)
    return _plot_images(workdir, split, model, variables, next(eval_batches(split)))


def _kl(outputs, analytic):
    """KL(q(z | x) || p(z)): analytic [1, B] (prior N(0, I)), or log q(z_k | x) - log p(z_k)
    [K, B] at the posterior samples z_k, each an unbiased estimate (a learned prior)."""
    posterior = outputs["posterior"]
    if analytic:
        return losses.gaussian_kl(**posterior)[None]
    log_qz = losses.gaussian_log_density(outputs["z"], posterior["mean"], posterior["log_var"])
    return log_qz - outputs["log_prior"]


def log_likelihood(likelihood, x):
    """log p(x | z_k) [K, B] from the decoder's parameters with leading axes [K, B]."""
    if "logits" in likelihood:
        return jax.vmap(lambda logits: losses.bernoulli_log_likelihood(logits, x))(
            likelihood["logits"]
        )
    return jax.vmap(lambda mean: losses.gaussian_log_likelihood(x, mean, likelihood["log_std"]))(
        likelihood["mean"]
    )


def to_unit(image):
    """Windowed images in [-1, 1] -> [0, 1], the VAE's data space."""
    return (image + 1) / 2


def _posterior_means(model, variables, batches):
    """Posterior means [N, L], labels [N] and row indices [N] of a split, padding dropped."""
    encode = jax.jit(lambda x: model.apply(variables, to_unit(x), method=model.encode)[0])
    gatherer = metrics.OutputGatherer()
    for batch in batches:
        outputs = {"mean": np.asarray(encode(batch["image"])), "label": batch["label"]}
        gatherer.add({**outputs, "index": batch["index"]}, batch["valid"])
    result = gatherer.result()
    return result["mean"], result["label"], result["index"]


def _plot_images(workdir, split, model, variables, batch, num=8):
    """Reconstructions, prior samples and a latent traversal, as PNGs and TensorBoard images."""
    x = to_unit(batch["image"][:num])
    key = jax.random.key(0)
    spatial = x.shape[1:-1]
    recon = model.apply(variables, x, method=model.reconstruct)
    prior = model.apply(variables, key, num, spatial, method=model.sample_prior)
    samples = model.apply(variables, prior, spatial, method=model.decode_mean)
    mean, _ = model.apply(variables, x[:1], method=model.encode)
    dims = np.argsort(-np.abs(np.asarray(mean[0])))[:4]  # the first example's strongest latents
    steps = np.linspace(-3, 3, num)
    traversal = np.repeat(np.asarray(mean), len(dims) * num, axis=0)
    for row, dim in enumerate(dims):
        traversal[row * num : (row + 1) * num, dim] = steps
    traversed = model.apply(variables, jnp.asarray(traversal), spatial, method=model.decode_mean)
    grids = {
        "reconstructions": [np.asarray(x), np.asarray(recon)],
        "samples": [np.asarray(samples)],
        "latent_traversal": list(np.asarray(traversed).reshape(len(dims), num, *x.shape[1:])),
    }
    images = {}
    for name, rows in grids.items():
        images[name] = plots.image_grid(os.path.join(workdir, "plots", f"{name}.png"), rows)
    return images
