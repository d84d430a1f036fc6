"""Tasks by name: each builds a `Task` (model, loss, metrics, data) from the config."""

import ml_collections

from medjax.errors import ConfigError
from medjax.tasks import classification, ehr, vae
from medjax.tasks.task import Task

TASKS = {"classification": classification.build, "ehr": ehr.build, "vae": vae.build}


def build_task(config: ml_collections.ConfigDict) -> Task:
    """The task named by `config.task`; raises ConfigError listing valid names."""
    if config.task not in TASKS:
        raise ConfigError(f"unknown task {config.task!r}; valid names: {', '.join(TASKS)}")
    return TASKS[config.task](config)
