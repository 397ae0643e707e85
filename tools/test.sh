#!/usr/bin/env bash
# The tests: set up, then pytest (unit, integration with real snakemake runs, fault tests,
# lint). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
exec python -m pytest "$@"
