"Merging on CuPy gives the CPU's results within float tolerance (skipped without CuPy and a GPU)"
import numpy as np
import pytest
from conftest import MODELS
from entrenar.backend import to_device, to_numpy, use_backend
from entrenar.io import load_model
from entrenar.merge import merge_files, merge_tensors

CASES = [('linear', dict(weight=[1, 2, 3])), ('slerp', dict(t=0.3)), ('nuslerp', dict(weight=[1, 2])), ('multislerp', dict(weight=1)),
         ('karcher', {}), ('nearswap', dict(t=0.01)), ('task_arithmetic', dict(weight=[0.5, 0.3, 0.2])), ('ties', dict(weight=1, density=0.4)),
         ('dare_ties', dict(weight=1, density=0.4)), ('dare_linear', dict(weight=1, density=0.4, rescale_mode='probability')),
         ('breadcrumbs', dict(weight=1, density=0.6, gamma=0.05)), ('breadcrumbs_ties', dict(weight=1, density=0.6, gamma=0.05)),
         ('della', dict(weight=1, density=0.5)), ('della_linear', dict(weight=1, density=0.5)), ('model_stock', {}),
         ('model_stock', dict(filter_wise=True)), ('sce', dict(select_topk=0.5)), ('passthrough', dict(scale=2))]
NEEDS = {'slerp': 1, 'nearswap': 1, 'nuslerp': 2, 'passthrough': 1}
NO_BASE = {'linear', 'karcher', 'passthrough', 'nuslerp', 'multislerp'}

@pytest.mark.gpu
@pytest.mark.parametrize('method,params', CASES)
def test_cupy_equals_numpy(method, params):
    rng = np.random.default_rng(0)
    base = rng.normal(size=(512, 384)).astype(np.float32)
    fts = [base + rng.normal(scale=0.01, size=base.shape).astype(np.float32) for _ in range(NEEDS.get(method, 3))]
    b = None if method in NO_BASE else base
    cpu = merge_tensors(method, fts, base=b, name='layers.0.w', seed=3, **params)
    gpu = merge_tensors(method, [to_device(f, 'cupy') for f in fts], base=None if b is None else to_device(b, 'cupy'), name='layers.0.w', seed=3, **params)
    np.testing.assert_allclose(to_numpy(gpu), cpu, rtol=1e-5, atol=1e-5)

@pytest.mark.gpu
@pytest.mark.parametrize('method', ['ties', 'dare_ties', 'slerp', 'linear'])
def test_merge_files_on_the_gpu(method, tmp_path):
    inputs = [MODELS / f'tiny-llama{k}' for k in ('', '-a', '-b')][:2 if method == 'slerp' else 3]
    params = dict(t=0.4) if method == 'slerp' else dict(density=0.5) if method != 'linear' else {}
    merge_files(inputs, tmp_path / 'cpu.safetensors', method, seed=1, **params)
    with use_backend('cupy'): merge_files(inputs, tmp_path / 'gpu.safetensors', method, seed=1, **params)
    cpu, gpu = load_model(tmp_path / 'cpu.safetensors'), load_model(tmp_path / 'gpu.safetensors')
    for n in cpu.names: np.testing.assert_allclose(gpu.get_parameter(n), cpu.get_parameter(n), rtol=1e-5, atol=1e-6)
