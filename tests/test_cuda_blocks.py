"entrenar.cuda_blocks: the block kernels give entrenar.quantize's bytes and bits (on the CPU through Kernels, on a GPU through CuPy)"
import subprocess, sys
import numpy as np, pytest
import fastcore.test as ft
from conftest import NVCC, sm90_kernels
from entrenar.cuda_blocks import BLOCK_SHAPES, QUANTIZE_FORMATS, BLOCK_KERNELS, quantize_blocks, dequantize_blocks
from entrenar.quantize import BLOCK_FORMATS, get_block_format
from entrenar.errors import QuantizeError

K_FORMATS = ('q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k')
ALL_FORMATS = QUANTIZE_FORMATS + K_FORMATS

def cpu_quantize(name, x):
    with np.errstate(all='ignore'): return get_block_format(name).quantize(np.asarray(x, np.float32).reshape(-1, 32))

def cpu_dequantize(name, data):
    with np.errstate(all='ignore'): return get_block_format(name).dequantize(data).reshape(-1)

def bits(y): return np.ascontiguousarray(y).view(np.uint32)

def edge_blocks(finite=False):
    "Blocks of 32 where the corners of each format's arithmetic lie"
    rng = np.random.default_rng(7)
    b = {'zeros': np.zeros(32), 'outlier': np.r_[np.full(31, 0.01), 1e4], 'constant': np.full(32, 3.25),
         'negative constant': np.full(32, -2.5),
         'max negative': np.r_[rng.uniform(-1, 1, 31), -9.0],                 # the value of largest magnitude is negative
         'tie +a first': np.r_[5.0, rng.uniform(-1, 1, 30), -5.0],            # +a and -a: the first one sets the sign
         'tie -a first': np.r_[-5.0, rng.uniform(-1, 1, 30), 5.0],
         'subnormal': rng.uniform(-1, 1, 32) * 1e-40, 'smallest subnormal': np.r_[np.full(16, 1.4e-45), np.full(16, -1.4e-45)],
         'tiny normal': rng.uniform(-1, 1, 32) * 1e-37,
         'f16 scale overflow': rng.normal(size=32) * 1e7,                    # d = amax / 127 > 65504
         'near float32 max': rng.uniform(-1, 1, 32) * 3.4e38,                 # (max - min) overflows float32
         'float32 max': np.r_[np.full(16, 3.4028235e38), np.full(16, -3.4028235e38)],
         'negative zeros': np.full(32, -0.0), 'mixed zeros': np.where(rng.random(32) < 0.5, -0.0, 0.0),
         'zeros and positives': np.where(rng.random(32) < 0.5, -0.0, rng.uniform(0, 1, 32)),
         '+0 first, -0 last': np.r_[0.0, np.full(30, -0.0), -0.0] * np.r_[1, np.ones(31)], '-0 first, +0 last': np.r_[-0.0, np.full(30, 0.0), 0.0],
         '-0 in lane 3 only': np.where(np.arange(32) % 4 == 3, -0.0, 0.0), '+0 in lane 0 only': np.where(np.arange(32) % 4 == 0, 0.0, -0.0),
         'exact halves': np.arange(-16, 16) + 0.5, 'integers': np.arange(-16, 16.0)}
    if not finite:
        b.update({'inf': np.r_[np.inf, rng.normal(size=31)], '-inf': np.r_[rng.normal(size=31), -np.inf],
                  'both infs': np.r_[np.inf, np.zeros(30), -np.inf], 'all inf': np.full(32, np.inf),
                  'nan': np.r_[rng.normal(size=15), np.nan, rng.normal(size=16)]})
    for i in range(8):   # which zero is the minimum (and, all zero, the sign of d) follows numpy's order of comparisons
        b[f'mixed zeros {i}'] = np.where(rng.random(32) < 0.5, -0.0, 0.0)
        b[f'zeros and positives {i}'] = np.where(rng.random(32) < 0.3, np.where(rng.random(32) < 0.5, -0.0, 0.0), rng.uniform(0, 1, 32))
    return {k: np.asarray(v, np.float32) for k, v in b.items()}

