#!/usr/bin/env bash
# The README's demo: set up .venv, then run the workflow on the embedded default (CPU only).
# Extra arguments go to snakemake (e.g. `bash scripts/demo.sh -n` for a dry run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# shellcheck disable=SC1091
. .venv/bin/activate
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" HF_DATASETS_OFFLINE="${HF_DATASETS_OFFLINE:-1}"
snakemake --cores "${CORES:-2}" "$@" all
echo
flanpipe summary
echo
flanpipe stats --mixture nli
echo
echo "trained models (Hugging Face folders, loss curves):"
for run in models/*/run.json; do
  dir=$(dirname "$run")
  last=$(tail -n 1 "$dir/metrics.csv")
  echo "  $dir/hf  $dir/loss.png  (step ${last%%,*}, loss $(echo "$last" | cut -d, -f2))"
done
echo
echo "zero-shot and few-shot on the held-out clusters (results/eval/), ablations (results/ablations/):"
flanpipe results
echo
echo "the report, with its figures: results/report/index.md"
