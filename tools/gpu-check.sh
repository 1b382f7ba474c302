#!/usr/bin/env bash
# The checks that need an NVIDIA GPU and CuPy, in one run: the gpu-marked tests, the `#| gpu` notebook cells,
# and the GPU benchmarks (quantize: entrenar on CuPy against gguf-py on the CPU; merge: entrenar on CuPy
# against mergekit --cuda, then both on every CPU core). CI has no GPU and never runs this.
#
#     bash tools/gpu-check.sh [LOGDIR]
#
# Packages the GPU machine lacks (nbdev, orjson, gguf, dask, mergekit, ...) can travel as wheels in .whl/; they are installed
# into /tmp/site first. Each step has a time limit, so the whole run ends in about 9 minutes at most.
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-/tmp/gpu-check}; mkdir -p "$LOG"
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
else export PYTHONPATH=$PWD; fi
export PYTHONUNBUFFERED=1
step() { local name=$1 limit=$2; shift 2; echo "=== $name ($(date +%T), limit ${limit}s)"; local t=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$LOG/$name.log"; local rc=${PIPESTATUS[0]}; echo "=== $name: exit $rc in $((SECONDS - t)) s"; }

step env 60 bash -c "nvidia-smi -L; $PY -c 'import sys, numpy, cupy, numba; print(sys.version.split()[0], \"numpy\", numpy.__version__, \"cupy\", cupy.__version__, \"numba\", numba.__version__, cupy.cuda.runtime.getDeviceCount(), \"GPU\")'"
step pytest-gpu 100 $PY -m pytest -q -p no:cacheprovider -m gpu -rs tests
step nbdev-gpu 120 bash -c 'for nb in 01_backend 03_merge 04_quantize; do nbdev-test --flags gpu nbs/$nb.ipynb && echo "$nb: passed" || echo "$nb: FAILED"; done'
step bench-quantize-gpu 40 $PY benchmarks/quantize/bench.py --gpu --repeat 3
MK=${MERGEKIT_YAML:-/tmp/site/bin/mergekit-yaml}
step bench-merge-gpu 200 $PY benchmarks/merge/bench.py --gpu --keep --no-check-float32 --mergekit "$MK"
step bench-merge-cpu 110 $PY benchmarks/merge/bench.py --methods ties,linear --no-check-float32 --mergekit "$MK"
