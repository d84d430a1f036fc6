"""Risk prediction from ICU time series (in-hospital death) with GRU, LSTM, GRU-D or mTAN."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from medjax import explain, losses, models
from medjax.data import icu_series, series_pipelines
from medjax.data.icu_series import INPUTS
from medjax.errors import ConfigError
from medjax.stats import metrics, subgroups
from medjax.tasks import scoring
from medjax.tasks.task import (
    Task,
    compute_dtype,
    concrete_as_numpy,
    fingerprint,
)


def build(config: ml_collections.ConfigDict, fit_data: ml_collections.ConfigDict) -> Task:
    dataset = icu_series.load(config.data, fit_data)
    example = {k: v[:1] for k, v in dataset.splits["train"].items() if k in INPUTS}
    model = _model(config, example)
    return Task(
        model=model,
        model_inputs=model_inputs,
        example_batch={**example, "label": np.zeros(1, np.int32)},
        loss_fn=functools.partial(
            loss,
            positive_weight=config.loss.positive_weight,
            focal_gamma=config.loss.focal_gamma,
            per_step_weight=config.loss.per_step_weight,
        ),
        eval_outputs_fn=eval_outputs,
        compute_metrics=compute_metrics,
        metric_intervals=scoring.binary_intervals,
        train_batches=functools.partial(series_pipelines.train_batches, config, dataset),
        eval_batches=functools.partial(series_pipelines.eval_batches, config, dataset),
        write_outputs=functools.partial(write_outputs, dataset=dataset),
        prediction_table=lambda split, gathered: scoring.prediction_table(
            gathered, dataset.splits[split]["ids"]
        ),
        description=f"{dataset.description}; model {models.describe(config.model)}",
        selection_metrics=("auroc", "auprc", "min_se_ppv_oracle", "loss", "ece", "brier"),
        split_sizes=lambda: {split: len(a["labels"]) for split, a in dataset.splits.items()},
        data_fingerprint=lambda: fingerprint(
            {
                f"{split}/{k}": v
                for split, arrays in dataset.splits.items()
                for k, v in arrays.items()
            }
        ),
        binary_scores=binary_scores,
        final_metrics=scoring.min_se_ppv,  # the challenge's score, at val's threshold
        explain=functools.partial(explain_examples, model, dataset),
        subgroups=lambda split: subgroups.icu_groups(
            *(dataset.splits[split][k] for k in ("age", "gender", "icu_type"))
        ),
        ensemble_outputs=ensemble_outputs,
    )


def _model(config: ml_collections.ConfigDict, example: dict):
    model = models.from_config(config.model, num_classes=1, dtype=compute_dtype(config))
    if config.loss.per_step_weight:
        outputs = jax.eval_shape(
            lambda x: model.init_with_output(jax.random.key(0), x, train=False)[0], example
        )
        if "step_logits" not in outputs:
            raise ConfigError(
                f"loss.per_step_weight needs per-step outputs ('step_logits'); model "
                f"{config.model.name} gives {', '.join(outputs)}: set loss.per_step_weight=0"
            )
    return model


def model_inputs(batch):
    return {k: batch[k] for k in INPUTS}


def loss(outputs, batch, step, *, positive_weight, focal_gamma, per_step_weight):
    """Weighted (focal) binary cross-entropy of the stay's logit, plus `per_step_weight` times
    that of every valid step's logit (padded steps count zero)."""
    del step
    labels = batch["label"].astype(jnp.float32)
    weight = (positive_weight,)
    total = losses.sigmoid_cross_entropy(
        outputs["logits"][:, 0], labels, class_weights=weight, focal_gamma=focal_gamma
    )
    if per_step_weight:
        step_logits = outputs["step_logits"][..., 0]  # [B, T]
        steps = jnp.arange(step_logits.shape[1])[None]
        valid = (steps < batch["lengths"][:, None]).reshape(-1)
        per_step = losses.sigmoid_cross_entropy(
            step_logits.reshape(-1),
            jnp.broadcast_to(labels[:, None], step_logits.shape).reshape(-1),
            mask=valid,
            class_weights=weight,
        )
        total += per_step_weight * per_step
    return total


def eval_outputs(outputs, batch):
    """Per-stay logit, two-class probabilities, label and row index."""
    logit = outputs["logits"][:, 0]
    p = jax.nn.sigmoid(logit)
    probs = jnp.stack([1 - p, p], 1)
    return {"logit": logit, "probs": probs, "label": batch["label"], "index": batch["index"]}


def ensemble_outputs(members):
    """The mean of the members' logits, with the probabilities recomputed from it."""
    logit = jnp.mean(jnp.stack([gathered["logit"] for gathered in members]), axis=0)
    return concrete_as_numpy(eval_outputs({"logits": logit[:, None]}, members[0]))


def compute_metrics(gathered):
    """The classification metrics, and the challenge's min(sensitivity, PPV) at the split's own
    best threshold (an oracle; the final evaluation adds `min_se_ppv` at val's threshold)."""
    result = scoring.class_metrics(gathered)
    scores = gathered["probs"][:, 1]
    result["min_se_ppv_oracle"] = metrics.min_sensitivity_ppv_oracle(gathered["label"], scores)
    return result


def binary_scores(gathered):
    return gathered["label"], gathered["logit"].astype(np.float64)


def write_outputs(workdir, split, gathered, variables, *, dataset):
    del variables
    ids = dataset.splits[split]["ids"]
    scoring.write_class_outputs(workdir, split, gathered, ids, dataset.class_names, dataset.name)
    return {}


def explain_examples(model, dataset, plots_dir, split, variables, batch, settings, key):
    """Integrated gradients over (time, variable) of the stays of `batch`."""
    del key  # integrated gradients are deterministic
    return explain.write_series_explanations(
        plots_dir,
        model,
        variables,
        model_inputs(batch),
        dataset.splits[split]["ids"][batch["index"]],
        dataset.variables,
        ig_steps=settings.ig_steps,
        suffix=split,
    )
