#!/usr/bin/env bash
# Chapter 3's stages under a few process-wide settings, one process each (benchmarks/gpu_stage_probe.py),
# then where importing mtlib.modeling (Unsloth) spends its time (cProfile).
#   usage: benchmarks/gpu_stage_probe.sh WHEELS_DIR OUT_DIR SETTING...
#   SETTING: cold-shapes (see --cold-shapes) | default | expandable (PYTORCH_ALLOC_CONF=expandable_segments:True)
#            | noblock (UNSLOTH_BLOCK_COMPILE=0) | import | grpo-noblock | graphs (see --graphs)
#            | book-sft (chapter 3's order: one translation pass, then SFT as mtlib.train runs it) | book-sft-kept
#              (the allocator's cache not emptied before SFT) | book-sft-nocudnn (book-sft-kept, attention without cuDNN's)
#            | grpo-graphs / grpo-eager (GRPO's steps with the decode steps replayed from CUDA graphs, or not)
#            | grpo-graphs-nocudnn (grpo-graphs, the loss's attention without cuDNN's)
#            | grpo-profile (grpo-graphs, then torch.profiler's table of one more step)
set -euo pipefail
wheels=${1:?usage: gpu_stage_probe.sh WHEELS_DIR OUT_DIR SETTING...}; out=${2:?OUT_DIR}; shift 2
source "$(dirname "$0")/gpu_env.sh" "$wheels"
probe=(python3 -m benchmarks.gpu_stage_probe --out "$out" --twin "$out/twin")
for setting in "$@"; do
  start=$(date +%s)
  case $setting in
    default)            "${probe[@]}" --label "$setting" --sft-steps 50 ;;
    expandable)         PYTORCH_ALLOC_CONF=expandable_segments:True "${probe[@]}" --label "$setting" --passes 1 --sft-steps 50 ;;
    noblock)            UNSLOTH_BLOCK_COMPILE=0 "${probe[@]}" --label "$setting" --passes 0 --sft-steps 50 ;;
    book-sft)           "${probe[@]}" --label "$setting" --passes 1 --sft-steps 20 ;;
    book-sft-kept)      "${probe[@]}" --label "$setting" --passes 1 --sft-steps 20 --keep-cache ;;
    book-sft-nocudnn)   "${probe[@]}" --label "$setting" --passes 1 --sft-steps 20 --keep-cache --train-no-cudnn ;;
    cold-shapes)        "${probe[@]}" --label "$setting" --cold-shapes --sft-steps 0 ;;
    graphs)             "${probe[@]}" --label "$setting" --graphs --sft-steps 0 ;;
    grpo-graphs)        python3 -m benchmarks.gpu_grpo_breakdown --out "$out" --twin "$out/twin" --shapes 32x4 --steps 14 --skip 8 --max-completion 24 --label "$setting" ;;
    grpo-profile)       python3 -m benchmarks.gpu_grpo_breakdown --out "$out" --twin "$out/twin" --shapes 32x4 --steps 10 --skip 6 --max-completion 24 --profile --label "$setting" ;;
    grpo-graphs-nocudnn) python3 -m benchmarks.gpu_grpo_breakdown --out "$out" --twin "$out/twin" --shapes 32x4 --steps 14 --skip 8 --max-completion 24 --label "$setting" --train-no-cudnn ;;
    grpo-eager)         python3 -m benchmarks.gpu_grpo_breakdown --out "$out" --twin "$out/twin" --shapes 32x4 --steps 14 --skip 8 --max-completion 24 --no-graphs --label "$setting" ;;
    import)             python3 -c "import cProfile, pstats, sys; cProfile.run('import mtlib.modeling', '$out/import.prof'); s = pstats.Stats('$out/import.prof', stream=sys.stdout); s.sort_stats('cumulative').print_stats(80); s.sort_stats('tottime').print_stats(40)" > "$out/import_profile.txt" ;;
    grpo-noblock)       UNSLOTH_BLOCK_COMPILE=0 python3 -m benchmarks.gpu_grpo_breakdown --out "$out" --twin "$out/twin" --shapes 32x4 --steps 14 --skip 8 --max-completion 24 --label "$setting" ;;
    *) echo "unknown setting $setting" >&2; exit 2 ;;
  esac 2>&1 | grep -v -E "it/s\]|s/it\]|examples/s\]" | grep -E "^\[probe|^\{|Error|error|Traceback|compile|Unsloth:|decode_graphs" | tail -40 || true
  echo "[gpu_stage_probe] $setting: $(( $(date +%s) - start )) s"
done
