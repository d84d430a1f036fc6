"""medjax/settings/rules.py and each model's RULES: every numeric and enumerated key of
medjax/settings/defaults.py and of every model has a rule, and each rule refuses what it
should."""

import math

import ml_collections
import pytest

from medjax import models, optim, tasks
from medjax.errors import ConfigError
from medjax.models import cnn, conv_vae
from medjax.settings import defaults, rules
from medjax.train import run_config
from medjax.train.steps import PARALLEL

FLAT = {
    k: v for k, v in run_config.flat(defaults.get_config()).items() if not k.startswith("model.")
}
MODEL_KEYS = {name: models.config_keys(name) for name in models.available()}


def _bad_values(rule: rules.Rule, value):
    """Values the rule of a key whose default is `value` must refuse."""
    if "one of" in rule.says:
        return ["no_such_choice", None]
    if isinstance(value, list):
        return [[-1], ["x"]] + ([[]] if rule.says.startswith("a tuple") and value else [])
    found = [math.nan, math.inf, "1"]
    for sign in ("> ", ">= ", "<= ", "< "):
        if sign in rule.says:
            number = float(rule.says.split(sign)[1].split()[0])
            found.append(number - 1 if sign.startswith(">") else number + 1)
            if sign in ("> ", "< "):
                found.append(number)
    if rule.says.startswith("an integer"):
        found.append(value + 0.5)
    return found


def test_every_numeric_and_enumerated_key_has_a_rule():
    numeric = {k for k, v in FLAT.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    numeric |= {k for k, v in FLAT.items() if isinstance(v, list)}
    assert numeric - rules.CONSTRAINTS.keys() == set()
    assert rules.CONSTRAINTS.keys() - FLAT.keys() == set()  # no rule for a lost key
    assert rules.violations(FLAT) == []  # the defaults are valid


@pytest.mark.parametrize("key", sorted(rules.CONSTRAINTS))
def test_each_rule_refuses_bad_values_and_names_the_range(key):
    rule = rules.CONSTRAINTS[key]
    for bad in _bad_values(rule, FLAT[key]):
        found = rules.violations(FLAT | {key: bad})
        assert found == [f"{key}={bad!r} must be {rule.says}"], bad


def test_the_enumerations_are_the_codes():
    table = rules.CONSTRAINTS

    def choices(key, table=table):
        return set(
            table[key.removeprefix("model.")]
            .says.removeprefix("one of ")
            .replace("'", "")
            .split(", ")
        )

    assert choices("task") == set(tasks.TASKS)
    assert choices("parallel") == set(PARALLEL)
    assert choices("optimizer.schedule") == set(optim.SCHEDULES)
    assert choices("model.norm", cnn.ResNet.RULES) == set(cnn.NORMS)
    assert choices("model.conv3d", cnn.ResNet.RULES) == set(cnn.CONVS_3D)
    assert choices("model.likelihood", conv_vae.ConvVAE.RULES) == set(conv_vae.LIKELIHOODS)


@pytest.mark.parametrize("name", sorted(MODEL_KEYS))
def test_every_numeric_and_enumerated_key_of_every_model_has_a_rule(name):
    keys = MODEL_KEYS[name]
    numeric = {k for k, v in keys.items() if isinstance(v, int | float | tuple)}
    numeric -= {k for k, v in keys.items() if isinstance(v, bool)}
    table = models.model_class(name).RULES
    assert numeric - table.keys() == set()
    assert table.keys() - keys.keys() == set()
    models.settings(name)  # the defaults are valid


@pytest.mark.parametrize("name", sorted(MODEL_KEYS))
def test_each_model_rule_refuses_bad_values_and_names_the_range(name):
    for key, rule in models.model_class(name).RULES.items():
        value = MODEL_KEYS[name][key]
        for bad in _bad_values(rule, list(value) if isinstance(value, tuple) else value):
            config = ml_collections.ConfigDict(models.settings(name).to_dict() | {key: bad})
            with pytest.raises(ConfigError) as refused:
                models.from_config(config, num_classes=2)
            assert str(refused.value) == f"model.{key}={bad!r} must be {rule.says}", bad
