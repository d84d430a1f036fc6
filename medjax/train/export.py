"""`--mode=export`: the model of a finished run (its best checkpoint; an ensemble's members,
averaged), with its preprocessing, as a model that runs without medjax, in <workdir>/export/:

  model.jax_export  jax.export's serialised function (jax.export.deserialize, then .call)
  saved_model/      the same function as a TensorFlow SavedModel (signature serving_default)
  metadata.json     inputs, outputs, classes, the operating threshold and calibration chosen
                    on validation, the config, the data's fingerprint, medjax's version, and
                    for an ensemble its members (`ensemble`; `step` is then null)

The function maps the raw inputs (medjax.tasks.raw_inputs: HU or uint8 images, gridded ICU
stays), each with a leading batch axis of any size, to every per-example output evaluation
computes (the class probabilities `probs`; the VAE's `nelbo`, `recon_error`, ...), plus, for
binary tasks, `score`: what the threshold and calibration apply to (the log-odds of class 1,
or the VAE's negative ELBO). It is evaluation's: the evaluated (EMA) parameters, batch norm's
statistics, test-time views, and the VAE's latent draws from the run's evaluation key; for an
ensemble, each member's, and the mean of their logits as --mode=ensemble takes it.
"""

import importlib.metadata
import json
import os
import shutil
import tempfile
import warnings

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow as tf
from absl import logging
from jax.experimental import jax2tf

from medjax import parallel, workdir_lock
from medjax.errors import ConfigError
from medjax.tasks import Task, build_task
from medjax.tasks.raw_inputs import RawInputs, raw_inputs
from medjax.train import run_config, steps
from medjax.train.evaluation import fit_on_val
from medjax.train.state import model_variables
from medjax.train.trained import load_model, trained_config

FOLDER = "export"
MODEL_FILE, SAVED_MODEL, METADATA = "model.jax_export", "saved_model", "metadata.json"
PLATFORMS = ("cpu", "cuda")  # where the serialised function runs


def export(config: ml_collections.ConfigDict, workdir: str) -> str:
    """Writes <workdir>/export/ (replacing one there) from the model of the finished run in
    `workdir` (trained.load_model: its best checkpoint, or an ensemble's members, averaged);
    returns its path. `config` must match the run's model and input rules, as for
    --mode=predict; the threshold and calibration are fitted on the val split of the data it
    names. Nothing is written when it raises."""
    workdir_lock.refuse_if_held(workdir, "export")
    trained = trained_config(workdir)
    changes = run_config.input_rule_changes(trained, config)
    if changes:
        raise ConfigError(
            f"the model in {workdir} was trained with other model or input settings: "
            f"{'; '.join(changes)}. Export with the training run's config"
        )
    task = build_task(config, fit_data=trained.data)
    model = load_model(config, task, workdir)
    for member in model.members:  # an ensemble's are finished (load_members)
        if not member.latest_progress.get("finished"):
            raise ConfigError(
                f"the run in {workdir} is not finished (its latest checkpoint is of step "
                f"{member.last_step} of {config.trainer.num_train_steps}); finish it with "
                "--mode=train, then export"
            )
    raw = raw_inputs(config, trained.data)
    variables = jax.device_get(
        [model_variables(m.state.eval_params, m.state.batch_stats) for m in model.members]
    )
    keys = [np.asarray(jax.random.key_data(steps.eval_key(m.state))) for m in model.members]
    function = model_function(task, raw, keys)
    specs = {name: (shape, np.dtype(dtype)) for name, (shape, dtype) in raw.specs.items()}
    metadata = _metadata(config, task, raw, model, function, variables, specs)
    final = os.path.join(workdir, FOLDER)
    if jax.process_index() != 0:
        return final
    building = tempfile.mkdtemp(prefix=f".{FOLDER}-", dir=workdir)
    try:
        batch = jax.export.symbolic_shape("b")
        args = {n: jax.ShapeDtypeStruct((*batch, *s), d) for n, (s, d) in specs.items()}
        exported = jax.export.export(
            jax.jit(lambda inputs: function(variables, inputs)), platforms=PLATFORMS
        )(args)
        with open(os.path.join(building, MODEL_FILE), "wb") as f:
            f.write(exported.serialize())
        _save_tf(function, variables, specs, os.path.join(building, SAVED_MODEL))
        with open(os.path.join(building, METADATA), "w") as f:
            json.dump(metadata, f, indent=2)
            f.write("\n")
        _replace(building, final)
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise
    logging.info("Exported %s of %s to %s", _described(model), workdir, final)
    return final


def _described(model) -> str:
    if model.ensemble:
        return f"the ensemble of {len(model.members)} members"
    return f"the model of step {int(model.members[0].state.step)}"


