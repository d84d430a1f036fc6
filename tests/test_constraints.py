"""medjax/settings/rules.py: every numeric and enumerated key of medjax/settings/defaults.py
has a rule, and each rule refuses what it should."""

import math

import pytest

from medjax import optim, tasks
from medjax.models import cnn, conv_vae
from medjax.settings import defaults, rules
from medjax.train import run_config
from medjax.train.steps import PARALLEL

FLAT = run_config.flat(defaults.get_config())


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

    def choices(key):
        return set(table[key].says.removeprefix("one of ").replace("'", "").split(", "))

    assert choices("task") == set(tasks.TASKS)
    assert choices("parallel") == set(PARALLEL)
    assert choices("optimizer.schedule") == set(optim.SCHEDULES)
    assert choices("model.norm") == set(cnn.NORMS)
    assert choices("model.conv3d") == set(cnn.CONVS_3D)
    assert choices("model.likelihood") == set(conv_vae.LIKELIHOODS)
