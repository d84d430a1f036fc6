"""What a trained workdir can do without training: `--mode=evaluate`, `explain` and `predict`,
on the model of a workdir (trained.load_model): a run's best checkpoint, or an ensemble's
members."""

import os
import time

import jax
import ml_collections
from absl import logging

from medjax import ensemble_file, parallel, workdir_lock
from medjax.errors import ConfigError
from medjax.outputs import writers
from medjax.tasks import build_task
from medjax.train import checks, run_config
from medjax.train.ensemble import ensemble
from medjax.train.evaluation import explain_examples, final_evaluation
from medjax.train.trained import load_model, restore_best, trained_config


def evaluate(
    config: ml_collections.ConfigDict,
    workdir: str,
    *,
    split: str = "test",
    allow_config_change: bool = False,
) -> dict[str, float]:
    """Evaluates the best checkpoint of a trained `workdir` on `split`, rewriting its report,
    predictions and plots; only the test split is logged to metrics.jsonl. Returns the
    split's metrics. A config or data that differ from the checkpoint's are refused as in
    training, unless `allow_config_change`. An ensemble's workdir is evaluated again as
    --mode=ensemble did (its members checked against `config` as there)."""
    checks.check_split(split)
    workdir_lock.refuse_if_held(workdir, "evaluate")
    members = ensemble_file.members(workdir)
    if members is not None:
        return ensemble(config, workdir, members, split=split)
    task = build_task(config)
    checks.require_checkpoint_dir(workdir)
    checks.check_run(config, task)
    current = run_config.fingerprint(config, task)
    checks.prepare_workdir(workdir)
    (model,) = load_model(config, task, workdir).members
    saved = model.latest_progress.get("fingerprint")
    run_config.check_unchanged(saved, current, workdir, allow_config_change, model_only=True)
    last_step = model.last_step
    logging.info("Evaluating the best checkpoint of %s (at step %d).", workdir, last_step)
    elapsed = 0.0
    if jax.process_index() == 0 and split == "test":  # other splits leave the test line there
        elapsed = writers.keep_metrics_up_to(os.path.join(workdir, "metrics.jsonl"), last_step)
    writer = writers.create_writer(workdir, time.time() - elapsed)
    mesh = parallel.data_mesh()
    return final_evaluation(config, task, model.state, last_step, workdir, writer, mesh, split)


def explain(config: ml_collections.ConfigDict, workdir: str, *, split: str = "test") -> list[str]:
    """Writes explanations of the best checkpoint's predictions on the first
    `config.explain.num_examples` examples of `split` to `workdir/plots`; returns the paths.
    An ensemble's workdir is refused, naming a member to explain instead."""
    checks.check_split(split)
    workdir_lock.refuse_if_held(workdir, "explain")
    ensemble_file.refuse(workdir, "explanations are a single model's", "--workdir")
    task = build_task(config)
    if task.explain is None:
        raise ConfigError(f"the {config.task} task has no explanations; they are for the CNNs "
                          "(task classification) and the RNNs (task ehr)")  # fmt: skip
    state, progress = restore_best(config, task, workdir)
    current = run_config.fingerprint(config, task)
    run_config.check_unchanged(
        progress.get("fingerprint"), current, workdir, allow=False, model_only=True
    )
    return explain_examples(config, task, state, workdir, split)


def predict(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Scores every example of the data `config.data` names (all its splits) with the model of
    `workdir` (its best checkpoint, or its ensemble's mean logits) into
    predictions/<name>.csv, `name` the data's name and folder; returns its path. `config`
    must match the training run's model and input rules (config.json); statistics fitted on
    data come from the training run's data (`build_task`'s `fit_data`)."""
    workdir_lock.refuse_if_held(workdir, "predict with")
    trained = trained_config(workdir)
    changes = run_config.input_rule_changes(trained, config)
    if changes:
        raise ConfigError(
            f"the model in {workdir} was trained with other model or input settings: "
            f"{'; '.join(changes)}. Predict with the training run's config, changing only the "
            "data (--config.data.dir, --config.data.name)"
        )
    task = build_task(config, fit_data=trained.data)
    model = load_model(config, task, workdir)
    mesh = parallel.data_mesh()
    header, rows = None, []
    for split, size in task.split_sizes().items():
        if size:
            gathered = model.outputs(task, split, mesh)
            header, split_rows = task.prediction_table(split, gathered)
            rows += [[split, *row] for row in split_rows]
    if not rows:
        raise ConfigError(f"no examples to predict in {config.data.name} {config.data.dir}")
    folder = os.path.basename(os.path.normpath(config.data.dir)) if config.data.dir else ""
    name = "".join(c if c.isalnum() or c in "-." else "_" for c in "_".join(
        filter(None, (config.data.name, folder))))  # fmt: skip
    path = os.path.join(workdir, "predictions", f"{name}.csv")
    if jax.process_index() == 0:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        writers.write_table(path, ["split", *header], rows)
        logging.info("Wrote %d predictions of %s to %s", len(rows), task.description, path)
    return path