def random_blocks(name, n, rng, finite=False):
    "Random bytes for `n` blocks of `name`; with `finite`, float16 fields below infinity (exponent 0x1f cleared)"
    block, size = BLOCK_SHAPES[name]
    data = rng.integers(0, 256, (n, size), dtype=np.uint8)
    if finite:
        for off in BLOCK_FORMATS[name].f16_fields: data[:, off + 1] &= np.uint8(0xbf)   # clear an exponent bit: never 0x1f
    return data

def test_constants_match_quantize():
    ft.test_eq(BLOCK_SHAPES, {k: (f.block_size, f.type_size) for k, f in BLOCK_FORMATS.items()})
    ft.test_eq(set(QUANTIZE_FORMATS), {k for k, f in BLOCK_FORMATS.items() if f.block_size == 32})

def test_import_does_not_load_quantize():
    code = "import sys, entrenar.cuda_blocks; print(sorted(m for m in sys.modules if m.startswith('entrenar.')))"
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, check=True).stdout
    ft.test_eq(eval(out), ['entrenar.backend', 'entrenar.cuda', 'entrenar.cuda_blocks', 'entrenar.errors'])

@pytest.mark.parametrize('name', QUANTIZE_FORMATS)
@pytest.mark.parametrize('scale', [1e-3, 1.0, 1e3])
def test_quantize_random_normal(name, scale):
    x = (np.random.default_rng([QUANTIZE_FORMATS.index(name), int(np.log10(scale)) + 3]).normal(size=65536) * scale).astype(np.float32)
    ft.test_eq(quantize_blocks(name, x), cpu_quantize(name, x))

@pytest.mark.parametrize('name', QUANTIZE_FORMATS)
def test_quantize_edge_blocks(name):
    blocks = edge_blocks()
    for what, b in blocks.items():
        got = quantize_blocks(name, b)
        assert got.tobytes() == cpu_quantize(name, b).tobytes(), f"{name}, {what}: {got} != {cpu_quantize(name, b)}"
    x = np.concatenate(list(blocks.values()))
    ft.test_eq(quantize_blocks(name, x, grid=(3, 5)), cpu_quantize(name, x))   # 15 emulated threads share the blocks

@pytest.mark.parametrize('name', QUANTIZE_FORMATS)
def test_quantize_grid_and_layouts(name):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(37, 64)).astype(np.float32)
    ref = cpu_quantize(name, x)
    ft.test_eq(quantize_blocks(name, x, grid=(3, 5)), ref)                       # a 2-D array: its values in order
    ft.test_eq(quantize_blocks(name, x, grid=(1, 64)), ref)                      # more threads than blocks
    y = rng.normal(size=37 * 64 + 1).astype(np.float32)
    ft.test_eq(quantize_blocks(name, y[1:]), cpu_quantize(name, y[1:]))           # 4 bytes off a 16-byte boundary
    ft.test_eq(quantize_blocks(name, x.T.copy().T), ref)                          # a Fortran-ordered array is read in C order
    ft.test_eq(quantize_blocks(name, np.zeros(0, np.float32)).shape, (0, BLOCK_SHAPES[name][1]))

@pytest.mark.parametrize('name', ALL_FORMATS)
def test_dequantize_random_bytes(name):
    "Random bytes reach every code; their float16 fields include infinities and NaNs, whose bits match too on the CPU"
    data = random_blocks(name, 4096 if name in QUANTIZE_FORMATS else 512, np.random.default_rng(11))
    ref = cpu_dequantize(name, data)
    ft.test_eq(bits(dequantize_blocks(name, data)), bits(ref))
    ft.test_eq(bits(dequantize_blocks(name, data[:101], grid=(3, 5))), bits(ref[:101 * BLOCK_SHAPES[name][0]]))
    odd = np.empty(data.size + 1, np.uint8)[1:]; odd[...] = data.reshape(-1)      # one byte off alignment
    ft.test_eq(bits(dequantize_blocks(name, odd.reshape(data.shape))), bits(ref))

@pytest.mark.parametrize('name', QUANTIZE_FORMATS)
def test_round_trip(name):
    x = np.concatenate([np.random.default_rng(5).normal(size=8192).astype(np.float32)] + list(edge_blocks(finite=True).values()))
    q = quantize_blocks(name, x)
    ft.test_eq(bits(dequantize_blocks(name, q)), bits(cpu_dequantize(name, q)))

