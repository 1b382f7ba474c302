#!/usr/bin/env bash
# Wheels (Python 3.12, manylinux x86_64) for the packages tools/gpu-check.sh needs that the GPU machine's image lacks,
# into .whl/ (git-ignored; it travels to the GPU machine with `carry: [".whl"]`), plus a stripped llama-quantize
# (from tools/peers.sh) and its libgomp for the quantize comparison. Runs here, where PyPI is reachable.
#
#     bash tools/gpu-wheels.sh          # then: du -sh .whl (keep it under 45 MB: the whole tree that travels is 64 MiB)
#
# The image already has torch, transformers, accelerate, peft, safetensors, tokenizers, sentencepiece, protobuf,
# huggingface_hub, numpy, numba, ml-dtypes, cupy, scipy, pyyaml, tqdm, jinja2, cloudpickle, toolz, msgpack, psutil,
# sortedcontainers, fsspec, packaging, six, wheel, build, setuptools, pytest, hypothesis (see the device notes' list).
# One version of each package: two versions of one name stop the whole install.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}   # any Python with pip: --python-version picks the wheels
W=.whl; mkdir -p "$W"
PKGS=(
  # mergekit-yaml --cuda (its merge path imports pydantic, immutables, click >= 8.2.1; datasets only for other scripts)
  mergekit==0.1.5 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 immutables==0.21 click==8.5.1
  # entrenar's own needs beyond the image
  orjson==3.13.0 fastcore==2.2.41 gguf==0.19.0
  # nbdev-test (execnb runs cells in IPython)
  nbdev==3.3.26 execnb==0.3.4 ghapi==2.1.4 fastgit==0.1.4 astunparse==1.6.3 watchdog==7.1.1 asttokens==3.0.2
  ipython==9.18.1 ipython-pygments-lexers==1.1.1 decorator==5.2.1 jedi==0.20.1 parso==0.8.7 matplotlib-inline==0.2.2
  pexpect==4.9.0 ptyprocess==0.7.0 prompt-toolkit==3.0.53 wcwidth==0.9.4 stack-data==0.6.3 executing==2.3.0 pure-eval==0.2.4
  traitlets==5.16.1
  # tests/test_distributed.py imports distributed (collected even under -m gpu)
  dask==2026.8.0 distributed==2026.8.0 partd==1.4.2 locket==1.0.0 tblib==3.2.2 zict==3.0.0 tornado==6.6.1
)
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux_2_5_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$W" "${PKGS[@]}"
# llama.cpp's CPU llama-quantize (dynamically linked to libgomp and libstdc++; libgomp travels in case the image lacks it)
PEERS=${ENTRENAR_PEERS:-$PWD/.cache/peers}
[ -x "$PEERS/bin/llama-quantize" ] || PEERS=/work/main/.cache/peers
if [ -x "$PEERS/bin/llama-quantize" ]; then
  mkdir -p "$W/bin" "$W/lib" && strip -o "$W/bin/llama-quantize" "$PEERS/bin/llama-quantize"
  cp -L "$(ldd "$PEERS/bin/llama-quantize" | awk '/libgomp/ {print $3}')" "$W/lib/libgomp.so.1"
else echo "no llama-quantize at $PEERS/bin: run bash tools/peers.sh first (the quantize comparison will be skipped)" >&2; fi
ls "$W"/*.whl | sed 's,.*/,,' | sed 's/-py[23].*\|-cp3.*//' | sort | uniq -d | grep . && { echo "two versions of one package in $W" >&2; exit 1; }
du -sh "$W"
# Every wheel's needs (Requires-Dist, markers for Python 3.12 on Linux) must be in the image or in .whl/
"$PY" - "$W" <<'PYEOF'
import glob, re, sys, zipfile
from email.parser import Parser
try: from packaging.requirements import Requirement
except ImportError: from pip._vendor.packaging.requirements import Requirement
IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi charset-normalizer
chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson
ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba numba-cuda numpy numpyro
onnx onnxruntime opencv-python-headless optax opt-einsum orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks python-dateutil pytorch-lightning
pyyaml regex requests rich safetensors scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham
simplejson six sortedcontainers statsmodels sympy tabulate tensorboard tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torchmetrics torchvision tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop
wadler-lindig werkzeug wheel wrapt xarray xxhash yarl zipp""".split()
norm = lambda n: re.sub(r'[-_.]+', '-', n).lower()
have, missing = {norm(n) for n in IMAGE}, []
wheels = {norm(w.split('/')[-1].split('-')[0]): w for w in glob.glob(sys.argv[1] + '/*.whl')}
have |= set(wheels)
env = dict(python_version='3.12', python_full_version='3.12.3', sys_platform='linux', platform_system='Linux', os_name='posix',
           platform_machine='x86_64', implementation_name='cpython', platform_python_implementation='CPython', extra='')
for name, w in sorted(wheels.items()):
    z = zipfile.ZipFile(w)
    meta = Parser().parsestr(z.read(next(n for n in z.namelist() if n.endswith('.dist-info/METADATA'))).decode())
    for r in map(Requirement, meta.get_all('Requires-Dist') or []):
        if r.marker is not None and not r.marker.evaluate(env): continue
        if norm(r.name) not in have: missing.append(f"{name} needs {r}")
ok = {'mergekit needs datasets', 'ghapi needs'}   # imported by neither mergekit-yaml nor nbdev-test
bad = [m for m in missing if not any(m.startswith(o) for o in ok)]
print(f"{len(wheels)} wheels; needs outside the image and .whl: {', '.join(missing) or 'none'}")
sys.exit(1 if bad else 0)
PYEOF
