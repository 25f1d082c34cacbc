#!/usr/bin/env bash
# Bundle the wheels an offline CUDA host (x86_64, CPython 3.12, CUDA torch already installed) needs
# for the GPU path: the pinned TRL/PEFT/datasets/Unsloth/bitsandbytes (read from pyproject.toml, the
# one place pins live) plus their small pure-Python needs. Two wheels are slimmed to keep the bundle
# near 20 MB: Unsloth without its web studio, bitsandbytes with only the CUDA 13.0 library.
#
# OUT_DIR/book/ holds what executing the chapters adds (papermill, ipykernel, nbformat and their needs,
# resolved for CPython 3.12): the book command runs them in Jupyter kernels.
#
#   usage:   scripts/gpu_wheels.sh OUT_DIR            (e.g. .whl, which .git/info/exclude ignores)
#   install: python3 -m pip install -q --no-index --no-deps --target /tmp/site OUT_DIR/*.whl OUT_DIR/book/*.whl
#            && export PYTHONPATH=/tmp/site          (benchmarks/gpu_env.sh does both)
set -euo pipefail
out=${1:?usage: gpu_wheels.sh OUT_DIR}
bnb_cuda=${BNB_CUDA:-130}
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$out"
# The specs pyproject.toml gives (the one place pins live) for the named packages, from the named lists
# ("core" = [project] dependencies, else an optional-dependencies group).
pins() {
  python3 - "$root/pyproject.toml" "$@" <<'PY'
import sys, tomllib
p = tomllib.load(open(sys.argv[1], "rb"))["project"]
groups, names = sys.argv[2].split(","), set(sys.argv[3:])
for group in groups:
    for spec in p["dependencies"] if group == "core" else p["optional-dependencies"][group]:
        if spec.split("=")[0].split(">")[0] in names:
            print(spec)
PY
}
# wheels for the CUDA host: CPython 3.12 on x86_64 Linux
host=(--only-binary=:all: --python-version 3.12 --implementation cp
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)
mapfile -t pinned < <(pins core,gpu trl peft datasets rouge_score unsloth unsloth_zoo bitsandbytes)
specs=("${pinned[@]}" nltk tyro msgspec cut_cross_entropy torchao hf_transfer json5 structlog nest-asyncio
       dill multiprocess docstring-parser shtab typeguard)
for s in "${specs[@]}"; do
  [[ $s == rouge_score* ]] && continue  # sdist only: built below
  python3 -m pip download -q --no-deps "${host[@]}" -d "$out" "$s" 2>&1 | grep -v "is ignored" || true
done
mapfile -t book < <(pins book papermill ipykernel nbformat)
mkdir -p "$out/book"
python3 -m pip download -q "${host[@]}" -d "$out/book" "${book[@]}" 2>&1 | grep -v "is ignored" || true
# what the CUDA host's torch/transformers/pandas stack already has stays its own (no newer copy shadows it)
for have in typing_extensions packaging python_dateutil tqdm pyyaml requests urllib3 idna certifi charset_normalizer tzdata; do
  rm -f "$out/book/$have"-[0-9]*.whl
done
# rouge_score ships as an sdist only: build its (pure-Python) wheel here.
ls "$out"/rouge_score-*.whl >/dev/null 2>&1 || python3 -m pip wheel -q --no-deps -w "$out" rouge_score==0.1.2 2>&1 | grep -v "is ignored" || true
python3 - "$out" "$bnb_cuda" <<'PY'
import glob, os, sys, zipfile
out, cuda = sys.argv[1], sys.argv[2]
def slim(path, keep):
    tmp = path + ".tmp"
    with zipfile.ZipFile(path) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if keep(info.filename):
                data = zin.read(info.filename)
                if info.filename.endswith("/RECORD"):
                    data = "".join(l + "\n" for l in data.decode().splitlines() if keep(l.split(",")[0])).encode()
                zout.writestr(info, data)
    os.replace(tmp, path)
for w in glob.glob(os.path.join(out, "unsloth-*.whl")):
    slim(w, lambda n: not n.startswith("studio/"))
for w in glob.glob(os.path.join(out, "bitsandbytes-*.whl")):
    slim(w, lambda n: not (n.startswith("bitsandbytes/libbitsandbytes_") and f"cuda{cuda}" not in n and "_cpu" not in n))
PY
du -sh "$out"
