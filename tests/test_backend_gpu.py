"The CuPy backend (skipped without CuPy and a GPU)"
import os, subprocess, sys
import numpy as np, pytest
import fastcore.test as ft
from entrenar.backend import get_backend, set_backend, use_backend, to_device, to_numpy, get_array_module, is_device_array
from entrenar.errors import BackendError

def test_env_var_selects_backend():
    code = "from entrenar.backend import get_backend; print(get_backend())"
    out = subprocess.run([sys.executable, '-c', code], env={**os.environ, 'ENTRENAR_BACKEND': 'NumPy'}, capture_output=True, text=True)
    ft.test_eq(out.stdout.strip(), 'numpy')
    bad = subprocess.run([sys.executable, '-c', code], env={**os.environ, 'ENTRENAR_BACKEND': 'jax'}, capture_output=True, text=True)
    assert bad.returncode != 0 and "unknown backend 'jax'" in bad.stderr

@pytest.mark.gpu
def test_cupy_round_trip_and_module():
    with use_backend('cupy'):
        x = to_device(np.arange(12, dtype=np.float32).reshape(3, 4))
        assert is_device_array(x)
        ft.test_eq(get_array_module(x).__name__, 'cupy')
        ft.test_eq(to_numpy(x.sum(axis=0)), np.arange(12, dtype=np.float32).reshape(3, 4).sum(axis=0))
    ft.test_eq(get_backend(), 'numpy')

@pytest.mark.gpu
def test_lazy_model_tensor_to_gpu(tmp_path):
    from entrenar.io import Model, save_model, load_model
    a = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    save_model(Model(None, {'w': a}), tmp_path / 'm.safetensors')
    with use_backend('cupy'):
        g = to_device(load_model(tmp_path / 'm.safetensors', lazy=True).get_parameter('w'))
        assert to_numpy(g).tobytes() == a.tobytes()
