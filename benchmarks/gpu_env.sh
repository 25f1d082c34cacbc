# Sourced by the GPU scripts: install the carried wheels once per machine (a later call on the same machine
# reuses them) and put them and the checkout on PYTHONPATH.  usage: source benchmarks/gpu_env.sh WHEELS_DIR
#   wheels: scripts/gpu_wheels.sh .whl, plus papermill/ipykernel and their needs in .whl/book/
wheels=${1:?usage: source benchmarks/gpu_env.sh WHEELS_DIR}
[ -f /tmp/site/.mtlib-wheels ] || { python3 -m pip install -q --no-index --no-deps --target /tmp/site "$wheels"/*.whl \
  "$wheels"/book/*.whl 2>&1 | grep -v -i "warning\|already exists"; touch /tmp/site/.mtlib-wheels; } || true
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-0}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
