"The importance-weighted kernels of entrenar.cuda_weighted against entrenar's CPU quantizer (= llama-quantize --imatrix), byte for byte"
import warnings
import numpy as np, pytest
import fastcore.test as ft
from conftest import NVCC, differing_blocks, sm90_kernels
from entrenar.backend import to_device, to_numpy, is_device_array
from entrenar.cuda_weighted import quantize_weighted_rows, WEIGHTED_KERNELS, WEIGHTED_FORMATS
from entrenar.errors import QuantizeError
from entrenar.quantize import get_block_format

FORMATS = ['q4_k', 'q6_k', 'q5_k', 'q3_k', 'q2_k', 'q4_0', 'q4_1', 'q5_0', 'q5_1']

def cpu(name, x, imatrix):
    "entrenar's CPU bytes (equal to ggml's quantize_row_qX_impl with quant_weights)"
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return np.asarray(get_block_format(name).quantize(np.ascontiguousarray(x, np.float32), imatrix=imatrix))

def check(name, x, imatrix, **kw):
    x, imatrix = np.ascontiguousarray(x, np.float32), np.ascontiguousarray(imatrix, np.float32)
    got, want = quantize_weighted_rows(name, x, imatrix, **kw), cpu(name, x, imatrix)
    ft.test_eq(got.dtype, np.uint8)
    ft.test_eq(got.shape, want.shape)
    size = WEIGHTED_FORMATS[name][0]
    bad = differing_blocks(got, want, size)
    assert len(bad) == 0, f"{name}: blocks {bad[:10].tolist()} of {got.size // size} differ from the CPU's bytes"

def spread_imatrix(rng, n, zeros=True):
    "Importances over seven orders of magnitude, some columns zero"
    w = 10 ** rng.uniform(-4, 3, n)
    if zeros: w[rng.random(n) < 0.1] = 0
    return w.astype(np.float32)