def model_function(task: Task, raw: RawInputs, keys: list[np.ndarray]):
    """(the members' model variables, raw inputs {name: [b, ...]}) -> {output name: [b, ...]}:
    evaluation's outputs (steps.eval_outputs) of the raw inputs under each member's variables
    and evaluation key (`keys`, key data), one member's or the ensemble's mean logits
    (Task.ensemble_outputs), with `score` for binary tasks."""

    def function(variables, inputs):
        batch = raw.to_batch(inputs)
        size = next(iter(inputs.values())).shape[0]
        batch |= {"label": jnp.zeros(size, jnp.int32), "index": jnp.zeros(size, jnp.int32)}
        each = [
            steps.eval_outputs(task, member, batch, jax.random.wrap_key_data(jnp.asarray(key)))
            for member, key in zip(variables, keys, strict=True)
        ]
        outputs = task.ensemble_outputs(each) if len(each) > 1 else each[0]
        outputs = {k: v for k, v in outputs.items() if k not in ("label", "index")}
        if task.binary_scores is not None:
            with warnings.catch_warnings():  # the scores' float64 is float32 here
                warnings.filterwarnings("ignore", "Explicitly requested dtype")
                outputs["score"] = task.binary_scores(outputs | {"label": None})[1]
        return outputs

    return function


def _metadata(config, task, raw, model, function, variables, specs) -> dict:
    """metadata.json's content; the threshold and calibration are fitted on the model's val
    outputs (an ensemble's mean logits), as in the final evaluation (evaluation.fit_on_val)."""
    abstract = {n: jax.ShapeDtypeStruct((1, *s), d) for n, (s, d) in specs.items()}
    outputs = jax.eval_shape(function, variables, abstract)
    operating_point = calibration = None
    if task.binary_scores is not None:
        val = task.binary_scores(model.outputs(task, "val", parallel.data_mesh()))
        if np.unique(val[0]).size < 2:
            logging.warning("No operating point or calibration: the val split has one class.")
        else:
            evaluation = config.evaluation
            threshold, calibrator = fit_on_val(evaluation, val, log_odds=task.scores_are_log_odds)
            operating_point = {
                "method": evaluation.operating_point,
                "target_sensitivity": evaluation.target_sensitivity,
                "threshold": threshold,
                "rule": f"{raw.class_names[1]} (class 1) iff score >= threshold",
            }
            calibration = {
                "method": calibrator.method,
                "scale": calibrator.scale,
                "offset": calibrator.offset,
                "center": calibrator.center,
                "rule": "probability of class 1 = sigmoid(scale * (score - center) + offset)",
            }
    try:
        version = importlib.metadata.version("medjax")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown (not installed)"
    members = None
    if model.ensemble:  # each member's workdir, relative to the ensemble's, as ensemble.json
        here = os.path.abspath(model.workdir)
        members = [
            {"workdir": os.path.relpath(os.path.abspath(m.workdir), here),
             "seed": m.config.seed, "step": int(m.state.step)}
            for m in model.members
        ]  # fmt: skip
    first = model.members[0]
    return {
        "task": config.task,
        "description": task.description,
        "class_names": list(raw.class_names),
        "multilabel": raw.multilabel,
        "inputs": [{"name": n, "shape": ["b", *s], "dtype": d.name} for n, (s, d) in specs.items()],
        "input_contract": raw.contract,
        "outputs": [
            {"name": n, "shape": ["b", *o.shape[1:]], "dtype": o.dtype.name}
            for n, o in outputs.items()
        ],
        "operating_point": operating_point,
        "calibration": calibration,
        "files": {"jax_export": MODEL_FILE, "saved_model": SAVED_MODEL},
        "platforms": list(PLATFORMS),
        "step": None if model.ensemble else int(first.state.step),
        "ensemble": members,
        "config": json.loads(config.to_json_best_effort()),
        "data_fingerprint": task.data_fingerprint(),
        "trained_on_data_fingerprint": (first.progress.get("fingerprint") or {}).get("data"),
        "medjax_version": version,
    }


def _save_tf(function, variables, specs, path: str) -> None:
    """The function as a SavedModel (jax2tf) whose serving_default takes the inputs by name."""
    converted = jax2tf.convert(
        function,
        polymorphic_shapes=[None, "(b, ...)"],
        with_gradient=False,
        native_serialization_platforms=PLATFORMS,
    )
    module = tf.Module()
    module.model_variables = tf.nest.map_structure(tf.Variable, variables)
    names = list(specs)
    signature = [tf.TensorSpec((None, *s), d, name=n) for n, (s, d) in specs.items()]

    @tf.function(input_signature=signature, autograph=False)
    def serve(*inputs):
        return converted(module.model_variables, dict(zip(names, inputs)))

    module.serve = serve
    tf.saved_model.save(module, path, signatures={"serving_default": serve})


def _replace(building: str, final: str) -> None:
    """Moves the folder `building` to `final`, replacing a folder there."""
    if os.path.exists(final):
        old = tempfile.mkdtemp(prefix=f".{FOLDER}-old-", dir=os.path.dirname(final))
        os.replace(final, os.path.join(old, FOLDER))
        os.replace(building, final)
        shutil.rmtree(old)
    else:
        os.replace(building, final)
