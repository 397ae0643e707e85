#!/usr/bin/env bash
# The demo: set up, run the workflow on the demo photos, print the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
snakemake --profile wsl all
echo
echo "== face table: work/sources/demo/faces.parquet =="
cat work/reports/embed_summary.txt
echo
echo "== the library: output/facesets_swap_ready/ =="
facesets library output/facesets_swap_ready
echo "report: snakemake --report report.html  (contact sheets + run statistics)"
