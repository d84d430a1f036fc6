"""Evaluation of a trained state: a split's metrics, and the final evaluation of the best
checkpoint (or of an ensemble's outputs), with the operating point and calibration of binary
tasks.

The operating point (a threshold) and the recalibration map are fitted on the validation split
and then applied, unchanged, to the evaluated split (test, unless --mode=evaluate names another).
"""

import json
import os

import jax
import ml_collections
import numpy as np
from absl import logging
from scipy import special

from medjax import parallel
from medjax.outputs import plots, report, writers
from medjax.stats import bootstrap, calibration, metrics, operating_point, subgroups
from medjax.tasks import Task
from medjax.train.state import model_variables
from medjax.train.steps import eval_step


def evaluate_split(state, task: Task, split: str, mesh) -> tuple[dict, dict]:
    """Metrics of `split` and its per-example outputs, each example counted exactly once."""
    gatherer = metrics.OutputGatherer()
    for batch in task.eval_batches(split):
        outputs = parallel.gather(eval_step(state, parallel.shard_batch(batch, mesh), task=task))
        gatherer.add(outputs, valid=outputs.pop("valid"))
    gathered = gatherer.result()
    return task.compute_metrics(gathered), gathered


def binary_evaluation(evaluation: ml_collections.ConfigDict, val, evaluated, *, log_odds: bool,
                      plot_path: str, final_metrics=None):  # fmt: skip
    """The operating point and calibration of binary scores, fitted on `val` and applied to
    `evaluated` (each a (labels, scores) pair). Returns (values, 95% intervals), named as in
    metrics.jsonl: `operating_threshold` and `operating_<metric>`; the task's
    `final_metrics(val, evaluated)` (Task.final_metrics); `calibrated_ece` and
    `calibrated_brier` after temperature scaling (log-odds) or Platt scaling (other scores),
    with `temperature` or `platt_scale` / `platt_offset`. Writes the reliability diagram."""
    labels, scores = evaluated
    threshold, calibrator = fit_on_val(evaluation, val, log_odds=log_odds)
    values = {"operating_threshold": threshold}
    values |= {
        f"operating_{k}": v
        for k, v in operating_point.at_threshold(labels, scores, threshold).items()
    }
    found = bootstrap.intervals(labels, scores, threshold=threshold)
    intervals = {f"operating_{k}": found[k] for k in bootstrap.THRESHOLD_METRICS if k in found}
    if final_metrics is not None:
        values |= final_metrics(val, evaluated)
    if log_odds:
        values["temperature"] = calibrator.temperature
    else:
        values |= {"platt_scale": calibrator.scale, "platt_offset": calibrator.offset}
    diagram = {}
    if log_odds:  # the model's own ece and brier, with intervals, are in the split's metrics
        model_probs = special.expit(scores)
        diagram["model"] = (calibration.reliability(labels, model_probs), _ece(labels, model_probs))
    probs = calibrator(scores)
    values["calibrated_ece"] = _ece(labels, probs)
    values["calibrated_brier"] = metrics.brier_score(labels, np.stack([1 - probs, probs], 1))
    found = bootstrap.intervals(labels, probs, calibration_bins=metrics.ECE_BINS)
    intervals |= {f"calibrated_{k}": found[k] for k in bootstrap.CALIBRATION_METRICS if k in found}
    name = f"{calibrator.method} scaling, fitted on val"
    diagram[name] = (calibration.reliability(labels, probs), values["calibrated_ece"])
    plots.reliability_diagram(plot_path, diagram)
    return values, intervals


def fit_on_val(evaluation: ml_collections.ConfigDict, val, *, log_odds: bool):
    """(the operating threshold, the calibration.Calibrator) fitted on `val`, (labels, scores):
    the threshold `evaluation.operating_point` picks, and temperature scaling (log-odds) or
    Platt scaling (other scores)."""
    threshold = operating_point.choose_threshold(
        *val, evaluation.operating_point, evaluation.target_sensitivity
    )
    return threshold, (calibration.fit_temperature if log_odds else calibration.fit_platt)(*val)


def _ece(labels, probs) -> float:
    return metrics.expected_calibration_error(labels, np.stack([1 - probs, probs], 1))


