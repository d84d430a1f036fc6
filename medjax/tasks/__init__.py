"""Tasks by name: each builds a `Task` (model, loss, metrics, data) from the config."""

import ml_collections

from medjax.errors import ConfigError
from medjax.tasks import classification, contrastive, ehr, vae
from medjax.tasks.task import Task

TASKS = {
    "classification": classification.build,
    "ehr": ehr.build,
    "vae": vae.build,
    "contrastive": contrastive.build,
}


def build_task(
    config: ml_collections.ConfigDict, fit_data: ml_collections.ConfigDict | None = None
) -> Task:
    """The task named by `config.task`; raises ConfigError listing valid names.

    Statistics fitted on data (the ICU series' normalisation) come from the training split of
    `fit_data`, by default `config.data`: --mode=predict scores new data with the statistics of
    the data the model was trained on.
    """
    if config.task not in TASKS:
        raise ConfigError(f"unknown task {config.task!r}; valid names: {', '.join(TASKS)}")
    return TASKS[config.task](config, config.data if fit_data is None else fit_data)
