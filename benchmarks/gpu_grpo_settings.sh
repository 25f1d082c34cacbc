#!/usr/bin/env bash
# Unsloth's GRPO loss settings side by side on one card, one process each (Unsloth reads them at import):
# the fast shape (32 x 4) on the 3B shape twin, completions capped at the book's typical length.
#   usage: benchmarks/gpu_grpo_settings.sh WHEELS_DIR OUT_DIR SETTING...
#   SETTING: packing (Unsloth's own default) | nogrouper | nopacking (mtlib's default) | nopacking-pad32
#   results: OUT_DIR/grpo_breakdown_SETTING.json (the first call of 2026-12-01 named packing "default")
set -euo pipefail
wheels=${1:?usage: gpu_grpo_settings.sh WHEELS_DIR OUT_DIR SETTING...}; out=${2:?OUT_DIR}; shift 2
source "$(dirname "$0")/gpu_env.sh" "$wheels"
common=(--out "$out" --twin "$out/twin" --shapes 32x4 --steps 10 --skip 6 --max-completion 24)
for setting in "$@"; do
  start=$(date +%s)
  case $setting in
    packing)         UNSLOTH_GRPO_SEQ_PACKING=1 python3 -m benchmarks.gpu_grpo_breakdown "${common[@]}" --label "$setting" --profile ;;
    nogrouper)       UNSLOTH_GRPO_SEQ_PACKING=1 UNSLOTH_GRPO_PREFIX_GROUPER=0 python3 -m benchmarks.gpu_grpo_breakdown "${common[@]}" --label "$setting" ;;
    nopacking)       UNSLOTH_GRPO_SEQ_PACKING=0 python3 -m benchmarks.gpu_grpo_breakdown "${common[@]}" --label "$setting" --profile ;;
    nopacking-pad32) UNSLOTH_GRPO_SEQ_PACKING=0 python3 -m benchmarks.gpu_grpo_breakdown "${common[@]}" --label "$setting" --pad-multiple 32 ;;
    *) echo "unknown setting $setting" >&2; exit 2 ;;
  esac 2>&1 | grep -v -E "it/s\]|s/it\]" | tail -60
  echo "[gpu_grpo_settings] $setting: $(( $(date +%s) - start )) s"
done
