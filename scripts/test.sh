#!/usr/bin/env bash
# The tests: set up, then pytest (unit, integration with real snakemake runs, fault tests,
# lint). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The real-Slurm test (tests/workflow/test_slurm.py) needs Debian's slurm-wlm + slurmdbd + munge + MariaDB:
# installed here when we are root with apt-get; otherwise (or if that fails) the test skips.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    bash scripts/slurm/install.sh || echo "test: Slurm install failed; the slurm test will skip" >&2
    # The browser tests (tests/browser/) drive Debian's chromium through its chromedriver (no browser download).
    if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
        apt-get update -qq || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium chromium-driver >/dev/null \
            || echo "test: chromium install failed; the browser tests will skip" >&2
    fi
fi
export PATH="$PWD/.venv/bin:$PATH"
# Two pytest-xdist workers, one test file per worker at a time (module fixtures build a library
# once per file), the longest files first (tests/conftest.py): about half the wall time of one
# process on two cores. FACESETS_TEST_WORKERS=0 runs everything in this process (pdb, -s).
exec python -m pytest -n "${FACESETS_TEST_WORKERS:-2}" --dist loadfile --durations=20 "$@"
