"""experiments/doc_commands.py, which runs every documented command: its short forms, and that
it knows every program the pages run (the runs themselves: the script, not pytest)."""

import os
import re
import runpy
import shlex

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
doc = runpy.run_path(os.path.join(REPO, "experiments", "doc_commands.py"))


def documented_python_commands():
    for page in doc["pages"]():
        with open(os.path.join(REPO, page)) as f:
            for block in doc["bash_blocks"](f.read()):
                for line in block.replace("\\\n", " ").splitlines():
                    words = shlex.split(line, comments=True)
                    for i, word in enumerate(words):  # `python` after `&&`, `srun`, ...
                        if word == "python" and (i == 0 or words[i - 1] in ("&&", ";", "do")):
                            yield page, words[i + 1 :]


def test_every_documented_python_command_has_a_short_form():
    commands = list(documented_python_commands())
    assert len(commands) > 20  # the pages have more
    for _, args in commands:
        doc["short_form"](args)  # ValueError naming the program otherwise


def test_a_training_command_gets_the_short_run_after_its_own_arguments():
    args = ["-m", "medjax.main", "--config=configs/ct_cnn.py", "--workdir=runs/ct"]
    assert doc["short_form"](args) == args + doc["SHORT_RUN"]


def test_a_sweep_gets_its_flags_before_the_separator_and_the_overrides_after():
    args = ["experiments/sweep.py", "--config=c", "--out=o", "--", "--config.data.dir=D"]
    assert doc["short_form"](args) == [
        "experiments/sweep.py", "--config=c", "--out=o", "--seeds=0",
        "--", "--config.data.dir=D", *doc["SHORT_RUN"],
    ]  # fmt: skip
    privacy = doc["short_form"](["experiments/privacy/run.py", "--data_dir=D"])
    assert privacy == ["experiments/privacy/run.py", "--data_dir=D", "--", *doc["SHORT_RUN"]]


def test_an_unknown_program_is_refused_naming_it():
    with pytest.raises(ValueError, match=re.escape("'experiments/new.py' has no entry")):
        doc["short_form"](["experiments/new.py", "--x=1"])


def test_blocks_that_need_absent_things_are_skipped_saying_why(monkeypatch):
    monkeypatch.delenv("MEDJAX_TORCH_PYTHON", raising=False)
    assert doc["skip_reason"]('benchmark.py --torch="$MEDJAX_TORCH_PYTHON"') == (
        "$MEDJAX_TORCH_PYTHON is unset"
    )
    assert doc["skip_reason"]("python -m medjax.main --config=configs/ct_cnn.py") == ""