@pytest.mark.parametrize('name', K_FORMATS)
def test_dequantize_k_quants_of_real_blocks(name):
    x = np.random.default_rng(9).normal(size=(16, 512)).astype(np.float32)
    q = get_block_format(name).quantize(x).reshape(-1, BLOCK_SHAPES[name][1])
    ft.test_eq(bits(dequantize_blocks(name, q)), bits(cpu_dequantize(name, q)))

def test_bad_input_names_the_format():
    x = np.zeros(64, np.float32)
    for name in QUANTIZE_FORMATS:
        with pytest.raises(QuantizeError, match=f'{name.upper()} needs a multiple of 32'): quantize_blocks(name, x[:48])
        with pytest.raises(QuantizeError, match=f'{name.upper()} kernels quantize float32'): quantize_blocks(name, x.astype(np.float16))
    with pytest.raises(QuantizeError, match="no block kernel for format 'q6_k'"): quantize_blocks('q6_k', x)
    with pytest.raises(QuantizeError, match="no block kernel for format 'q7_0'"): dequantize_blocks('q7_0', x.view(np.uint8))
    for name, (block, size) in BLOCK_SHAPES.items():
        with pytest.raises(QuantizeError, match=f'{name.upper()} blocks are {size} bytes'): dequantize_blocks(name, np.zeros(size + 1, np.uint8))
        with pytest.raises(QuantizeError, match=f'{name.upper()} blocks are uint8'): dequantize_blocks(name, np.zeros(size, np.int8))

@pytest.mark.skipif(NVCC is None, reason="needs CUDA's nvcc")
def test_gpu_compile_sm_90():
    kernels = sm90_kernels(BLOCK_KERNELS.source)   # no spills, no stack frame
    want = [f'dequantize_{n}' for n in ALL_FORMATS] + [f'quantize_{n}' for n in ALL_FORMATS if n in QUANTIZE_FORMATS]
    ft.test_eq(len(kernels), 15); ft.test_eq(sorted(kernels), sorted(want))

# ---- on a GPU: CuPy arrays run the same source through NVRTC and must give the CPU's bytes

@pytest.mark.gpu
@pytest.mark.parametrize('name', QUANTIZE_FORMATS)
def test_gpu_quantize_equals_cpu(name):
    import cupy as cp
    rng = np.random.default_rng(21)
    for x in [(rng.normal(size=1 << 20) * s).astype(np.float32) for s in (1e-3, 1.0, 1e3)] + [np.concatenate(list(edge_blocks(finite=True).values()))]:
        got = quantize_blocks(name, cp.asarray(x))
        assert isinstance(got, cp.ndarray) and got.shape == (x.size // 32, BLOCK_SHAPES[name][1])
        ft.test_eq(cp.asnumpy(got), cpu_quantize(name, x))
    y = cp.asarray(rng.normal(size=4097).astype(np.float32))[1:]                  # off a 16-byte boundary
    ft.test_eq(cp.asnumpy(quantize_blocks(name, y)), cpu_quantize(name, cp.asnumpy(y)))

@pytest.mark.gpu
@pytest.mark.parametrize('name', ALL_FORMATS)
def test_gpu_dequantize_equals_cpu(name):
    import cupy as cp
    rng = np.random.default_rng(22)
    data = random_blocks(name, 1 << 14, rng, finite=True)                          # finite scales: every result is a number
    got = dequantize_blocks(name, cp.asarray(data))
    assert isinstance(got, cp.ndarray) and got.dtype == np.float32
    ft.test_eq(bits(cp.asnumpy(got)), bits(cpu_dequantize(name, data)))
    raw = random_blocks(name, 4096, rng)                                           # any bytes: the GPU's NaNs have their own bits
    g, c = cp.asnumpy(dequantize_blocks(name, cp.asarray(raw))), cpu_dequantize(name, raw)
    ft.test_eq(np.isnan(g), np.isnan(c))
    ft.test_eq(bits(g)[~np.isnan(c)], bits(c)[~np.isnan(c)])

@pytest.mark.gpu
@pytest.mark.parametrize('name', QUANTIZE_FORMATS)
def test_gpu_round_trip(name):
    import cupy as cp
    x = np.random.default_rng(23).normal(size=1 << 16).astype(np.float32)
    q = quantize_blocks(name, cp.asarray(x))
    ft.test_eq(bits(cp.asnumpy(dequantize_blocks(name, q))), bits(cpu_dequantize(name, cpu_quantize(name, x))))