def final_evaluation(config, task: Task, best_state, last_step: int, workdir: str, writer, mesh,
                     split: str = "test") -> dict[str, float]:  # fmt: skip
    """Evaluates the best state once on `split` (report_evaluation), with what needs the model
    or its training: the explanations and the training curves. Returns the split's metrics."""
    evaluated = {s: evaluate_split(best_state, task, s, mesh) for s in ("val", split)}
    best_step = int(best_state.step)
    if jax.process_index() == 0:
        explain_examples(config, task, best_state, workdir, split)
        history = _read_metrics(os.path.join(workdir, "metrics.jsonl"))
        if any(line["split"] == "train" for line in history):
            path = os.path.join(workdir, "plots", "curves.png")
            plots.training_curves(path, history, config.trainer.selection_metric, best_step)
    num_params = sum(x.size for x in jax.tree.leaves(best_state.params))
    checkpoint = report.Checkpoint(workdir, config, best_step, last_step, num_params)
    variables = model_variables(best_state.eval_params, best_state.batch_stats)
    return report_evaluation(config, task, evaluated, split, workdir, writer, [checkpoint],
                             variables, step=best_step)  # fmt: skip


def report_evaluation(config, task: Task, evaluated: dict, split: str, workdir: str, writer,
                      checkpoints: list, variables, *, step: int) -> dict[str, float]:  # fmt: skip
    """The final evaluation of a model's outputs, or an ensemble's, on `split`: its metrics and
    intervals, and for binary tasks the operating point and calibration fitted on val; writes
    predictions, plots and the report (and, for the test split, the `test` line of
    metrics.jsonl, at `step`). `evaluated` maps val and `split` to (metrics, gathered outputs);
    `checkpoints` (report.Checkpoint) made them: a run's best, or an ensemble's members';
    `variables` are the model's, for the task's outputs (None for an ensemble). Returns the
    split's metrics."""
    val_metrics, val_gathered = evaluated["val"]
    split_metrics, gathered = evaluated[split]
    intervals = task.metric_intervals(gathered)
    binary, binary_intervals = {}, {}
    val_scores = task.binary_scores and task.binary_scores(val_gathered)
    if val_scores and np.unique(val_scores[0]).size < 2:
        logging.warning("No operating point or calibration: the val split has one class only.")
    elif val_scores and jax.process_index() == 0:
        binary, binary_intervals = binary_evaluation(
            config.evaluation,
            val_scores,
            task.binary_scores(gathered),
            log_odds=task.scores_are_log_odds,
            plot_path=os.path.join(workdir, "plots", "calibration.png"),
            final_metrics=task.final_metrics,
        )
    subgroup_rows = []
    if binary and task.subgroups is not None:
        groups = {k: v[gathered["index"]] for k, v in task.subgroups(split).items()}
        subgroup_rows = subgroups.subgroup_rows(
            *task.binary_scores(gathered), groups, binary["operating_threshold"]
        )
        writers.write_table(
            os.path.join(workdir, "subgroups.csv"),
            subgroups.COLUMNS,
            [[row.get(column, "") for column in subgroups.COLUMNS] for row in subgroup_rows],
        )
    if split == "test":
        scalars = split_metrics | binary
        for name, (low, high) in (intervals | binary_intervals).items():
            scalars |= {f"{name}_low": low, f"{name}_high": high}
        writer.write_scalars(step, {f"test/{k}": v for k, v in scalars.items()})
        writer.flush()
    if jax.process_index() == 0:
        images = task.write_outputs(workdir, split, gathered, variables)
        if images:
            writer.write_images(step, images)
        report.write(
            workdir,
            config=config,
            description=task.description,
            split_sizes=task.split_sizes(),
            checkpoints=checkpoints,
            split=split,
            val_metrics=val_metrics,
            split_metrics=split_metrics,
            intervals=intervals,
            binary=binary,
            binary_intervals=binary_intervals,
            subgroup_rows=subgroup_rows,
        )
    source = f"at step {step}" if len(checkpoints) == 1 else f"of an ensemble of {len(checkpoints)}"
    logging.info("%s metrics %s: %s", split.capitalize(), source, json.dumps(split_metrics))
    return split_metrics


def explain_examples(config, task: Task, state, workdir: str, split: str) -> list[str]:
    """The task's explanations of the first `config.explain.num_examples` examples of `split`,
    written to `workdir/plots`; their paths ([] when the task has none)."""
    settings = config.explain
    if task.explain is None or settings.num_examples <= 0:
        return []
    batch = next(task.eval_batches(split))
    rows = np.flatnonzero(batch["valid"])[: settings.num_examples]
    batch = {k: v[rows] for k, v in batch.items()}
    variables = model_variables(state.eval_params, state.batch_stats)
    key = jax.random.fold_in(jax.random.key(config.seed), 2**31 - 1)  # no training stream
    paths = task.explain(os.path.join(workdir, "plots"), split, variables, batch, settings, key)
    logging.info("Wrote explanations of %d %s examples: %s", len(rows), split, paths)
    return paths


def _read_metrics(path: str) -> list[dict]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
