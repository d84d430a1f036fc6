"""Image classification (2D slices or 3D volumes) with a ResNet: the CT CNN task."""

import os

import jax
import ml_collections
import numpy as np
import tensorflow as tf

from medjax import bootstrap, explain, losses, metrics, parallel, plots, privacy, writers
from medjax.data import image_dataset, pipeline, transforms
from medjax.data.dataset import SPLITS
from medjax.errors import ConfigError
from medjax.models import cnn
from medjax.tasks.task import Task, compute_dtype, fingerprint


def build(config: ml_collections.ConfigDict, fit_data: ml_collections.ConfigDict) -> Task:
    del fit_data  # images are windowed or scaled by fixed rules: nothing is fitted on data
    dataset = image_dataset(config.data)
    try:
        model = cnn.create_model(
            config.model.name,
            num_classes=dataset.num_classes,
            width=config.model.width,
            norm=config.model.norm,
            small_input=config.model.small_input,
            dropout_rate=config.model.dropout_rate,
            dtype=compute_dtype(config),
            # Under pmap, batch norm pools its statistics over devices, as jit's global batch.
            norm_axis_name=parallel.AXIS if config.parallel == "pmap" else None,
        )
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
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
    train_batches, eval_batches = image_pipelines(config, dataset)

    def loss_fn(logits, batch, step):
        del step
        loss = losses.sigmoid_cross_entropy if dataset.multilabel else losses.softmax_cross_entropy
        return loss(
            logits,
            batch["label"],
            class_weights=class_weights,
            label_smoothing=config.loss.label_smoothing,
            focal_gamma=config.loss.focal_gamma,
        )

    def eval_outputs_fn(logits, batch):
        probs = jax.nn.sigmoid(logits) if dataset.multilabel else jax.nn.softmax(logits)
        return {"logits": logits, "probs": probs, "label": batch["label"], "index": batch["index"]}

    def write_outputs(workdir, split, gathered, variables):
        del variables
        ids = dataset.load_split(split)["ids"]
        write_outputs_of(workdir, split, gathered, ids, dataset.class_names, dataset.name)
        return {}

    baseline = float(model_input(tf.constant(background_of(dataset)), dataset, config.data))

    def explain_fn(plots_dir, split, variables, batch, settings, key):
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

    example_image = np.zeros((1, *dataset.image_shape, dataset.channels), np.float32)
    example_label = np.zeros((1, dataset.num_classes) if dataset.multilabel else 1, np.int32)
    binary = dataset.num_classes == 2 and not dataset.multilabel
    return Task(
        model=model,
        model_inputs=lambda batch: batch["image"],
        example_batch={"image": example_image, "label": example_label},
        loss_fn=loss_fn,
        eval_outputs_fn=eval_outputs_fn,
        compute_metrics=multilabel_metrics if dataset.multilabel else compute_metrics,
        metric_intervals=binary_intervals
        if binary
        else (lambda gathered: bootstrap.class_intervals(gathered["label"], gathered["probs"])),
        train_batches=train_batches,
        eval_batches=eval_batches,
        write_outputs=write_outputs,
        prediction_table=lambda split, gathered: prediction_table(
            gathered, dataset.load_split(split)["ids"]
        ),
        description=f"{dataset.description}; model {config.model.name} "
        f"(width {config.model.width}, {config.model.norm} norm)",
        selection_metrics=("auroc", "auprc", "accuracy", "loss")
        + (("brier",) if dataset.multilabel else ("balanced_accuracy", "ece")),
        split_sizes=lambda: image_split_sizes(dataset),
        data_fingerprint=lambda: image_fingerprint(dataset),
        binary_scores=binary_log_odds if binary else None,
        explain=explain_fn if binary else None,  # the score explained: the log-odds of class 1
    )


def image_split_sizes(dataset, *, normal_only: bool = False) -> dict[str, int]:
    """Examples per split; training counts only the normal ones with `normal_only`."""
    labels = {split: dataset.load_split(split)["labels"] for split in SPLITS}
    sizes = {split: len(labels[split]) for split in SPLITS}
    return sizes | ({"train": int(_is_normal(labels["train"]).sum())} if normal_only else {})


def image_fingerprint(dataset) -> str:
    """Every split's example ids and labels, and the image shape (hashing every voxel of a CT
    dataset would cost more than it tells)."""
    arrays = {"image_shape": np.array(dataset.image_shape)}
    for split in SPLITS:
        loaded = dataset.load_split(split)
        arrays |= {f"{split}/ids": loaded["ids"], f"{split}/labels": loaded["labels"]}
    return fingerprint(arrays)


