"""What a run's config and data are, for resuming and predicting: the keys that decide results,
their differences, and the fingerprint stored with every checkpoint."""

import json

import ml_collections
from absl import logging
from flax import traverse_util

from medjax import models
from medjax.errors import ConfigError
from medjax.settings import defaults
from medjax.tasks import Task

# Keys that change no result: a run resumed with other values ends the same. The evaluation and
# explain sections change only what is computed from a checkpoint, so they are neutral too.
RESULT_NEUTRAL_SECTIONS = ("evaluation.", "explain.")
RESULT_NEUTRAL_KEYS = (
    "trainer.log_every_steps",
    "trainer.checkpoint_every_steps",
    "trainer.max_checkpoints_to_keep",
    "data.dir",
    "data.cache_dir",
    "data.download",
)
# What --mode=predict needs to match the training run's: the model (model.*), and the rules
# that turn data into its inputs. The data itself (name, folder, splits) may differ.
INPUT_RULE_KEYS = ("task", "dtype", "loss.projection_size", "data.image_shape",
                   "data.window_center", "data.window_width", "data.spacing", "data.ct_geometry",
                   "data.hours", "data.step_hours", "data.imputation")  # fmt: skip


# Keys that were renamed: their old names, as older checkpoints store them, and the new.
RENAMED = {
    "model.vae_widths": "model.widths",
    "model.vae_decoder_blocks": "model.decoder_blocks",
    "model.projection_size": "loss.projection_size",
}


def flat(config: ml_collections.ConfigDict) -> dict:
    """The config's keys flattened ("data.seed"), with values as JSON stores them."""
    return json.loads(json.dumps(traverse_util.flatten_dict(config.to_dict(), sep=".")))


def results_config(config: ml_collections.ConfigDict) -> dict:
    """The config's keys that decide results, flattened, as JSON stores them."""
    return {
        k: v
        for k, v in flat(config).items()
        if k not in RESULT_NEUTRAL_KEYS and not k.startswith(RESULT_NEUTRAL_SECTIONS)
    }


def fingerprint(config: ml_collections.ConfigDict, task: Task) -> dict:
    """What the checkpoint stores to recognise its run: the result-deciding config, and a hash
    of the data."""
    return {"config": results_config(config), "data": task.data_fingerprint()}


def config_changes(old: dict, new: dict, keep=lambda key: True) -> list[str]:
    """`key: old -> new` for each flattened key (that `keep` accepts) whose values differ. A
    key one config lacks (written before the key was added) counts as at its default, which
    keeps the behaviour from before (medjax/settings/defaults.py; a model's keys at its Model's
    defaults)."""
    old, new = _as_of_now(old), _as_of_now(new)
    return [
        f"{k}: {old.get(k)!r} -> {new.get(k)!r}"
        for k in sorted(old.keys() | new.keys())
        if keep(k) and old.get(k) != new.get(k)
    ]


def _as_of_now(values: dict) -> dict:
    """A flattened config (perhaps stored by an older medjax) with today's keys: renamed keys
    under their new names, the keys it lacks at their defaults, and only its model's keys
    (older configs held every model's in one section)."""
    values = {RENAMED.get(k, k): v for k, v in values.items()}
    name = values.get("model.name", defaults.get_config().model.name)
    model_keys = {"model.name": name}
    defaults_of_model = json.loads(json.dumps(models.config_keys(name)))  # tuples as lists
    model_keys |= {f"model.{k}": v for k, v in defaults_of_model.items()}
    others = {k: v for k, v in flat(defaults.get_config()).items() if not k.startswith("model.")}
    filled = others | model_keys | values
    return {k: v for k, v in filled.items() if not k.startswith("model.") or k in model_keys}


def is_model_or_input_key(key: str) -> bool:
    """A key of the model, or of the rules that turn data into its inputs."""
    return key in INPUT_RULE_KEYS or key.startswith("model.")


def input_rule_changes(trained: ml_collections.ConfigDict, config: ml_collections.ConfigDict):
    """The model and input-rule keys whose values differ between two configs."""
    return config_changes(flat(trained), flat(config), keep=is_model_or_input_key)


def check_unchanged(
    saved: dict | None, current: dict, workdir: str, allow: bool, *, model_only: bool = False
) -> None:
    """Refuses (unless `allow`) a config or data that differ from the checkpoint's
    `saved` fingerprint; checkpoints written before fingerprints (None) pass. With
    `model_only` (evaluating a checkpoint, not training it), only the model and input-rule
    keys are compared, and the data."""
    if saved is None:
        return
    keep = is_model_or_input_key if model_only else (lambda key: True)
    changes = config_changes(saved["config"], current["config"], keep)
    if saved["data"] != current["data"]:
        changes.append(f"the data (fingerprint {saved['data']} -> {current['data']})")
    if not changes:
        return
    if not allow:
        doing = "its model or inputs would differ" if model_only else (
            "resuming would change the results")  # fmt: skip
        raise ConfigError(
            f"the checkpoint in {workdir} was trained with another config; {doing}: "
            f"{'; '.join(changes)}. Use a new --workdir, or pass --allow_config_change to go on "
            "anyway"
        )
    logging.warning("Going on with a changed config (--allow_config_change): %s", changes)
