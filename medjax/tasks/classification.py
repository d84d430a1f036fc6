"""Image classification (2D slices or 3D volumes) with a ResNet: the CT CNN task."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from medjax import explain, losses, models, parallel
from medjax.data import image_dataset, image_pipelines
from medjax.errors import ConfigError
from medjax.stats import bootstrap
from medjax.tasks import scoring
from medjax.tasks.task import Task, compute_dtype, concrete_as_numpy


def build(config: ml_collections.ConfigDict, fit_data: ml_collections.ConfigDict) -> Task:
    del fit_data  # images are windowed or scaled by fixed rules: nothing is fitted on data
    dataset = image_dataset(config.data)
    model = _model(config, dataset.num_classes)
    class_weights = tuple(config.loss.class_weights) or None
    if class_weights is not None and len(class_weights) != dataset.num_classes:
        raise ConfigError(
            f"loss.class_weights has {len(class_weights)} entries but {dataset.name} has "
            f"{dataset.num_classes} classes; give one weight per class or () for none"
        )
    if dataset.multilabel and config.data.balanced_sampling:
        raise ConfigError(
            f"data.balanced_sampling needs one class per example; {dataset.name} is multi-label:"
            " use loss.class_weights (one per label) instead"
        )
    augment = config.data.augment
    if augment.mixup_alpha > 0 and config.privacy.enabled:
        raise ConfigError(
            "data.augment.mixup_alpha > 0 mixes examples, so one example is in several training "
            "rows and DP-SGD's per-example bound fails; set it to 0 with privacy.enabled"
        )
    flips = config.evaluation.test_time_flips
    if flips and not (augment.enabled and augment.flip_left_right):
        raise ConfigError(
            "evaluation.test_time_flips averages over mirrored images, but training saw none; "
            "set data.augment.enabled and data.augment.flip_left_right too, or turn it off"
        )
    train_batches, eval_batches = image_pipelines.image_pipelines(config, dataset)
    example_image = np.zeros((1, *dataset.image_shape, dataset.channels), np.float32)
    example_label = np.zeros((1, dataset.num_classes) if dataset.multilabel else 1, np.int32)
    binary = dataset.num_classes == 2 and not dataset.multilabel
    baseline = float(
        image_pipelines.model_input(
            tf.constant(image_pipelines.background_of(dataset)), dataset, config.data
        )
    )
    return Task(
        model=model,
        model_inputs=image_of,
        example_batch={"image": example_image, "label": example_label},
        loss_fn=functools.partial(
            loss,
            multilabel=dataset.multilabel,
            class_weights=class_weights,
            label_smoothing=config.loss.label_smoothing,
            focal_gamma=config.loss.focal_gamma,
        ),
        eval_outputs_fn=functools.partial(eval_outputs, multilabel=dataset.multilabel),
        compute_metrics=scoring.multilabel_metrics if dataset.multilabel else scoring.class_metrics,
        metric_intervals=scoring.binary_intervals if binary else class_intervals,
        train_batches=train_batches,
        eval_batches=eval_batches,
        write_outputs=functools.partial(write_outputs, dataset=dataset),
        prediction_table=lambda split, gathered: scoring.prediction_table(
            gathered, dataset.load_split(split)["ids"]
        ),
        description=_description(config, dataset),
        selection_metrics=("auroc", "auprc", "accuracy", "loss")
        + (("brier",) if dataset.multilabel else ("balanced_accuracy", "ece")),
        split_sizes=lambda: image_pipelines.image_split_sizes(dataset),
        data_fingerprint=lambda: image_pipelines.image_fingerprint(dataset),
        binary_scores=scoring.binary_log_odds if binary else None,
        final_metrics=scoring.min_se_ppv if binary else None,
        # The score explained: the log-odds of class 1.
        explain=functools.partial(explain_examples, model, dataset, baseline) if binary else None,
        ensemble_outputs=functools.partial(ensemble_outputs, multilabel=dataset.multilabel),
        test_time_views=with_mirror if flips else None,
    )


def _model(config: ml_collections.ConfigDict, num_classes: int):
    return models.from_config(
        config.model,
        num_classes=num_classes,
        dtype=compute_dtype(config),
        # Under pmap, batch norm pools its statistics over devices, as jit's global batch.
        norm_axis_name=parallel.AXIS if config.parallel == "pmap" else None,
    )


def _description(config: ml_collections.ConfigDict, dataset) -> str:
    text = f"{dataset.description}; model {models.describe(config.model)}"
    if config.data.augment.mixup_alpha > 0:
        text += f"; mixup alpha {config.data.augment.mixup_alpha:g}"
    if config.evaluation.test_time_flips:
        text += "; test-time augmentation: the mean logits of each image and its mirror image"
    return text


def image_of(batch):
    return batch["image"]


def with_mirror(image):
    """The images [B, ..., W, C] and their left-right mirrors, as the training flips make."""
    return image, jnp.flip(image, axis=-2)


def loss(logits, batch, step, *, multilabel, class_weights, label_smoothing, focal_gamma):
    """Softmax (single-label) or per-label sigmoid (multi-label) cross-entropy, mean over the
    batch; logits [B, C], labels [B] or [B, C]."""
    del step
    loss_of = losses.sigmoid_cross_entropy if multilabel else losses.softmax_cross_entropy
    return loss_of(
        logits,
        batch["label"],
        class_weights=class_weights,
        label_smoothing=label_smoothing,
        focal_gamma=focal_gamma,
    )


def eval_outputs(logits, batch, *, multilabel):
    """Per-example logits, class probabilities, labels and row indices."""
    probs = jax.nn.sigmoid(logits) if multilabel else jax.nn.softmax(logits)
    return {"logits": logits, "probs": probs, "label": batch["label"], "index": batch["index"]}


def ensemble_outputs(members, *, multilabel):
    """The mean of the members' logits, with the probabilities recomputed from it."""
    logits = jnp.mean(jnp.stack([gathered["logits"] for gathered in members]), axis=0)
    return concrete_as_numpy(eval_outputs(logits, members[0], multilabel=multilabel))


def class_intervals(gathered):
    """95% bootstrap intervals of the macro AUROC and the accuracy (multi-class, multi-label)."""
    return bootstrap.class_intervals(gathered["label"], gathered["probs"])


def write_outputs(workdir, split, gathered, variables, *, dataset):
    del variables
    ids = dataset.load_split(split)["ids"]
    scoring.write_class_outputs(workdir, split, gathered, ids, dataset.class_names, dataset.name)
    return {}


def explain_examples(model, dataset, baseline, plots_dir, split, variables, batch, settings, key):
    """The image attribution maps (medjax.explain) of the examples of `batch`."""
    return explain.write_image_explanations(
        plots_dir,
        model,
        variables,
        batch["image"],
        batch["label"],
        dataset.load_split(split)["ids"][batch["index"]],
        baseline=baseline,
        num_samples=settings.smoothgrad_samples,
        noise_std=settings.smoothgrad_noise * 2.0,  # inputs span [-1, 1]
        ig_steps=settings.ig_steps,
        key=key,
        suffix=split,
    )
