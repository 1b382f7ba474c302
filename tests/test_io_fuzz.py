"Hostile files: mutated SafeTensors/JSON/YAML files load or fail with a typed error, never hang; a killed save leaves the old file"
import os, signal, subprocess, sys, time
from pathlib import Path
import numpy as np, pytest
import fastcore.test as ft
import fuzz_io
from entrenar.io import Model, load_model, save_model

def test_fuzz_mutated_files(tmp_path):
    res, fails = fuzz_io.run(150, seed=1, workdir=tmp_path)
    assert not fails, fails[:3]
    for fmt, c in res.items():
        ft.test_eq(c['untyped'] + c['hang'], 0)
        assert c['typed'] > 20, (fmt, c)   # the mutations really do break files

@pytest.mark.slow
def test_fuzz_long(tmp_path):
    res, fails = fuzz_io.run(10_000, seed=2, workdir=tmp_path)
    assert not fails, fails[:3]

KILLER = '''
import sys, numpy as np
from entrenar.io import Model, save_model
m = Model(None, {f"t{i}": np.full((1024, 1024), i, np.float32) for i in range(int(sys.argv[2]))})
print("start", flush=True)
save_model(m, sys.argv[1])
'''

@pytest.mark.parametrize('ext,n', [('safetensors', 400), ('json', 40)])
def test_killed_save_leaves_old_file(tmp_path, ext, n):
    target = tmp_path / f'model.{ext}'
    old = Model(None, {'old': np.arange(3, dtype=np.float32)})
    save_model(old, target)
    before = target.read_bytes()
    p = subprocess.Popen([sys.executable, '-c', KILLER, str(target), str(n)], stdout=subprocess.PIPE, text=True)
    ft.test_eq(p.stdout.readline().strip(), 'start')
    deadline = time.time() + 60
    while not any(f.name.startswith(f'.{target.name}.entrenar-tmp') for f in tmp_path.iterdir()):   # wait until it is writing
        assert time.time() < deadline and p.poll() is None, "the save never started writing"
        time.sleep(0.005)
    time.sleep(0.05)
    p.kill(); p.wait()
    assert p.returncode == -signal.SIGKILL
    assert target.read_bytes() == before
    ft.test_eq(load_model(target).names, ['old'])
