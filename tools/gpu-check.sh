#!/usr/bin/env bash
# Every check of issue 17 that needs an NVIDIA GPU and CuPy, as one prepared run (CI has no GPU and never runs this):
#   env           the GPU, driver, Python packages, and whether the carried llama-quantize finds its libraries
#   pytest-gpu    the gpu-marked tests (pytest -m gpu tests)
#   nbdev-gpu     the notebooks holding `#| gpu` cells, run with --flags gpu
#   bench-gpu     benchmarks/gpu/bench.py: copy bandwidths, every block format's quantize/dequantize and the merge
#                 kernels against them, and against numpy on every core
#   quantize-gpu  benchmarks/gpu/quantize_vs_llama.py --gpu: entrenar quantize on CuPy against llama-quantize (CPU)
#   merge-gpu     benchmarks/merge/bench.py --gpu: the 4-model merge (linear, slerp, ties, dare_ties, task_arithmetic,
#                 della) by entrenar on CuPy and mergekit-yaml --cuda, files to files; wall, GB/s, RSS, device memory
#
#     bash tools/gpu-wheels.sh          # here, once: the wheels the GPU machine lacks, and llama-quantize, into .whl/
#     bash tools/gpu-check.sh [LOGDIR]  # there, with .whl carried; LOGDIR is $OUT on the device machine
#
# Each step has a time limit, cut further so that the whole run ends within GPU_CHECK_BUDGET seconds (default 530,
# under 9 minutes). Everything printed goes to LOGDIR/gpu-check.log; the benchmarks write LOGDIR/*.json (4 files in
# all: the device tool brings back at most 8). A step that fails or times out is reported and the next one runs.
# Sizes can be changed through MERGE_ARGS and QUANT_ARGS (defaults: 4 models of 0.64 GB for the merge, a
# 205M-parameter model for quantize; MERGE_ARGS="--layers 32" gives ~1 GB models if the budget allows).
set -uo pipefail
cd "$(dirname "$0")/.."
LOG=${1:-/tmp/gpu-check}; mkdir -p "$LOG"
OUTLOG="$LOG/gpu-check.log"; : > "$OUTLOG"
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-530}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
say() { echo "$*" | tee -a "$OUTLOG"; }
if ls .whl/*.whl >/dev/null 2>&1; then
  t=$SECONDS
  timeout 60 $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl 2>&1 | tail -5 | tee -a "$OUTLOG"
  say "=== wheels: $(ls .whl/*.whl | wc -l) installed into /tmp/site in $((SECONDS - t)) s"
  export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
else export PYTHONPATH=$PWD; say "=== no .whl/: packages the image lacks (mergekit, nbdev, gguf, dask, ...) are missing"; fi

step() { local name=$1 limit=$2; shift 2
  local left=$((BUDGET - SECONDS))
  if [ "$left" -lt 15 ]; then say "=== $name: SKIPPED (budget of ${BUDGET}s spent)"; return; fi
  [ "$limit" -gt "$left" ] && limit=$left
  say "=== $name ($(date +%T), limit ${limit}s)"; local t=$SECONDS
  timeout -k 5 "$limit" "$@" 2>&1 | tee -a "$OUTLOG"; local rc=${PIPESTATUS[0]}
  say "=== $name: exit $rc$([ "$rc" = 124 ] && echo ' (TIMED OUT)') in $((SECONDS - t)) s"; }

LQ=.whl/bin/llama-quantize; [ -x "$LQ" ] || LQ=.cache/peers/bin/llama-quantize
step env 30 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,memory.used --format=csv; nproc; free -g | head -2; df -h /tmp | tail -1
  $PY -c 'import sys, numpy, cupy, numba; print(sys.version.split()[0], \"numpy\", numpy.__version__, \"cupy\", cupy.__version__, \"numba\", numba.__version__, cupy.cuda.runtime.getDeviceCount(), \"GPU\")'
  $PY -m pip list 2>/dev/null | grep -iE '^(torch|transformers|accelerate|peft|safetensors|click|tqdm|pydantic|mergekit|nbdev|execnb|fastcore|gguf|dask|distributed|orjson|ml.dtypes|hypothesis|pytest) '
  $PY -c 'import entrenar, entrenar.cli; print(\"entrenar\", entrenar.__version__, entrenar.__file__)'
  for m in entrenar.cuda entrenar.cuda_blocks entrenar.cuda_kquants entrenar.cuda_merge; do $PY -c \"import \$m\" 2>/dev/null && echo \"\$m: present\" || echo \"\$m: absent\"; done
  command -v g++ c++ || echo 'NO C++ COMPILER: the CPU builds of the kernels (test references) will fail';
  command -v mergekit-yaml nbdev-test; [ -x $LQ ] && { ldd $LQ | grep -E 'not found|gomp|stdc'; echo llama-quantize: $LQ; } || echo 'llama-quantize: absent'"
step pytest-gpu 150 $PY -m pytest -v --tb=short --durations=10 -p no:cacheprovider -m gpu -rs --timeout 60 tests
NBS=$(grep -l '#| gpu' nbs/*.ipynb | xargs -n1 basename | sed 's/\.ipynb$//' | paste -sd'|')
step nbdev-gpu 100 nbdev-test nbs --flags gpu --file-re "^($NBS)\.ipynb$" --n-workers 4 --do-print --timing
step bench-gpu 100 $PY benchmarks/gpu/bench.py --out "$LOG/gpu-bench.json"
step quantize-gpu 75 $PY benchmarks/gpu/quantize_vs_llama.py --gpu --type q4_k_m --llama-quantize "$LQ" --json "$LOG/quantize-gpu.json" ${QUANT_ARGS:---layers 4}
MK=${MERGEKIT_YAML:-/tmp/site/bin/mergekit-yaml}   # last: it takes what the budget has left (rows print as they finish)
step merge-gpu 200 $PY benchmarks/merge/bench.py --gpu --methods linear,slerp,ties,dare_ties,task_arithmetic,della --warm-up entrenar \
  --no-check-float32 --mergekit "$MK" --json "$LOG/merge-gpu.json" ${MERGE_ARGS:-}
say "=== gpu-check done in $SECONDS s; logs and results in $LOG: $(ls "$LOG" | paste -sd' ')"
