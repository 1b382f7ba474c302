import json, os, shutil, subprocess, sys
from pathlib import Path
import numpy as np, pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / 'models'

NVCC = shutil.which('nvcc') or shutil.which('/usr/local/cuda/bin/nvcc')

def differing_blocks(got, want, block_bytes:int):
    "Indices of the blocks of `block_bytes` in which `got` (host or device bytes) and `want` differ"
    from entrenar.backend import to_numpy
    return np.nonzero((to_numpy(got).reshape(-1, block_bytes) != np.asarray(want).reshape(-1, block_bytes)).any(axis=1))[0]

def sm90_kernels(source:str):
    "The entry functions nvcc compiles from `source` for sm_90, after checking that none spills or uses a stack frame"
    from entrenar.cuda import gpu_compile
    report = gpu_compile(source, 'sm_90')
    kernels = [l.split("'")[1] for l in report.splitlines() if 'Compiling entry function' in l]
    spills = [l for l in report.splitlines() if 'spill stores' in l]
    assert len(spills) == len(kernels), report
    assert all('0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads' in l for l in spills), report
    return kernels

def _has_gpu():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception: return False

def pytest_collection_modifyitems(config, items):
    if _has_gpu(): return
    skip = pytest.mark.skip(reason="needs CuPy and a CUDA GPU")
    for item in items:
        if 'gpu' in item.keywords: item.add_marker(skip)

def entrenar_cmd():
    "The installed `entrenar` script beside this Python, or `python -m`-style fallback"
    exe = Path(sys.executable).parent / 'entrenar'
    return [str(exe)] if exe.exists() else [sys.executable, '-c', 'import sys; from entrenar.cli import main; sys.exit(main())']

@pytest.fixture(scope='session')
def run_cli():
    "Run the real `entrenar` command in a subprocess"
    def run(*args, cwd=None, env=None, timeout=300):
        return subprocess.run(entrenar_cmd() + [str(a) for a in args], capture_output=True, text=True, cwd=cwd,
                              env={**os.environ, **(env or {})}, timeout=timeout)
    return run

def one_error_line(r):
    "Check that a failed `entrenar` run printed exactly one `error: …` line, no traceback, and exited 1; return the line"
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert len(lines) == 1 and lines[0].startswith('error: '), r.stderr
    assert 'Traceback' not in r.stderr
    return lines[0]

# ---- the peer tools (llama.cpp, its converter, transformers, mergekit), installed by tools/peers.sh ----
PEERS = Path(os.environ.get('ENTRENAR_PEERS') or ROOT / '.cache' / 'peers')
PEER_SKIPS = []

class Peers:
    "Where the peer tools are: the peer venv's python, llama.cpp's source tree, the SmolLM2 GGUF"
    python = PEERS / 'venv' / 'bin' / 'python'
    llama_cpp = PEERS / 'llama.cpp'
    smollm2 = PEERS / 'SmolLM2-135M-Instruct.Q4_1.gguf'
    bin = PEERS / 'bin'   # llama.cpp's llama-imatrix and llama-quantize
    scripts = ROOT / 'tests' / 'peers'
    def tool(self, name, *args, timeout=600):
        "Run one of llama.cpp's command-line tools; stdout and stderr together"
        r = subprocess.run([str(self.bin / name), *map(str, args)], capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"{name} failed ({r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}"
        return r.stdout + r.stderr
    def run(self, script, *args, timeout=600):
        "Run tests/peers/SCRIPT with the peer python; its JSON output (or the exit status when it prints none)"
        r = subprocess.run([str(self.python), str(self.scripts / script), *map(str, args)], capture_output=True, text=True,
                           timeout=timeout, env={**os.environ, 'HF_HUB_OFFLINE': '1', 'TRANSFORMERS_OFFLINE': '1'})
        assert r.returncode == 0, f"{script} failed ({r.returncode}):\n{r.stderr[-3000:]}"
        return json.loads(r.stdout.strip().splitlines()[-1]) if r.stdout.strip() else None
    def convert(self, model_dir, outfile, outtype):
        "llama.cpp's own convert_hf_to_gguf.py"
        r = subprocess.run([str(self.python), str(self.llama_cpp / 'convert_hf_to_gguf.py'), str(model_dir), '--outtype', outtype,
                            '--outfile', str(outfile)], capture_output=True, text=True, timeout=900, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
        assert r.returncode == 0, r.stderr[-3000:]
        return outfile

@pytest.fixture(scope='session')
def peers():
    "The peer tools; a failure in CI (the CI variable is set) when they are missing, else a loud skip"
    missing = [str(p) for p in (Peers.python, Peers.llama_cpp / 'convert_hf_to_gguf.py', Peers.smollm2, Peers.bin / 'llama-imatrix') if not p.exists()]
    if missing:
        msg = f"peer tools missing ({', '.join(missing)}): run `bash tools/peers.sh`"
        if os.environ.get('CI'): pytest.fail(msg)
        PEER_SKIPS.append(msg); pytest.skip(msg)
    return Peers()

def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get('skipped', []) if 'peer' in str(r.longrepr) or 'mergekit' in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(f"!!! {len(skipped)} comparisons with the peer tools were SKIPPED; `bash tools/peers.sh` installs them "
                                    f"(then rerun; CI fails instead of skipping)", red=True, bold=True)
