#!/usr/bin/env bash
# The book's GPU check on an offline CUDA host: install the carried wheels, then run the book command itself
# with the gpu-check profile (the fast settings on the Llama-3.2-3B shape twin, no download), one GPU.
# Each chapter's seconds land in OUT_DIR/build.json; the card and versions in every run's env.json.
#
#   wheels: scripts/gpu_wheels.sh .whl, plus papermill/ipykernel and their needs in .whl/book/
#   usage:  benchmarks/gpu_check.sh WHEELS_DIR OUT_DIR [book arguments, e.g. --only 03_sft --no-html]
set -euo pipefail
wheels=${1:?usage: gpu_check.sh WHEELS_DIR OUT_DIR [book arguments]}; out=${2:?OUT_DIR}; shift 2
python3 -m pip install -q --no-index --no-deps --target /tmp/site "$wheels"/*.whl "$wheels"/book/*.whl 2>&1 \
  | grep -v -i "warning\|already exists" || true
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, trl, unsloth; print('torch', torch.__version__, 'transformers', transformers.__version__, 'trl', trl.__version__, 'unsloth', unsloth.__version__)" 2>&1 | tail -1
start=$(date +%s)
python3 -m mtlib.book --profile gpu-check --out "$out" "$@"
echo "[gpu_check] book command: $(( $(date +%s) - start )) s"
