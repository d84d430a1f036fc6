"""One source for each figure: a shipped config's result in a table of the README or of docs/
is the one its docstring states (a docstring is where a config's result lives; the tables copy
it)."""

import glob
import importlib
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = ("README.md", *sorted(glob.glob("docs/*.md", root_dir=REPO)))


def config_rows(pages=PAGES):
    """(config name, result) of each table row that starts with a config, on the pages."""
    rows = []
    for page in pages:
        with open(os.path.join(REPO, page)) as f:
            text = f.read()
        row = r"^\| `configs/(\w+)\.py(?::NAME)?` \|.*\| ([^|]*) \|$"
        rows += re.findall(row, text, flags=re.M)
    return rows


def figures(text):
    """The decimal numbers, and the counts of seconds and minutes, of `text`."""
    return set(re.findall(r"-?\d+\.\d+|\d+(?= s\b)|\d+(?= min\b)", text))


def test_the_readme_lists_every_shipped_config():
    modules = [n[:-3] for n in os.listdir(os.path.join(REPO, "configs")) if n.endswith(".py")]
    shipped = {  # the configs: modules with get_config (not configs/smoke.py, its helper)
        name for name in modules
        if hasattr(importlib.import_module(f"configs.{name}"), "get_config")
    }  # fmt: skip
    assert {name for name, _ in config_rows(("README.md",))} == shipped


@pytest.mark.parametrize("name,result", config_rows())
def test_the_tables_figures_are_the_config_docstrings(name, result):
    docstring = importlib.import_module(f"configs.{name}").__doc__
    assert figures(result), f"configs/{name}.py's row in a table states no figure"
    missing = figures(result) - figures(docstring)
    assert not missing, f"a row for configs/{name}.py states {missing}, its docstring not"