def edge_rows(rng, n=512):
    "Named rows at the edges of ggml's arithmetic (each `n` values)"
    i = np.arange(n)
    one = np.zeros(n); one[37] = 2.5
    spike = rng.standard_normal(n); spike[5] = 1e30
    return {'zeros': np.zeros(n), 'single nonzero': one, 'constant': np.full(n, 0.75),
            'negative constant': np.full(n, -3.0), 'all negative': -abs(rng.standard_normal(n)) - 0.1,
            'all positive': abs(rng.standard_normal(n)) + 5, 'subnormals': rng.standard_normal(n) * 1e-40,
            'tiny 1e-15': rng.standard_normal(n) * 1e-15, 'tiny 1e-20': rng.standard_normal(n) * 1e-20,
            'zero blocks of 32': np.where((i // 32) % 3 == 1, 0, rng.standard_normal(n)),
            'zero super-block': np.where(i < 256, 0, rng.standard_normal(n)),
            'huge 1e8': rng.standard_normal(n) * 1e8, 'huge 1e20': rng.standard_normal(n) * 1e20,
            'huge 1e37': rng.standard_normal(n) * 1e37, 'one spike 1e30': spike,
            'student-t 1': rng.standard_t(1, n), 'ramp': np.linspace(-1, 1, n)}

@pytest.mark.parametrize('name', FORMATS)
@pytest.mark.parametrize('shape', [(8, 512), (3, 4096)])
def test_normal_rows(name, shape):
    rng = np.random.default_rng(shape[1])
    check(name, rng.standard_normal(shape), spread_imatrix(rng, shape[1]))

@pytest.mark.parametrize('name', FORMATS)
@pytest.mark.parametrize('scale', [1e-3, 1e3])
def test_scaled_rows_and_plain_importance(name, scale):
    rng = np.random.default_rng(int(scale * 1000) % 97)
    check(name, rng.standard_normal((4, 1024)) * scale, rng.uniform(0.5, 2, 1024))

@pytest.mark.parametrize('name', FORMATS)
def test_heavy_tails_on_many_threads(name):
    rng = np.random.default_rng(3)
    check(name, rng.standard_t(3, (20, 768)), spread_imatrix(rng, 768), grid=(3, 5))

@pytest.mark.parametrize('name', FORMATS)
def test_edge_rows_on_a_grid(name):
    "Every edge row in one tensor, between ordinary rows, split over 3 blocks of 5 threads"
    rng = np.random.default_rng(11)
    rows = [r for e in edge_rows(rng).values() for r in (e, rng.standard_normal(512))]
    check(name, np.stack(rows), spread_imatrix(rng, 512), grid=(3, 5))

@pytest.mark.parametrize('name', FORMATS)
@pytest.mark.parametrize('case', ['all zero', 'one column', 'huge', 'tiny', 'subnormal'])
def test_edge_importances(name, case):
    rng = np.random.default_rng(5)
    imatrix = {'all zero': np.zeros(512), 'one column': np.where(np.arange(512) == 100, 1.0, 0),
               'huge': 10 ** rng.uniform(20, 30, 512), 'tiny': 10 ** rng.uniform(-30, -20, 512),
               'subnormal': np.full(512, 1e-42)}[case]
    check(name, rng.standard_normal((6, 512)), imatrix)

def test_shapes_and_empty():
    x = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)
    w = np.ones(512, np.float32)
    for name, (size, block, _) in WEIGHTED_FORMATS.items():
        ft.test_eq(quantize_weighted_rows(name, x, w).shape, (4, 512 // block * size))
        ft.test_eq(quantize_weighted_rows(name, x[:0], w).shape, (0, 512 // block * size))
        ft.test_eq(quantize_weighted_rows(name.upper(), x, w), quantize_weighted_rows(name, x, w))

def test_bad_input_names_the_format():
    x, w = np.zeros((2, 256), np.float32), np.ones(256, np.float32)
    with ft.ExceptionExpected(QuantizeError, regex="'q8_0'"): quantize_weighted_rows('q8_0', x, w)
    with ft.ExceptionExpected(QuantizeError, regex='q4_k.*x must be float32.*float64'): quantize_weighted_rows('q4_k', x.astype(np.float64), w)
    with ft.ExceptionExpected(QuantizeError, regex='q6_k.*imatrix must be float32'): quantize_weighted_rows('q6_k', x, w.astype(np.float16))
    with ft.ExceptionExpected(QuantizeError, regex='q5_k.*not whole blocks of 256'): quantize_weighted_rows('q5_k', np.zeros((2, 288), np.float32), np.ones(288, np.float32))
    with ft.ExceptionExpected(QuantizeError, regex='q4_0.*not whole blocks of 32'): quantize_weighted_rows('q4_0', np.zeros((2, 48), np.float32), np.ones(48, np.float32))
    with ft.ExceptionExpected(QuantizeError, regex='q3_k.*importance vector of 128 values for rows of 256'): quantize_weighted_rows('q3_k', x, w[:128])
    with ft.ExceptionExpected(QuantizeError, regex=r'q2_k.*\(rows, columns\)'): quantize_weighted_rows('q2_k', x.reshape(-1), w)

@pytest.mark.skipif(NVCC is None, reason="needs CUDA's nvcc")
def test_gpu_compile_sm90_without_spills():
    kernels = sm90_kernels(WEIGHTED_KERNELS.source)
    want = {'sum_squares', 'importance_weights', 'q6_k_pack'} | {f'{n}_weighted' for n in ('q4_0', 'q4_1', 'q5_0', 'q5_1')}
    want |= {f'{n}_weighted_search' for n in ('q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k')}
    want |= {f'{n}_weighted_pack' for n in ('q2_k', 'q3_k', 'q4_k', 'q5_k')}
    assert want <= set(kernels), want - set(kernels)

@pytest.mark.gpu
@pytest.mark.parametrize('name', FORMATS)
def test_gpu_bytes_equal_cpu(name):
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.standard_normal((64, 4096)) * s for s in (1e-3, 1.0, 1e3)] +
                       [rng.standard_t(3, (64, 4096))]).astype(np.float32)
    w = spread_imatrix(rng, 4096)
    got = quantize_weighted_rows(name, to_device(x, 'cupy'), to_device(w, 'cupy'))
    assert is_device_array(got)
    want = cpu(name, x, w)
    ft.test_eq(got.shape, want.shape)
    bad = differing_blocks(got, want, WEIGHTED_FORMATS[name][0])
    assert len(bad) == 0, f"{name}: {len(bad)} blocks differ on the GPU, first {bad[:10].tolist()}"

def _blocks_differ(name, g, e):
    size = get_block_format(name).type_size
    return (g.reshape(-1, size) != e.reshape(-1, size)).any(1)

def _nan_scaled(name, r):
    "Blocks whose float16 scale is a NaN (a GPU's NaN is canonical where x86 keeps another payload, so those bytes may differ)"
    f = get_block_format(name)
    b, out = r.reshape(-1, f.type_size), None
    for o in f.f16_fields:
        h = np.ascontiguousarray(b[:, o:o + 2]).view(np.uint16)[:, 0]
        nan = ((h & 0x7c00) == 0x7c00) & ((h & 0x3ff) != 0)
        out = nan if out is None else out | nan
    return out


@pytest.mark.gpu
@pytest.mark.parametrize('name', FORMATS)
def test_gpu_edge_rows(name):
    rng = np.random.default_rng(11)
    edges = edge_rows(rng)
    x, w = np.stack(list(edges.values())).astype(np.float32), spread_imatrix(rng, 512)
    host, want = to_numpy(quantize_weighted_rows(name, to_device(x, 'cupy'), to_device(w, 'cupy'))), cpu(name, x, w)
    bad = [case for case, g, e in zip(edges, host, want) if (_blocks_differ(name, g, e) & ~(_nan_scaled(name, g) & _nan_scaled(name, e))).any()]
    assert not bad, f"{name}: GPU bytes differ from the CPU's for {bad}"

@pytest.mark.gpu
def test_gpu_refuses_bad_input():
    x = to_device(np.zeros((2, 256), np.float32), 'cupy')
    with ft.ExceptionExpected(QuantizeError, regex='q4_k.*same device'): quantize_weighted_rows('q4_k', x, np.ones(256, np.float32))
    with ft.ExceptionExpected(QuantizeError, regex='q6_k.*float32'): quantize_weighted_rows('q6_k', x.astype('float64'), to_device(np.ones(256, np.float32), 'cupy'))
