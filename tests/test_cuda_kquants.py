"The K-quant kernels of entrenar.cuda_kquants against entrenar's CPU K-quants (= ggml), byte for byte"
import warnings
import numpy as np, pytest
import fastcore.test as ft
from conftest import NVCC, differing_blocks, sm90_kernels
from entrenar.backend import to_device, to_numpy, is_device_array
from entrenar.cuda_kquants import quantize_kquant, KQUANT_KERNELS, KQUANT_FORMATS
from entrenar.errors import QuantizeError
from entrenar.quantize import get_block_format

FORMATS = ['q4_k', 'q6_k', 'q5_k', 'q3_k', 'q2_k']

def cpu(name, x):
    "entrenar's CPU bytes (numba loops, equal to ggml's quantize_row_qX_K_ref)"
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        return np.asarray(get_block_format(name).quantize(np.ascontiguousarray(x, np.float32).reshape(-1, 256)))

def check(name, x, **kw):
    got, want = quantize_kquant(name, x, **kw), cpu(name, x)
    ft.test_eq(got.dtype, np.uint8)
    ft.test_eq(got.shape, want.shape)
    bad = differing_blocks(got, want, want.shape[1])
    assert len(bad) == 0, f"{name}: super-blocks {bad[:10].tolist()} differ from the CPU's bytes"

def edge_blocks():
    "Named super-blocks at the edges of ggml's arithmetic"
    rng, i = np.random.default_rng(7), np.arange(256)
    one = np.zeros(256); one[37] = 2.5
    neg_one = np.zeros(256); neg_one[200] = -1e-3
    near_eps = rng.standard_normal(256) * np.repeat(np.geomspace(2e-16, 4e-15, 16), 16)   # sub-blocks around GROUP_MAX_EPS
    huge = rng.standard_normal(256) * 1e8                                                 # d overflows float16
    spike = rng.standard_normal(256); spike[5] = 1e30
    return {'zeros': np.zeros(256), 'single nonzero': one, 'single negative': neg_one, 'constant': np.full(256, 0.75),
            'negative constant': np.full(256, -3.0), 'all negative': -abs(rng.standard_normal(256)) - 0.1,
            'all positive': abs(rng.standard_normal(256)) + 5, 'subnormals': rng.standard_normal(256) * 1e-40,
            'one subnormal level': np.full(256, 1e-44), 'tiny 1e-15': rng.standard_normal(256) * 1e-15,
            'tiny 3e-15': rng.standard_normal(256) * 3e-15, 'near eps': near_eps,
            'sub-block of 32 zero': np.where(i // 32 == 1, 0, rng.standard_normal(256)),
            'sub-block of 16 zero': np.where(i // 16 == 3, 0, rng.standard_normal(256)),
            'huge 1e8': huge, 'huge 1e20': rng.standard_normal(256) * 1e20, 'huge 1e37': rng.standard_normal(256) * 1e37,
            'near float32 max': rng.uniform(-3e38, 3e38, 256), 'one spike 1e30': spike,
            'student-t 1': rng.standard_t(1, 256), 'ramp': np.linspace(-1, 1, 256)}

EDGES = edge_blocks()

@pytest.mark.parametrize('name', FORMATS)
@pytest.mark.parametrize('scale', [1e-3, 1.0, 1e3])
def test_normal_data(name, scale):
    x = (np.random.default_rng(int(scale * 1000) % 97).standard_normal(300 * 256) * scale).astype(np.float32)
    check(name, x)

@pytest.mark.parametrize('name', FORMATS)
def test_heavy_tails_on_many_threads(name):
    x = np.random.default_rng(3).standard_t(3, (200, 256)).astype(np.float32)
    check(name, x, grid=(3, 5))

@pytest.mark.parametrize('name', FORMATS)
@pytest.mark.parametrize('case', list(EDGES))
def test_edge_super_blocks(name, case):
    x = EDGES[case].astype(np.float32)
    check(name, x)

@pytest.mark.parametrize('name', FORMATS)
def test_edges_together_on_a_grid(name):
    "All edge super-blocks in one tensor, split over 3 blocks of 5 threads, between ordinary ones"
    rng = np.random.default_rng(11)
    x = np.stack([b for e in EDGES.values() for b in (e, rng.standard_normal(256))]).astype(np.float32)
    check(name, x, grid=(3, 5))

def test_shapes_and_empty():
    x = np.random.default_rng(0).standard_normal((4, 512)).astype(np.float32)
    for name, (size, _) in KQUANT_FORMATS.items():
        ft.test_eq(quantize_kquant(name, x).shape, (8, size))
        ft.test_eq(quantize_kquant(name, x), quantize_kquant(name, x.reshape(-1)))
        ft.test_eq(quantize_kquant(name, np.zeros(0, np.float32)).shape, (0, size))

def test_bad_input_names_the_format():
    with ft.ExceptionExpected(QuantizeError, regex='q5_k.*not whole super-blocks'): quantize_kquant('q5_k', np.zeros(100, np.float32))
    with ft.ExceptionExpected(QuantizeError, regex='q3_k.*float32.*float64'): quantize_kquant('q3_k', np.zeros(256))
    with ft.ExceptionExpected(QuantizeError, regex='q2_k.*float32.*float16'): quantize_kquant('q2_k', np.zeros(256, np.float16))
    with ft.ExceptionExpected(QuantizeError, regex="'q8_k'"): quantize_kquant('q8_k', np.zeros(256, np.float32))
    ft.test_eq(quantize_kquant('Q4_K', np.ones(256, np.float32)), quantize_kquant('q4_k', np.ones(256, np.float32)))

@pytest.mark.skipif(NVCC is None, reason="needs CUDA's nvcc")
def test_gpu_compile_sm90_without_spills():
    kernels = sm90_kernels(KQUANT_KERNELS.source)
    ft.test_eq(sorted(kernels), sorted(f'{n}_{k}' for n in KQUANT_FORMATS for k in ('search', 'pack')))

@pytest.mark.gpu
@pytest.mark.parametrize('name', FORMATS)
def test_gpu_bytes_equal_cpu(name):
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.standard_normal((3000, 256)) * s for s in (1e-3, 1.0, 1e3)] +
                       [rng.standard_t(3, (3000, 256))]).astype(np.float32)
    got = quantize_kquant(name, to_device(x, 'cupy'))
    assert is_device_array(got)
    ft.test_eq(got.shape, (len(x), KQUANT_FORMATS[name][0]))
    bad = differing_blocks(got, cpu(name, x), KQUANT_FORMATS[name][0])
    assert len(bad) == 0, f"{name}: {len(bad)} super-blocks differ on the GPU, first {bad[:10].tolist()}"

@pytest.mark.gpu
@pytest.mark.parametrize('name', FORMATS)
def test_gpu_edge_super_blocks(name):
    x = np.stack(list(EDGES.values())).astype(np.float32)
    host = to_numpy(quantize_kquant(name, to_device(x, 'cupy')))
    want = cpu(name, x)
    bad = [case for case, g, w in zip(EDGES, host, want) if (g != w).any()]
    assert not bad, f"{name}: GPU bytes differ from the CPU's for {bad}"

@pytest.mark.gpu
def test_gpu_refuses_bad_input():
    with ft.ExceptionExpected(QuantizeError, regex='q4_k.*not whole super-blocks'): quantize_kquant('q4_k', to_device(np.zeros(300, np.float32), 'cupy'))
    with ft.ExceptionExpected(QuantizeError, regex='q6_k.*float64'): quantize_kquant('q6_k', to_device(np.zeros(256), 'cupy'))
