# Sourced by the GPU scripts: install the carried wheels once per machine (a later call on the same machine
# reuses them) and put them and the checkout on PYTHONPATH.  usage: source benchmarks/gpu_env.sh WHEELS_DIR
#   wheels: scripts/gpu_wheels.sh .whl, plus papermill/ipykernel and their needs in .whl/book/
wheels=${1:?usage: source benchmarks/gpu_env.sh WHEELS_DIR}
[ -f /tmp/site/.mtlib-wheels ] || { python3 -m pip install -q --no-index --no-deps --target /tmp/site "$wheels"/*.whl \
  "$wheels"/book/*.whl 2>&1 | grep -v -i "warning\|already exists"; touch /tmp/site/.mtlib-wheels; } || true
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
# The device image sets PYTHONDONTWRITEBYTECODE=1 and lacks bytecode for much of what Unsloth imports, so every
# process compiled some 2,400 modules from source (12 s of a 52 s profiled import). An installed environment has
# its bytecode: compile it once per machine into /tmp/pycache, before any timed command.
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=/tmp/pycache
[ -f /tmp/pycache/.mtlib-compiled ] || { t=$(date +%s); mkdir -p /tmp/pycache
  python3 -m compileall -q -j 0 /tmp/site "$PWD/mtlib" $(python3 -c "import site; print(*site.getsitepackages())") \
    >/dev/null 2>&1 || true; touch /tmp/pycache/.mtlib-compiled; echo "[gpu_env] bytecode compiled in $(( $(date +%s) - t )) s"; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
