#!/usr/bin/env bash
# The book's GPU check on an offline CUDA host: install the carried wheels, then run the book command itself
# with the gpu-check profile (the fast settings on the Llama-3.2-3B shape twin, no download), one GPU.
# Each chapter's seconds land in OUT_DIR/build.json; the card and versions in every run's env.json.
#
#   wheels: scripts/gpu_wheels.sh .whl, plus papermill/ipykernel and their needs in .whl/book/
#   usage:  benchmarks/gpu_check.sh WHEELS_DIR OUT_DIR [book arguments, e.g. --only 03_sft --no-html]
set -euo pipefail
wheels=${1:?usage: gpu_check.sh WHEELS_DIR OUT_DIR [book arguments]}; out=${2:?OUT_DIR}; shift 2
source "$(dirname "$0")/gpu_env.sh" "$wheels"
start=$(date +%s)
status=0
python3 -m mtlib.book --profile gpu-check --out "$out" "$@" || status=$?
echo "[gpu_check] book command: $(( $(date +%s) - start )) s (exit $status)"
# the records worth keeping (no adapters or checkpoints): into $RECORDS_DIR when set (e.g. the device's $OUT)
if [ -n "${RECORDS_DIR:-}" ]; then
  cp "$out/build.json" "$RECORDS_DIR/" 2>/dev/null || true
  (cd "$out" && tar czf "$RECORDS_DIR/runs_records.tgz" --exclude='adapter' --exclude='checkpoints' --exclude='*.safetensors' runs 2>/dev/null) || true
fi
exit $status
