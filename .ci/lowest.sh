#!/usr/bin/env bash
# The lowest versions pyproject.toml allows: a fresh virtual environment with each direct
# dependency, and each of the test and experiments extras, pinned (==) to its lower bound (>=),
# then the fast test tier. Not part of .ci/run (it builds a second environment); run it when a floor changes.
#
#   .ci/lowest.sh                                   # pytest -m "not slow"
#   .ci/lowest.sh -n 1 tests/test_checkpoint.py     # other pytest arguments instead
#
# PYTHON is the interpreter to build it with (default python3; the project supports 3.10 to
# 3.12), LOWEST_VENV its folder (default .venv-lowest, made anew on each run).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${LOWEST_VENV:-.venv-lowest}

rm -rf "$VENV"
"$PYTHON" -m venv "$VENV"
source "$VENV/bin/activate"
python -m pip install --quiet --upgrade pip
python -c "import tomllib" 2>/dev/null || python -m pip install --quiet tomli  # Python 3.10

# Every requirement must name one floor: one without is an error, not an unpinned install.
python - >"$VENV/lowest.txt" <<'EOF'
import re
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

with open("pyproject.toml", "rb") as f:
    project = tomllib.load(f)["project"]
extras = project["optional-dependencies"]
pins, errors = {}, []
for requirement in project["dependencies"] + extras["test"] + extras["experiments"]:
    match = re.match(r"\s*([A-Za-z0-9_.\-]+(?:\[[^\]]*\])?)\s*[^;]*?>=\s*([^,;\s]+)", requirement)
    if not match:
        errors.append(f"no lower bound (>=) for {requirement}")
    elif pins.setdefault(match[1], f"{match[1]}=={match[2]}") != f"{match[1]}=={match[2]}":
        errors.append(f"two lower bounds for {match[1]}")
if errors:
    sys.exit("pyproject.toml: " + "; ".join(errors))
print("\n".join(pins.values()))
EOF
echo "Lowest allowed versions ($(python --version)):"
sed 's/^/  /' "$VENV/lowest.txt"
python -m pip install --quiet -r "$VENV/lowest.txt"
python -m pip install --quiet -e . --no-deps
python -m pip check
python -m pip freeze --exclude-editable >"$VENV/freeze.txt"

if [ "$#" -eq 0 ]; then
  set -- -m "not slow"
fi
python -m pytest "$@"