def image_pipelines(config: ml_collections.ConfigDict, dataset, *, normal_only: bool = False):
    """(train_batches, eval_batches) of windowed images with labels; training is augmented.

    With `normal_only`, training sees only the normal examples, label 0 or (multi-label) no
    label at all; evaluation sees every one.
    """
    data = config.data
    process_index, process_count = jax.process_index(), jax.process_count()
    background = background_of(dataset)

    def with_channels(pixels):
        return pixels if dataset.channels > 1 else pixels[..., None]

    def to_input(image):
        return model_input(image, dataset, data)

    def train_batches(start_step):
        arrays = dataset.load_split("train")
        keep = _is_normal(arrays["labels"]) if normal_only else slice(None)
        train_labels = arrays["labels"][keep]
        images, labels = tf.constant(arrays["images"][keep]), tf.constant(train_labels)
        augment = data.augment

        def load(index, seed):
            image = with_channels(tf.gather(images, index))
            if augment.enabled:
                image = transforms.augment(
                    image,
                    seed,
                    flip_left_right=augment.flip_left_right,
                    max_rotation_degrees=augment.max_rotation_degrees,
                    max_shift_fraction=augment.max_shift_fraction,
                    intensity_shift=augment.intensity_shift,
                    intensity_scale=augment.intensity_scale,
                    background=background,
                )
            return {"image": to_input(image), "label": tf.gather(labels, index)}

        return pipeline.train_batches(
            train_labels,
            load,
            global_batch_size=config.trainer.batch_size,
            seed=config.seed,
            start_step=start_step,
            balanced=data.balanced_sampling,
            process_index=process_index,
            process_count=process_count,
            poisson_max_size=privacy.poisson_max_size(config, len(train_labels)),
        )

    def eval_batches(split):
        arrays = dataset.load_split(split)
        images, labels = tf.constant(arrays["images"]), tf.constant(arrays["labels"])
        return pipeline.eval_batches(
            len(arrays["labels"]),
            lambda i: {
                "image": to_input(with_channels(tf.gather(images, i))),
                "label": tf.gather(labels, i),
            },
            global_batch_size=config.trainer.eval_batch_size,
            process_index=process_index,
            process_count=process_count,
        )

    return train_batches, eval_batches


def background_of(dataset) -> float:
    """The background in the images' own units: air (-1000 HU) or black."""
    return -1000.0 if dataset.intensity == "hu" else 0.0


def model_input(image: tf.Tensor, dataset, data: ml_collections.ConfigDict) -> tf.Tensor:
    """Raw pixels (HU or 0..255) -> the model's input in [-1, 1]: windowed CT or scaled uint8."""
    if dataset.intensity == "hu":
        return transforms.window(image, data.window_center, data.window_width)
    return transforms.scale_uint8(image)


def compute_metrics(gathered: dict[str, np.ndarray]) -> dict[str, float]:
    """Classification metrics plus `loss`, the mean negative log-likelihood of the labels."""
    probs, labels = gathered["probs"].astype(np.float64), gathered["label"]
    result = metrics.classification_metrics(labels, probs)
    label_probs = probs[np.arange(len(labels)), labels]
    result["loss"] = float(-np.mean(np.log(np.maximum(label_probs, np.finfo(np.float64).tiny))))
    return result


HEADLINE_BINARY = ("auroc", "auprc", "accuracy", "sensitivity", "specificity", "ece", "brier")


def binary_intervals(gathered: dict[str, np.ndarray]) -> dict[str, tuple[float, float]]:
    """95% stratified bootstrap intervals of the headline binary metrics (threshold 0.5)."""
    found = bootstrap.intervals(
        gathered["label"],
        gathered["probs"][:, 1],
        threshold=0.5,
        calibration_bins=metrics.ECE_BINS,
    )
    return {name: found[name] for name in HEADLINE_BINARY if name in found}


def binary_log_odds(gathered: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Labels and the log-odds of class 1 of a two-class softmax."""
    logits = gathered["logits"].astype(np.float64)
    return gathered["label"], logits[:, 1] - logits[:, 0]


def multilabel_metrics(gathered: dict[str, np.ndarray]) -> dict[str, float]:
    """Multi-label metrics plus `loss`, the mean over outputs of the binary cross-entropy."""
    probs, labels = gathered["probs"].astype(np.float64), gathered["label"]
    result = metrics.multilabel_metrics(labels, probs)
    tiny = np.finfo(np.float64).tiny
    likelihood = np.where(labels == 1, probs, 1 - probs)
    result["loss"] = float(-np.mean(np.log(np.maximum(likelihood, tiny))))
    return result


def write_outputs_of(workdir, split, gathered, ids, class_names, dataset_name) -> None:
    """predictions/<split>.csv, plots/roc.png (two classes) and plots/confusion_matrix.png
    (single-label classes)."""
    probs, labels = gathered["probs"], gathered["label"]
    title = f"{dataset_name}, {split}"
    multilabel = labels.ndim == 2
    if len(class_names) == 2 and not multilabel:
        fpr, tpr, _ = metrics.roc_curve(labels, probs[:, 1])
        auroc = metrics.roc_auc(labels, probs[:, 1])
        plots.roc_curve(os.path.join(workdir, "plots", "roc.png"), fpr, tpr, auroc, title)
    if not multilabel:
        counts = metrics.confusion_matrix(labels, probs.argmax(1), len(class_names))
        path = os.path.join(workdir, "plots", "confusion_matrix.png")
        plots.confusion_matrix(path, counts, class_names, title)
    path = os.path.join(workdir, "predictions", f"{split}.csv")
    writers.write_table(path, *prediction_table(gathered, ids))


def prediction_table(gathered, ids) -> tuple[list[str], list[list]]:
    """(header, rows) of per-example predictions: id, the label(s), prediction (argmax;
    single-label only), then prob_<class> columns."""
    probs, labels = gathered["probs"], gathered["label"]
    multilabel = labels.ndim == 2
    classes = range(probs.shape[1])
    label_columns = [f"label_{c}" for c in classes] if multilabel else ["label", "prediction"]
    rows = []
    for index, label, row in zip(gathered["index"], labels, probs):
        label_values = list(label) if multilabel else [label, row.argmax()]
        rows.append([ids[index], *map(int, label_values), *(f"{p:.6g}" for p in row)])
    return ["id", *label_columns, *(f"prob_{c}" for c in classes)], rows


def _is_normal(labels: np.ndarray) -> np.ndarray:
    """Label 0, or for multi-label rows no finding at all."""
    return labels == 0 if labels.ndim == 1 else ~labels.any(axis=1)
