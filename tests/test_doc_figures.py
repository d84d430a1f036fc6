"""One source for each figure: a shipped config's result in the README's table is the one its
docstring states (a docstring is where a config's result lives; the table copies it)."""

import importlib
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def config_rows():
    with open(os.path.join(REPO, "README.md")) as f:
        text = f.read()
    return re.findall(r"^\| `configs/(\w+)\.py(?::NAME)?` \|.*\| ([^|]*) \|$", text, flags=re.M)


def figures(text):
    """The decimal numbers, and the counts of seconds and minutes, of `text`."""
    return set(re.findall(r"-?\d+\.\d+|\d+(?= s\b)|\d+(?= min\b)", text))


def test_the_readme_lists_every_shipped_config():
    shipped = {
        name[:-3] for name in os.listdir(os.path.join(REPO, "configs"))
        if name.endswith(".py") and name not in {"__init__.py", "default.py", "constraints.py"}
    }  # fmt: skip
    assert {name for name, _ in config_rows()} == shipped


@pytest.mark.parametrize("name,result", config_rows())
def test_the_readme_figures_are_the_config_docstrings(name, result):
    docstring = importlib.import_module(f"configs.{name}").__doc__
    assert figures(result), f"configs/{name}.py's row in the README states no figure"
    missing = figures(result) - figures(docstring)
    assert not missing, f"README's row for configs/{name}.py states {missing}, its docstring not"
