"The GPU streaming pipeline end to end: every test here needs CuPy and a CUDA GPU (they skip without one)"
import json, os
import ml_dtypes, numpy as np, pytest
import fastcore.test as ft
from conftest import MODELS
from entrenar.backend import get_backend, to_numpy, use_backend
from entrenar.errors import MergeError
from entrenar.io import Model, load_model, save_model
from entrenar.merge import merge_files
from entrenar.quantize import quantize_model
from entrenar.runner import Threads, executor

pytestmark = pytest.mark.gpu
BF16 = np.dtype(ml_dtypes.bfloat16)

def test_upload_download_16_bit():
    from entrenar.cuda import download, task_stream, upload
    x = np.random.default_rng(0).standard_normal(100_003).astype(np.float32)
    for dt in (BF16, np.dtype(np.float16)):
        h = x.astype(dt)
        with use_backend('cupy'), task_stream():
            d = upload(h)
            ft.test_eq(str(d.dtype), 'float32')
            ft.test_eq(to_numpy(d).view(np.uint32), h.astype(np.float32).view(np.uint32))
            back = download(d * np.float32(3), dt)
        ft.test_eq(back.dtype, dt)
        ft.test_eq(back.view(np.uint16), (h.astype(np.float32) * np.float32(3)).astype(dt).view(np.uint16))

def test_threads_run_on_the_callers_backend():
    with use_backend('cupy'):
        ft.test_eq(list(Threads(3).map(lambda g: get_backend(), range(6))), ['cupy'] * 6)
        with executor(1) as ex: assert ex.n >= 3, ex   # GPU_STREAMS tasks in flight
    with executor(1) as ex: ft.test_eq(ex.n, 1)

def _bf16_models(tmp_path, names=('', '-a', '-b', '-c')):
    out = []
    for k in names:
        m = load_model(MODELS / f'tiny-llama{k}')
        save_model(Model(m.metadata, {n: np.asarray(m.get_parameter(n)).astype(BF16) for n in m.names}), p := tmp_path / f'bf16{k}.safetensors')
        out.append(p)
    return out

def _max_ulp16(a, b):
    a, b = a.view(np.int16).astype(np.int32), b.view(np.int16).astype(np.int32)
    return int(np.abs(a - b).max())

@pytest.mark.parametrize('method,params', [('linear', {}), ('ties', dict(density=0.5)), ('dare_ties', dict(density=0.5)),
                                           ('task_arithmetic', {}), ('della', dict(density=0.5)), ('slerp', dict(t=0.4))])
def test_bf16_merge_on_the_gpu_equals_the_cpu(method, params, tmp_path):
    inputs = _bf16_models(tmp_path)[:2 if method == 'slerp' else 4]
    merge_files(inputs, tmp_path / 'cpu.safetensors', method, seed=1, **params)
    for workers in (1, 4):
        with use_backend('cupy'): merge_files(inputs, tmp_path / f'gpu{workers}.safetensors', method, seed=1, workers=workers, **params)
        cpu, gpu = load_model(tmp_path / 'cpu.safetensors'), load_model(tmp_path / f'gpu{workers}.safetensors')
        for n in cpu.names:
            a, b = np.asarray(cpu.get_parameter(n)), np.asarray(gpu.get_parameter(n))
            ft.test_eq(b.dtype, BF16)
            assert _max_ulp16(a, b) <= 1, (method, workers, n)   # float32 within an ulp, then rounded to bfloat16

@pytest.mark.parametrize('method', ['linear', 'ties', 'task_arithmetic'])
def test_float32_merge_within_one_ulp(method, tmp_path):
    inputs = [MODELS / f'tiny-llama{k}' for k in ('', '-a', '-b', '-c')]
    params = dict(density=0.3) if method == 'ties' else {}
    merge_files(inputs, tmp_path / 'cpu.safetensors', method, seed=1, **params)
    with use_backend('cupy'): merge_files(inputs, tmp_path / 'gpu.safetensors', method, seed=1, workers=3, **params)
    cpu, gpu = load_model(tmp_path / 'cpu.safetensors'), load_model(tmp_path / 'gpu.safetensors')
    for n in cpu.names: np.testing.assert_array_max_ulp(np.asarray(gpu.get_parameter(n)), np.asarray(cpu.get_parameter(n)), maxulp=1)

def test_nonfinite_input_is_named_on_the_gpu(tmp_path):
    a, b = _bf16_models(tmp_path, ('', '-a'))
    m = load_model(b)
    t = {n: np.asarray(m.get_parameter(n)).copy() for n in m.names}
    name = sorted(t)[3]; t[name].reshape(-1)[5] = np.nan
    save_model(Model(m.metadata, t), bad := tmp_path / 'nan.safetensors')
    with use_backend('cupy'), pytest.raises(MergeError) as e: merge_files([a, bad], tmp_path / 'out.safetensors', 'linear')
    assert 'nan.safetensors' in str(e.value) and name in str(e.value), str(e.value)
    assert not (tmp_path / 'out.safetensors').exists()

FORMATS = ['q8_0', 'q4_0', 'q5_0', 'q4_1', 'q5_1', 'q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k']

@pytest.mark.parametrize('fmt', FORMATS)
def test_quantized_files_are_the_same_bytes(fmt, tmp_path):
    rng = np.random.default_rng(1)
    t = {f'layers.{i}.w': (rng.standard_normal((256, 512)) * 10.0 ** (i - 2)).astype(np.float32) for i in range(4)}
    t['layers.0.b16'] = rng.standard_normal((64, 512)).astype(BF16)
    save_model(Model(None, t), src := tmp_path / 'm.safetensors')
    quantize_model(src, tmp_path / 'cpu.safetensors', format=fmt)
    with use_backend('cupy'): quantize_model(src, tmp_path / 'gpu.safetensors', format=fmt)
    assert (tmp_path / 'cpu.safetensors').read_bytes() == (tmp_path / 'gpu.safetensors').read_bytes()

