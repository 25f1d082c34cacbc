#!/usr/bin/env bash
# The book command (gpu-check profile) of today's code and of an earlier commit on the same GPU machine, on the
# same shape twin: a same-card ratio of whole builds. A build of the earlier code may outlast one device call
# (10 minutes), so the comparison runs in steps, each a call, back to back on the same (warm) machine:
#
#   usage: benchmarks/gpu_then_and_now.sh WHEELS NOW_SRC THEN_SRC WORK RESULTS STEP
#     NOW_SRC, THEN_SRC: the two code trees (git archive of each commit); WORK: where both builds go;
#     RESULTS: where their records are copied (the device's $OUT)
#     STEP now:       today's whole build, then the earlier code's chapters 01 and 02 (and 03 if time allows)
#     STEP then-sft:  the earlier code's 03_sft          STEP then-rest: its 04_grpo, 05_results, 06_gpu_speed
#
# Each build has its own compile caches (Triton, Inductor, Hugging Face; Unsloth's compiled cache lives in each
# tree), so neither starts from what the other compiled. The earlier build is given today's twin (same weights
# and tokenizer: the same tokens to train on and translate) and so skips building one: its time is a shade short.
set -uo pipefail
wheels=$(realpath "${1:?WHEELS}"); now_src=$(realpath "${2:?NOW_SRC}"); then_src=$(realpath "${3:?THEN_SRC}")
mkdir -p "${4:?WORK}" "${5:?RESULTS}"; work=$(realpath "$4"); results=$(realpath "$5"); step=${6:?STEP}
twin=twin-meta-llama--Llama-3.2-3B-Instruct

book() {  # book WHICH SECONDS ARGS...: the book command of one tree into $work/WHICH, its log and build.json kept
  local which=$1 limit=$2; shift 2
  local src; [ "$which" = now ] && src=$now_src || src=$then_src
  (cd "$src" && source "$now_src/benchmarks/gpu_env.sh" "$wheels" >/dev/null \
    && export TRITON_CACHE_DIR="$work/$which-cache/triton" TORCHINDUCTOR_CACHE_DIR="$work/$which-cache/inductor" \
              HF_HOME="$work/$which-cache/hf" \
    && start=$(date +%s) \
    && { timeout "$limit" python3 -m mtlib.book --profile gpu-check --out "$work/$which" --no-html "$@"; \
         echo "[then-and-now] $which $*: exit $?, $(( $(date +%s) - start )) s"; }) 2>&1 \
    | tee -a "$results/$which.txt" | grep -E '^\[book\] [0-9]+_[a-z_]+: |then-and-now|Error' | tail -12
  cp "$work/$which/build.json" "$results/${which}_build.json" 2>/dev/null
  cp "$work/$which/kernels.log" "$results/${which}_kernels.log" 2>/dev/null
  (cd "$work/$which" && tar czf "$results/${which}_runs_records.tgz" --exclude=adapter --exclude=checkpoints \
    --exclude='*.safetensors' runs 2>/dev/null)
  return 0
}

(cd "$now_src" && source benchmarks/gpu_env.sh "$wheels")  # wheels and bytecode, once per machine, before timing
case $step in
  now)
    book now 420
    book then 100 --only 01_data,02_metrics
    cp -r "$work/now/$twin" "$work/then/"  # after the build began: a new build refuses a folder with files
    # its 03_sft too, when this call's 10 minutes leave room for it (it took 200 s on an H200)
    if [ "$SECONDS" -le 350 ]; then book then $(( 585 - SECONDS )) --resume --only 03_sft
    else echo "[then-and-now] no time left in this call for the earlier code's 03_sft: run STEP then-sft next"; fi ;;
  then-sft)  book then 560 --resume --only 03_sft ;;
  then-rest) book then 560 --resume --only 04_grpo,05_results,06_gpu_speed ;;
  *) echo "unknown STEP $step (now, then-sft, then-rest)"; exit 2 ;;
esac
