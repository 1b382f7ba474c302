"Block formats against gguf.quants on random shapes and values (hypothesis), memory of the streaming driver, and the GPU"
import os, subprocess, sys, textwrap
import numpy as np
import pytest
import fastcore.test as ft
import gguf.quants
from gguf import GGMLQuantizationType
from hypothesis import given, settings, strategies as st, HealthCheck
from entrenar.quantize import BLOCK_FORMATS, FLOAT32_TINY, quantize_tensor, linear_quantize, linear_dequantize

def _flushed(x, fmt):
    b = x.reshape(-1, 32)
    with np.errstate(over='ignore', invalid='ignore'):
        spread = abs(b).max(1) if fmt.symmetric else b.max(1) - b.min(1)
    div = {'q4_0': 8, 'q5_0': 16, 'q8_0': 127, 'q4_1': 15, 'q5_1': 31}[fmt.name]
    return (spread / np.float32(div) < FLOAT32_TINY) & (spread > 0)

def _check_exact(x):
    for name, fmt in BLOCK_FORMATS.items():
        if fmt.block_size != 32: continue   # gguf-py quantizes the 32-value formats; the K-quants meet ggml's C in test_kquants_ggml.py
        t = getattr(GGMLQuantizationType, name.upper())
        with np.errstate(all='ignore'): ref = gguf.quants.quantize(x, t).reshape(-1, fmt.type_size)
        mine = fmt.quantize(x).reshape(-1, fmt.type_size)
        keep = ~_flushed(x, fmt)
        np.testing.assert_array_equal(mine[keep], ref[keep], err_msg=name)
        np.testing.assert_array_equal(mine[~keep, :2], ref[~keep, :2], err_msg=name)

scales = st.sampled_from([1e-30, 1e-6, 1e-2, 1., 3., 100., 1e4])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(1, 6), blocks=st.integers(1, 4), seed=st.integers(0, 2**32 - 1), scale=scales,
       kind=st.sampled_from(['normal', 't1', 'uniform', 'ints', 'halves', 'f16']))
def test_bit_exact_random(rows, blocks, seed, scale, kind):
    rng = np.random.default_rng(seed)
    shape = (rows, blocks * 32)
    x = dict(normal=lambda: rng.standard_normal(shape), t1=lambda: rng.standard_t(1, shape),
             uniform=lambda: rng.uniform(-1, 1, shape), ints=lambda: rng.integers(-8, 9, shape).astype(float),
             halves=lambda: rng.integers(-16, 17, shape) / 2, f16=lambda: rng.standard_normal(shape).astype(np.float16))[kind]()
    _check_exact((x * scale).astype(np.float32))

@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=32, max_size=32))
def test_bit_exact_any_block(values):
    _check_exact(np.array(values, np.float32)[None])

def test_ties_after_scaling():
    # values whose scaled form lands exactly on .5 for Q8_0 (d = 1 when max|x| = 127) and on the Q4_0 boundaries
    x = np.r_[np.arange(-15.5, 16, 1.0)[:31], 127.].astype(np.float32)
    _check_exact(np.stack([x, -x, x / 8, np.r_[np.arange(31) * 0.5 - 7.5, -8.].astype(np.float32)]))

@pytest.mark.parametrize('bits', [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize('symmetric', [True, False])
def test_linear_error_bound(bits, symmetric):
    rng = np.random.default_rng(bits)
    x = (rng.standard_normal((16, 96)) * rng.uniform(0.01, 10, (16, 1)) + (0 if symmetric else 5)).astype(np.float32)
    for per_channel in (True, False):
        codes, scale, zp = linear_quantize(x, bits, symmetric, per_channel)
        assert codes.max() < 2 ** bits
        y = linear_dequantize(codes, scale, zp, bits, per_channel)
        rows = x.reshape(16 if per_channel else 1, -1); err = abs(y.reshape(rows.shape) - rows)
        assert (err <= scale[:, None] * (0.5 if symmetric else 1.0) * (1 + 1e-5)).all()

def test_streaming_peak_memory(tmp_path):
    "Quantizing a 256 MB model from disk allocates for a few tensors, not the model"
    script = textwrap.dedent(f'''
        import numpy as np, tracemalloc
        from entrenar.io import ModelWriter, TensorSpec, ModelMetadata
        from entrenar.quantize import quantize_model
        specs = [TensorSpec(f"layer.{{i}}.weight", np.dtype(np.float32), (1024, 4096)) for i in range(16)]
        with ModelWriter("{tmp_path}/big.safetensors", specs, ModelMetadata("big", "test")) as w:
            for i, s in enumerate(specs): w.write(s.name, np.full(s.shape, i + 1, np.float32))
        tracemalloc.start()   # numpy's allocations, not the mapped input file (the page cache's business)
        quantize_model("{tmp_path}/big.safetensors", "{tmp_path}/big.{{ext}}", bits=4, report=False)
        print(tracemalloc.get_traced_memory()[1] / 2**20)
    ''')
    for ext in ('safetensors', 'gguf', 'json'):
        r = subprocess.run([sys.executable, '-c', script.replace('{ext}', ext)], capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, r.stderr
        grew_mb = float(r.stdout.split()[-1])
        assert grew_mb < 64, (ext, grew_mb)   # a 16 MB tensor and its temporaries; the model is 256 MB

@pytest.mark.gpu
def test_gpu_bytes_equal_cpu():
    from entrenar.backend import to_device, to_numpy
    rng = np.random.default_rng(0)
    x = rng.standard_t(3, (1024, 2048)).astype(np.float32)
    x[0, :32] = 0; x[1, :2] = [3, -3]; x[2, :32] = 0.5
    w = np.exp(rng.standard_normal(2048)).astype(np.float32)   # an importance vector: ggml's weighted searches
    for fmt in BLOCK_FORMATS.values():
        ft.test_eq(to_numpy(fmt.quantize(to_device(x, 'cupy'))), fmt.quantize(x))
        ft.test_eq(to_numpy(fmt.quantize(to_device(x[:64], 'cupy'), to_device(w, 'cupy'))), fmt.quantize(x[:64], w))
        p = fmt.quantize(x)
        ft.test_eq(to_numpy(fmt.dequantize(to_device(p, 'cupy'))), fmt.dequantize(p))
    for s in ('int8_sym_channel', 'int4_asym_channel', 'int3_sym_tensor'):
        g, c = quantize_tensor(to_device(x, 'cupy'), s), quantize_tensor(x, s)
        ft.test_eq(to_numpy(g.data), c.data); ft.test_eq(to_numpy(g.scale), c.scale)
