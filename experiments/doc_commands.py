"""Runs every command of the documentation as written, in its short form; exit status 1 if any
fails.

  python experiments/doc_commands.py [--pages=README.md,...] [--match=TEXT] [--list]

The pages: README.md, docs/*.md and experiments/*/README.md. Each ```bash block of a page runs
in order, in bash with `set -euo pipefail`, in one scratch copy of the repository per page (a
page's later blocks read the workdirs its earlier blocks made, and committed results are never
overwritten), with ../shared beside it when this repository has one. The commands are the
page's text; only these stand in for programs:
- `python` runs this file's `shim`, which adds SHORT_FORMS[program]'s arguments (fewer steps,
  seeds, epochs) to the command line, then runs the real python; a program without an entry
  runs unchanged;
- `pip` and `pytest` do nothing: `.ci/run` runs the README's install and test commands itself,
  in a fresh virtual environment.
A block that reads ../shared/data is skipped when it is absent, and one that needs
$MEDJAX_TORCH_PYTHON (a PyTorch venv's python) when that is unset; the summary says why.
"""

import argparse
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Training in a few steps: every task reads the trainer keys.
SHORT_RUN = [
    "--config.trainer.num_train_steps=4",
    "--config.trainer.eval_every_steps=2",
    "--config.trainer.checkpoint_every_steps=2",
    "--config.trainer.log_every_steps=2",
    "--config.optimizer.warmup_steps=1",
]
# program (a module after -m, or a script's path) -> (its own flags, config overrides for the
# runs it starts: after `--` for the scripts that pass those on to medjax.main).
SHORT_FORMS = {
    "medjax.main": ([], SHORT_RUN),
    "experiments/crossval.py": (["--folds=2", *SHORT_RUN], []),
    "experiments/sweep.py": (["--seeds=0"], SHORT_RUN),
    "experiments/medmnist/run.py": (["--seeds=0"], SHORT_RUN),
    "experiments/medmnist/choose_recipes.py": (["--folds=2"], SHORT_RUN),
    "experiments/privacy/run.py": ([], SHORT_RUN),
    "experiments/label_efficiency/run.py": (
        ["--epochs=1", "--pretrain_epochs=1,1", "--seeds=0", "--fractions=0.1"],
        [],
    ),
    "experiments/physionet2012/baselines.py": ([], []),
    "experiments/benchmark.py": (["--rounds=1", "--steps=2", "--warmup=1"], []),
    "experiments/privacy/memory.py": (["--batch_size=8"], []),
    "experiments/compare.py": ([], []),
    "medjax.infer": ([], []),
}


def short_form(args: list[str]) -> list[str]:
    """The arguments of `python ARGS` in their short form (SHORT_FORMS); ValueError for a
    program the table does not know, so that a new documented command needs a short form."""
    program = args[1] if args[:1] == ["-m"] else args[0] if args else ""
    if program not in SHORT_FORMS:
        raise ValueError(
            f"`python {' '.join(args)}`: {program!r} has no entry in SHORT_FORMS of "
            "experiments/doc_commands.py; add its short form there"
        )
    own, overrides = SHORT_FORMS[program]
    if "--" in args:
        cut = args.index("--")
        head, tail = args[:cut], args[cut + 1 :]
    else:
        head, tail = args, []
    if program == "medjax.main" or not overrides:
        return head + own + overrides + (["--", *tail] if tail else [])
    return head + own + ["--", *tail, *overrides]


def pages() -> list[str]:
    found = ["README.md", *sorted(glob.glob("docs/*.md", root_dir=REPO))]
    return found + sorted(glob.glob("experiments/*/README.md", root_dir=REPO))


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", text, flags=re.S | re.M)


def skip_reason(block: str) -> str:
    if "../shared/data" in block and not os.path.isdir(os.path.join(REPO, "..", "shared", "data")):
        return "../shared/data is absent"
    if "MEDJAX_TORCH_PYTHON" in block and not os.environ.get("MEDJAX_TORCH_PYTHON"):
        return "$MEDJAX_TORCH_PYTHON is unset"
    return ""


PRELUDE = """set -euo pipefail
python() { "$MEDJAX_DOC_PYTHON" "$MEDJAX_DOC_SHIM" shim "$@"; }
pip() { echo "(pip $*: .ci/run installs)"; }
pytest() { echo "(pytest $*: .ci/run runs the tests)"; }
"""


def scratch_copy(folder: str) -> str:
    """A copy of the repository's tracked files in folder/repo, with folder/shared linked to
    ../shared when there is one; returns folder/repo."""
    tracked = subprocess.run(
        ["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True, text=True
    ).stdout.split("\0")
    copy = os.path.join(folder, "repo")
    for path in filter(None, tracked):
        if os.path.isfile(os.path.join(REPO, path)):
            os.makedirs(os.path.dirname(os.path.join(copy, path)), exist_ok=True)
            shutil.copy2(os.path.join(REPO, path), os.path.join(copy, path))
    shared = os.path.join(REPO, "..", "shared")
    if os.path.isdir(shared):
        os.symlink(os.path.abspath(shared), os.path.join(folder, "shared"))
    return copy


def run_page(page: str, match: str = "") -> list[tuple[str, str, float]]:
    """[(first line, passed / failed / skipped: why, seconds)] of the page's blocks (those
    containing `match`)."""
    with open(os.path.join(REPO, page)) as f:
        blocks = [b for b in bash_blocks(f.read()) if match in b]
    results = []
    with tempfile.TemporaryDirectory(prefix="medjax-doc-") as folder:
        copy = scratch_copy(folder)
        env = {**os.environ, "MEDJAX_DOC_PYTHON": sys.executable,
               "MEDJAX_DOC_SHIM": os.path.abspath(__file__)}  # fmt: skip
        for block in blocks:
            first = block.strip().splitlines()[0]
            reason = skip_reason(block)
            if reason:
                results.append((first, f"skipped: {reason}", 0.0))
                continue
            print(f"--- {page}: {first}", flush=True)
            start = time.perf_counter()
            done = subprocess.run(["bash", "-c", PRELUDE + block], cwd=copy, env=env)
            status = "passed" if done.returncode == 0 else f"failed (status {done.returncode})"
            results.append((first, status, time.perf_counter() - start))
    return results


def main(argv: list[str]) -> int:
    if argv[:1] == ["shim"]:
        args = short_form(argv[1:])
        os.execv(sys.executable, [sys.executable, *args])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", default=",".join(pages()), help="comma-separated pages")
    parser.add_argument("--match", default="", help="only the blocks containing this text")
    parser.add_argument("--list", action="store_true", help="print the blocks, run nothing")
    options = parser.parse_args(argv)
    failed = 0
    for page in options.pages.split(","):
        if options.list:
            with open(os.path.join(REPO, page)) as f:
                for block in bash_blocks(f.read()):
                    print(f"--- {page}\n{block}")
            continue
        for first, status, seconds in run_page(page, options.match):
            print(f"{page}: {status} in {seconds:.0f} s: {first}", flush=True)
            failed += status.startswith("failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