@pytest.mark.parametrize('kind', ['q4_k_m', 'q8_0', 'q2_k', 'q6_k'])
def test_llama_gguf_on_the_gpu_is_the_same_file(kind, run_cli, tmp_path):
    src = MODELS / 'tiny-llama'
    outs = []
    for backend in ('numpy', 'cupy'):
        (out := tmp_path / backend / 'model.gguf').parent.mkdir()   # one file name: it becomes general.name
        r = run_cli('quantize', str(src), '--type', kind, '--output', str(out), env={'ENTRENAR_BACKEND': backend})
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]

@pytest.mark.parametrize('density', [0.2, 0.5, 1.0])
def test_ties_on_the_gpu_is_the_cpus_bits(density):
    from entrenar.backend import to_device
    from entrenar.merge import merge_tensors
    rng = np.random.default_rng(2)
    base = rng.standard_normal((1024, 768)).astype(np.float32)
    fts = [base + np.round(rng.normal(scale=0.01, size=base.shape) * 300).astype(np.float32) / 300 for _ in range(4)]   # many ties
    kw = dict(weight=[1, 0.5, 2, 1], density=density, name='layers.0.w')
    cpu = merge_tensors('ties', fts, base=base, **kw)
    gpu = merge_tensors('ties', [to_device(f, 'cupy') for f in fts], base=to_device(base, 'cupy'), **kw)
    ft.test_eq(to_numpy(gpu).view(np.uint32), cpu.view(np.uint32))

def test_kernels_keep_subnormals():
    "NVRTC flushes subnormals to zero where CuPy's RawModule compiles (-ftz=true); entrenar's kernels must not"
    import cupy as cp
    from entrenar.cuda import Kernels
    k = Kernels('extern "C" __global__ void m(const float *x, float *y, i64 n) { GRID_STRIDE(i, n) y[i] = fabsf(x[i]) * 1.0f; }')
    x = np.array([1e-40, -1.4e-45, -3e-39], np.float32)
    y = cp.empty(3, np.float32)
    k('m', 3, cp.asarray(x), y, np.int64(3))
    ft.test_eq(cp.asnumpy(y).view(np.uint32), np.abs(x).view(np.uint32))

@pytest.mark.parametrize('method', ['ties', 'dare_ties'])
def test_one_pass_on_the_gpu_is_the_cpus_file(method, run_cli, tmp_path):
    "merge --type q4_k_m on the GPU: the merge's kernels, then the K-quant kernels, the CPU's bytes (TIES: same bits on both)"
    models = [MODELS / f'tiny-llama{k}' for k in ('', '-a', '-b', '-c')]
    lines = [f"merge_method: {method}", f"base_model: {models[0]}", "models:"]
    for m, w in zip(models[1:], (0.5, 0.3, 0.2)): lines += [f"  - model: {m}", f"    parameters: {{weight: {w}, density: 0.6}}"]
    (rec := tmp_path / 'recipe.yml').write_text('\n'.join(lines) + '\n')
    outs = {}
    for backend in ('numpy', 'cupy'):
        (out := tmp_path / backend / 'merged.gguf').parent.mkdir()   # one file name: it becomes general.name
        r = run_cli('merge', '--config', rec, '--type', 'q4_k_m', '--output', out, '--quiet', env={'ENTRENAR_BACKEND': backend})
        assert r.returncode == 0, r.stderr
        outs[backend] = out.read_bytes()
    assert outs['numpy'] == outs['cupy']

WEIGHTED = ['q4_0', 'q4_1', 'q5_0', 'q5_1', 'q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k']

@pytest.mark.parametrize('fmt', WEIGHTED)
def test_weighted_quantize_through_the_block_format(fmt):
    "BlockFormat.quantize with an importance vector on CuPy arrays: the weighted kernels, the CPU's bytes"
    import cupy as cp
    from entrenar.quantize import get_block_format
    rng = np.random.default_rng(4)
    x, w = rng.standard_t(4, (64, 1024)).astype(np.float32), (rng.random(1024) ** 3 * 50).astype(np.float32)
    f = get_block_format(fmt)
    ft.test_eq(cp.asnumpy(f.quantize(cp.asarray(x), cp.asarray(w))), f.quantize(x, w))

def test_gguf_with_an_importance_matrix_on_the_gpu(run_cli, tmp_path):
    from entrenar.gguf import GgufFile, to_gguf
    from entrenar.imatrix import Imatrix, write_imatrix
    f = GgufFile(to_gguf(MODELS / 'tiny-llama', tmp_path / 'shape.gguf', 'f32').path)
    rng = np.random.default_rng(3)
    sums = {n: rng.random((1, f.shape(n)[-1])).astype(np.float32) * 10 for n in f.tensors if n.startswith('blk.') and len(f.shape(n)) == 2}
    write_imatrix(tmp_path / 'im.gguf', Imatrix(sums, {n: np.array([100], np.float32) for n in sums}, ['test'], 4, 32))
    outs = []
    for backend in ('numpy', 'cupy'):
        (out := tmp_path / backend / 'model.gguf').parent.mkdir()
        r = run_cli('quantize', str(MODELS / 'tiny-llama'), '--type', 'q4_k_m', '--imatrix', str(tmp_path / 'im.gguf'), '--output', str(out),
                    env={'ENTRENAR_BACKEND': backend})
        assert r.returncode == 0, r.stderr
        outs.append(out.read_bytes())
    assert outs[0] == outs[1]
