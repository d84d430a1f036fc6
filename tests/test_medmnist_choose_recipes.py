"""experiments/medmnist/choose_recipes.py: each candidate's command line is the config it names."""

import os
import runpy
import sys

from absl import flags
from ml_collections import config_flags

from configs import medmnist

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
choose = runpy.run_path(os.path.join(REPO, "experiments", "medmnist", "choose_recipes.py"))


def parsed(args, monkeypatch):
    """The config of medjax's command line `args` (ml_collections reads overrides from sys.argv)."""
    holder = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, flag_values=holder, lock_config=True)
    monkeypatch.setattr(sys, "argv", ["prog", *args])
    holder(sys.argv)
    return holder.config


def value(config, key):
    for part in key.split("."):
        config = config[part]
    return config


def test_every_candidate_is_its_keys_over_the_recipe_free_config(monkeypatch):
    monkeypatch.chdir(REPO)
    for name, candidates in choose["CANDIDATES"].items():
        config = medmnist.get_config(name)
        batches = -(-medmnist.medmnist.INFO[name].num_train // config.trainer.batch_size)
        for _, epochs, keys in candidates:
            config = parsed(choose["candidate_flags"](name, epochs, keys), monkeypatch)
            for key, expected in {**choose["PLAIN"], **choose["ACS_OFF"], **keys}.items():
                assert value(config, key) == expected, (name, key)
            assert config.trainer.num_train_steps == epochs * batches
            assert 1 <= config.trainer.eval_every_steps <= config.trainer.num_train_steps
