"""Pre-flight checks: each refuses bad input with a ConfigError before anything is written."""

import os

import jax
import ml_collections

from medjax import ensemble_file, optim, parallel, pretrained, privacy
from medjax.data.dataset import SPLITS
from medjax.errors import ConfigError
from medjax.settings import rules
from medjax.stats import operating_point
from medjax.tasks import Task
from medjax.train import run_config


def check_values(config: ml_collections.ConfigDict) -> None:
    """Every key's value against its rule in medjax/settings/rules.py."""
    found = rules.violations(run_config.flat(config))
    if found:
        raise ConfigError("; ".join(found))


def check_run(config: ml_collections.ConfigDict, task: Task) -> None:
    """Every check of a run's config and data (training or evaluating)."""
    check_trainer(config, task)
    evaluation = config.evaluation
    operating_point.check(evaluation.operating_point, evaluation.target_sensitivity)
    check_data(task, config.trainer.batch_size)
    check_privacy(config, task)


def check_trainer(config: ml_collections.ConfigDict, task: Task) -> None:
    """The trainer's keys that depend on the devices and the task (medjax/settings/rules.py
    holds each key's own range): batch sizes that divide, a metric the task computes."""
    trainer = config.trainer
    parallel.check_batch_size(
        "trainer.batch_size", trainer.batch_size, multiple_of=trainer.accumulation_steps
    )
    parallel.check_batch_size("trainer.eval_batch_size", trainer.eval_batch_size)
    if trainer.selection_metric not in task.selection_metrics:
        raise ConfigError(
            f"trainer.selection_metric={trainer.selection_metric!r} is not a validation "
            f"metric of this task; valid: {', '.join(task.selection_metrics)}"
        )


def check_privacy(config: ml_collections.ConfigDict, task: Task) -> None:
    """Private training's limits (privacy.check), on the model's abstract variables."""
    if config.privacy.enabled:
        init = jax.eval_shape(
            lambda key: task.model.init(key, task.model_inputs(task.example_batch), train=False),
            jax.random.key(0),
        )
        privacy.check(config, init)


def check_init(config: ml_collections.ConfigDict, task: Task, source) -> None:
    """`init.freeze` names parameters of the model, and the tensors of `source`
    (pretrained.source_of, or None) match some of the model's."""
    variables = jax.eval_shape(
        lambda key: task.model.init(key, task.model_inputs(task.example_batch), train=False),
        jax.random.key(0),
    )
    if config.init.freeze:
        optim.frozen_mask(variables["params"], config.init.freeze)
    if source is not None:
        pretrained.load({k: v for k, v in variables.items() if k != "intermediates"}, *source)


def check_data(task: Task, batch_size: int) -> None:
    """Reads the data (a bad file fails here, before the workdir is touched) and refuses an
    empty split or a training split smaller than one batch."""
    sizes = task.split_sizes()
    for split, size in sizes.items():
        if size == 0:
            raise ConfigError(
                f"the {split} split is empty; add data, or change the split sizes (data.num_"
                f"{split} for synthetic data, data.val_fraction and data.test_fraction for real "
                "data)"
            )
    if sizes["train"] < batch_size:
        raise ConfigError(
            f"the training split has {sizes['train']} examples, fewer than "
            f"trainer.batch_size={batch_size}; lower trainer.batch_size or add data"
        )


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ConfigError(f"split={split!r}; valid: {', '.join(SPLITS)}")


def no_checkpoint(checkpoint_dir: str) -> ConfigError:
    """The error of a mode that needs a trained workdir and found none."""
    return ConfigError(f"no checkpoint in {checkpoint_dir}; train first (--mode=train)")


def require_checkpoint_dir(workdir: str) -> str:
    """The workdir's checkpoint folder; ConfigError (no_checkpoint) where there is none."""
    refuse_ensemble_workdir(workdir)
    checkpoint_dir = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(checkpoint_dir):
        raise no_checkpoint(checkpoint_dir)
    return checkpoint_dir


def refuse_ensemble_workdir(workdir: str) -> None:
    """Refuses the workdir of an ensemble where a run's checkpoints are needed: it has none."""
    if os.path.exists(os.path.join(workdir, ensemble_file.FILE)):
        raise ConfigError(
            f"{workdir} holds the evaluation of an ensemble ({ensemble_file.FILE}), not a "
            "training run; train in another --workdir, or run --mode=ensemble there again"
        )


def prepare_workdir(workdir: str) -> None:
    """Creates the workdir and checks it is writable, before anything is written to it."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise ConfigError(f"--workdir={workdir!r} is a file, not a folder; give a folder")
    try:
        for sub in ("", "plots", "predictions"):
            os.makedirs(os.path.join(workdir, sub), exist_ok=True)
        probe = os.path.join(workdir, f".write_test{jax.process_index()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise ConfigError(
            f"cannot write to --workdir={workdir!r} ({e.strerror or e}); choose a folder you can "
            "write to"
        ) from None


def check_privacy_unchanged(saved: dict | None, plan: privacy.Plan, workdir: str) -> dict:
    """The privacy settings of `plan`, to store with the checkpoint; refuses to resume a private
    run whose `saved` settings differ, even with --allow_config_change: the accountant composes
    identical steps only."""
    settings = {
        "noise_multiplier": plan.noise_multiplier,
        "sampling_rate": plan.sampling_rate,
        "l2_norm_clip": plan.l2_norm_clip,
    }
    if saved is not None and saved != settings:
        raise ConfigError(
            f"the checkpoint in {workdir} was trained privately with {saved}; resuming with "
            f"{settings} would make its privacy accounting wrong. Use a new --workdir"
        )
    return settings
