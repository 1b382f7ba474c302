import os, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODELS = ROOT / 'models'

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

@pytest.fixture
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
