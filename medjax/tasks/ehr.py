"""Risk prediction from ICU time series (in-hospital death) with GRU, LSTM or GRU-D."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf

from medjax import explain, losses, metrics, privacy, subgroups
from medjax.data import ehr, physionet2012, pipeline
from medjax.errors import ConfigError
from medjax.models import rnn
from medjax.tasks import classification
from medjax.tasks.task import Task, compute_dtype, fingerprint

INPUTS = ("values", "mask", "delta", "lengths", "static")
CLASS_NAMES = ("survived", "in-hospital death")


def build(config: ml_collections.ConfigDict, fit_data: ml_collections.ConfigDict) -> Task:
    dataset = ehr.load(config.data, fit_data)
    model_config = config.model
    try:
        model = rnn.create_model(
            model_config.name,
            hidden_size=model_config.hidden_size,
            num_layers=model_config.num_layers,
            bidirectional=model_config.bidirectional,
            pooling=model_config.pooling,
            dropout_rate=model_config.dropout_rate,
            dtype=compute_dtype(config),
        )
    except ValueError as e:
        raise ConfigError(f"model: {e}") from None
    process_index, process_count = jax.process_index(), jax.process_count()
    loss_config = config.loss

    def tensors(split):
        arrays = dataset.splits[split]
        return {"label": tf.constant(arrays["labels"])} | {
            k: tf.constant(arrays[k]) for k in INPUTS
        }

    def train_batches(start_step):
        data = tensors("train")

        def load(index, seed):
            del seed  # no augmentation
            return {k: tf.gather(v, index) for k, v in data.items()}

        return pipeline.train_batches(
            dataset.splits["train"]["labels"],
            load,
            global_batch_size=config.trainer.batch_size,
            seed=config.seed,
            start_step=start_step,
            balanced=config.data.balanced_sampling,
            process_index=process_index,
            process_count=process_count,
            poisson_max_size=privacy.poisson_max_size(
                config, len(dataset.splits["train"]["labels"])
            ),
        )

    def eval_batches(split):
        data = tensors(split)
        return pipeline.eval_batches(
            len(dataset.splits[split]["labels"]),
            lambda i: {k: tf.gather(v, i) for k, v in data.items()},
            global_batch_size=config.trainer.eval_batch_size,
            process_index=process_index,
            process_count=process_count,
        )

    def loss_fn(outputs, batch, step):
        del step
        labels = batch["label"].astype(jnp.float32)
        weight = (loss_config.positive_weight,)
        loss = losses.sigmoid_cross_entropy(
            outputs["logits"][:, 0],
            labels,
            class_weights=weight,
            focal_gamma=loss_config.focal_gamma,
        )
        if loss_config.per_step_weight:
            step_logits = outputs["step_logits"][..., 0]  # [B, T]
            steps = jnp.arange(step_logits.shape[1])[None]
            valid = (steps < batch["lengths"][:, None]).reshape(-1)
            per_step = losses.sigmoid_cross_entropy(
                step_logits.reshape(-1),
                jnp.broadcast_to(labels[:, None], step_logits.shape).reshape(-1),
                mask=valid,
                class_weights=weight,
            )
            loss += loss_config.per_step_weight * per_step
        return loss

    def eval_outputs_fn(outputs, batch):
        logit = outputs["logits"][:, 0]
        p = jax.nn.sigmoid(logit)
        probs = jnp.stack([1 - p, p], 1)
        return {"logit": logit, "probs": probs, "label": batch["label"], "index": batch["index"]}

    def compute_metrics(gathered):
        result = classification.compute_metrics(gathered)
        scores = gathered["probs"][:, 1]
        result["min_se_ppv"] = metrics.min_sensitivity_ppv(gathered["label"], scores)
        return result

    def write_outputs(workdir, split, gathered, variables):
        del variables
        ids = dataset.splits[split]["ids"]
        classification.write_outputs_of(workdir, split, gathered, ids, CLASS_NAMES, dataset.name)
        return {}

    def explain_fn(plots_dir, split, variables, batch, settings, key):
        del key  # integrated gradients are deterministic
        return explain.write_series_explanations(
            plots_dir,
            model,
            variables,
            {k: batch[k] for k in INPUTS},
            dataset.splits[split]["ids"][batch["index"]],
            physionet2012.VARIABLES,
            ig_steps=settings.ig_steps,
            suffix=split,
        )

    example = {k: v[:1] for k, v in dataset.splits["train"].items() if k in INPUTS}
    return Task(
        model=model,
        model_inputs=lambda batch: {k: batch[k] for k in INPUTS},
        example_batch={**example, "label": np.zeros(1, np.int32)},
        loss_fn=loss_fn,
        eval_outputs_fn=eval_outputs_fn,
        compute_metrics=compute_metrics,
        metric_intervals=classification.binary_intervals,
        train_batches=train_batches,
        eval_batches=eval_batches,
        write_outputs=write_outputs,
        prediction_table=lambda split, gathered: classification.prediction_table(
            gathered, dataset.splits[split]["ids"]
        ),
        description=f"{dataset.description}; model {model_config.name} "
        f"(hidden {model_config.hidden_size}, {model_config.num_layers} layer(s), "
        f"{model_config.pooling} pooling)",
        selection_metrics=("auroc", "auprc", "min_se_ppv", "loss", "ece", "brier"),
        split_sizes=lambda: {split: len(a["labels"]) for split, a in dataset.splits.items()},
        data_fingerprint=lambda: fingerprint(
            {
                f"{split}/{k}": v
                for split, arrays in dataset.splits.items()
                for k, v in arrays.items()
            }
        ),
        binary_scores=lambda gathered: (gathered["label"], gathered["logit"].astype(np.float64)),
        explain=explain_fn,
        subgroups=lambda split: subgroups.icu_groups(
            *(dataset.splits[split][k] for k in ("age", "gender", "icu_type"))
        ),
    )
