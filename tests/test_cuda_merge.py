"entrenar.cuda_merge: the TIES and selection kernels give the CPU's bits (numba TIES, np.partition, merge.rank_mask); on a GPU, the CPU build's bits"
import numpy as np
import pytest
from fastcore.basics import AttrDict
from conftest import NVCC, sm90_kernels
from entrenar.cuda_merge import (ABS_SUM_COLUMNS, ABS_SUM_KERNELS, COMBINE_SOURCE, abs_sum, PCG_SOURCE, SELECT_SOURCE,
                                 TIES_SOURCE, combine, kth_value, radix_select, rank_mask, ties, ties_launch, uniform)
from entrenar.merge import _combine
from entrenar.merge import _ties_compiled
from entrenar.merge import rank_mask as merge_rank_mask

def cpu_ties(xs, base, density, weight, normalize, scale):
    return _ties_compiled(xs, base, AttrDict(density=density, weight=weight, normalize=normalize, rescale=False, **{'lambda': scale}))

def models(seed, m, n, levels=None, shape=None):
    "A base and m fine-tunes; with `levels`, task vectors of few distinct values (thresholds inside runs of ties)"
    rng = np.random.default_rng(seed)
    base = rng.normal(size=n).astype(np.float32)
    step = (rng.integers(-levels, levels + 1, (m, n)) * np.float32(0.01)) if levels else rng.normal(scale=0.01, size=(m, n))
    xs = [(base + s).astype(np.float32) for s in step]
    if shape: base, xs = base.reshape(shape), [x.reshape(shape) for x in xs]
    return xs, base

def bits(a):
    "float32 bits, every NaN made numpy's default one: a GPU's arithmetic gives the canonical NaN, x86 keeps payloads"
    a = np.array(a, np.float32)
    a[np.isnan(a)] = np.nan
    return a.view(np.uint32)

CASES = [  # m, n, levels, density, weight, normalize, scale, grid
    (2, 100_003, None, [0.1, 0.5], [1, 1], True, 1.0, (1, 1)),
    (3, 99_991, 2, [0.3, 0.3, 0.3], [1, 1, 1], True, 1.0, (3, 5)),
    (4, 100_000, 1, [0.1, 0.45, 0.9, 1.0], [0.3, 1.7, 1.0, 0.5], True, 0.7, (1, 1)),
    (3, 123_457, 3, [0.77, 1.0, 0.2], [1, 1, 1], False, 1.3, (3, 5)),
    (2, 65_537, None, [1.0, 1.0], [2, 0.5], False, 1.0, (1, 1)),
    (4, 100_001, 0, [0.2, 0.4, 0.6, 0.8], [1, 2, 3, 4], True, 1.0, (2, 7)),   # all task vectors zero: every magnitude ties
]

@pytest.mark.parametrize('m,n,levels,density,weight,normalize,scale,grid', CASES)
def test_ties_equals_numba(m, n, levels, density, weight, normalize, scale, grid):
    xs, base = models(n, m, n, levels)
    np.testing.assert_array_equal(bits(ties(xs, base, density, weight, normalize, scale, grid=grid)),
                                  bits(cpu_ties(xs, base, density, weight, normalize, scale)))

def test_ties_keeps_shape_and_large_tensor():
    "2**24 + 12345 elements: chunks of positions longer than 256, thresholds inside runs of ties"
    xs, base = models(7, 2, (1 << 24) + 12345, levels=2)
    got = ties(xs, base, [0.3, 0.6], [1, 1], True, 1.0)
    np.testing.assert_array_equal(bits(got), bits(cpu_ties(xs, base, [0.3, 0.6], [1, 1], True, 1.0)))
    xs, base = models(8, 3, 300 * 401, 1, shape=(300, 401))
    got = ties(xs, base, [0.5] * 3, [1] * 3, True, 1.0)
    assert got.shape == (300, 401)
    np.testing.assert_array_equal(bits(got), bits(cpu_ties(xs, base, [0.5] * 3, [1] * 3, True, 1.0)))

def test_ties_nan_flag():
    xs, base = models(9, 3, 10_000)
    xs[1][1234] = np.nan
    assert ties(xs, base, [0.5] * 3, [1] * 3, True, 1.0) is None
    assert cpu_ties(xs, base, [0.5] * 3, [1] * 3, True, 1.0) is None
    assert int(ties_launch(xs, base, [0.5] * 3, [1] * 3, True, 1.0)[1][0]) == 1
    density = [0.5, 1.0, 0.5]   # a task vector kept whole is not checked, on either side
    np.testing.assert_array_equal(bits(ties(xs, base, density, [1] * 3, True, 1.0)), bits(cpu_ties(xs, base, density, [1] * 3, True, 1.0)))

def values(seed, n):
    "float32 values with many ties, negatives, and -0.0 beside +0.0"
    rng = np.random.default_rng(seed)
    v = (rng.integers(-50, 51, n) * np.float32(0.25)).astype(np.float32) if seed % 2 else rng.normal(size=n).astype(np.float32)
    v[rng.random(n) < 0.1] = -0.0
    v[rng.random(n) < 0.1] = 0.0
    return v

@pytest.mark.parametrize('seed', range(4))
def test_kth_value_equals_partition(seed):
    v, rng = values(seed, 100_003), np.random.default_rng(seed)
    for r in [0, v.size - 1, *rng.integers(0, v.size, 6)]:
        assert kth_value(v, int(r), grid=(3, 5) if seed == 3 else (1, 1)) == np.partition(v, r)[r]
    zero = int(np.searchsorted(np.sort(v), 0))   # a rank among the zeros gives +0.0
    if np.sort(v)[zero] == 0: assert bits(kth_value(v, zero)) == 0

@pytest.mark.parametrize('seed', range(4))
def test_rank_mask_equals_merge(seed):
    v, rng = values(seed, 100_003), np.random.default_rng(seed)
    for s, e in [(0, 50_000), (50_000, v.size), (1, v.size - 1), *(sorted(rng.integers(0, v.size, 2)) for _ in range(4))]:
        np.testing.assert_array_equal(rank_mask(v, int(s), int(e), grid=(3, 5) if seed == 2 else (1, 1)), merge_rank_mask(v, int(s), int(e)))

def test_select_state_in_device_arrays():
    v = np.repeat(np.arange(1000, dtype=np.float32), 100)   # runs of 100 equal values: rank 50_537 is the 38th 505
    rank, state, found, nan = radix_select(1, [v], v, [(0, 50_537), (0, -1)])
    assert found[0] == 505 and list(state[3:6]) == [37, 50_537, 100] and int(nan[0]) == 0

@pytest.mark.skipif(NVCC is None, reason="needs CUDA's nvcc")
def test_gpu_compile_sm90():
    for source in (SELECT_SOURCE, TIES_SOURCE, COMBINE_SOURCE, PCG_SOURCE, ABS_SUM_KERNELS.source):
        assert sm90_kernels(source), source[:200]   # some kernels, none spilling or using a stack frame

@pytest.mark.parametrize('seed', [0, 1, 2**63 + 5])
def test_uniform_is_numpys_stream(seed):
    "The PCG64 kernel makes numpy's float32 draws, and leaves the generator where numpy's draw leaves it"
    sizes = [7, 1, 0, 256, 257, 300_001, 2, 513]
    r1, r2 = np.random.default_rng(seed), np.random.default_rng(seed)
    for n in sizes:
        np.testing.assert_array_equal(uniform(r1, (n,)).view(np.uint32), r2.random(n, dtype=np.float32).view(np.uint32))
        assert r1.bit_generator.state == r2.bit_generator.state, n
    r1.bit_generator.advance(2**70); r2.bit_generator.advance(2**70)   # far into the period: the jumps' 128-bit arithmetic
    np.testing.assert_array_equal(uniform(r1, (3, 1000)).view(np.uint32), r2.random((3, 1000), dtype=np.float32).view(np.uint32))
    np.testing.assert_array_equal(r1.random(5), r2.random(5))

def test_dare_masks_follow_the_seed():
    "merge's DARE draws go through `uniform`: the same seed and tensor name, the same mask"
    from entrenar.merge import tensor_rng, uniform as merge_uniform
    a = merge_uniform(tensor_rng(3, 'layers.0.w'), (64, 33), np.zeros(1, np.float32))
    np.testing.assert_array_equal(a, tensor_rng(3, 'layers.0.w').random((64, 33), dtype=np.float32))

def combine_case(seed, m, n, elect, normalize, scale, uniform_weights):
    "Task vectors with ties, zeros of both signs and a few NaNs; the CPU's `_combine` result and the arguments"
    rng = np.random.default_rng(seed)
    base = rng.normal(size=n).astype(np.float32)
    deltas = [(np.round(rng.normal(scale=0.01, size=n) * 300) / 300).astype(np.float32) for _ in range(m)]
    deltas[0][: n // 5] = -0.0; deltas[-1][::97] = np.nan
    weights = [0.7] * m if uniform_weights else [float(w) for w in rng.choice([0.5, 1.0, 2.0, -0.5, 0.3], m)]
    with np.errstate(all='ignore'): want = _combine([d.copy() for d in deltas], base, weights, elect, normalize, scale)
    return (deltas, base, weights, elect, normalize, scale), want

COMBINE_CASES = [(m, elect, normalize, scale, uw) for m in (1, 3, 4) for elect in (True, False) for normalize in (True, False)
                 for scale, uw in ((1.0, True), (0.6, False))]

@pytest.mark.parametrize('m,elect,normalize,scale,uniform_weights', COMBINE_CASES)
def test_combine_is_the_cpus_bits(m, elect, normalize, scale, uniform_weights):
    args, want = combine_case(m, m, 100_003, elect, normalize, scale, uniform_weights)
    np.testing.assert_array_equal(bits(combine(*args, grid=(3, 5))), bits(want))

@pytest.mark.parametrize('n', [0, 5, ABS_SUM_COLUMNS - 1, ABS_SUM_COLUMNS, 3 * ABS_SUM_COLUMNS + 777])
def test_abs_sum_one_order(n):
    "numpy's path and the kernel add in the same order: the same float32 sum"
    rng = np.random.default_rng(n)
    x = (rng.standard_normal(n) * 10.0 ** rng.integers(-4, 5, n)).astype(np.float32)
    a, b = abs_sum(x), abs_sum(x, grid=(3, 5))
    assert np.float32(a).view(np.uint32) == np.float32(b).view(np.uint32), (a, b)
    np.testing.assert_allclose(a, np.abs(x.astype(np.float64)).sum(), rtol=1e-5)

# On a GPU: the same calls on CuPy arrays give the CPU build's bits

@pytest.mark.gpu
def test_abs_sum_and_dare_on_the_gpu():
    import cupy as cp
    from entrenar.merge import merge_tensors
    x = np.random.default_rng(5).standard_normal(10_000_019).astype(np.float32)
    assert abs_sum(cp.asarray(x)) == abs_sum(x)
    rng = np.random.default_rng(6)
    base = rng.standard_normal((1024, 1000)).astype(np.float32)
    fts = [base + rng.normal(scale=0.01, size=base.shape).astype(np.float32) for _ in range(3)]
    for method in ('dare_ties', 'dare_linear'):
        kw = dict(weight=[1.0, 0.5, 0.8], density=0.4, name='layers.3.w', seed=7)
        cpu = merge_tensors(method, fts, base=base, **kw)
        gpu = merge_tensors(method, [cp.asarray(f) for f in fts], base=cp.asarray(base), **kw)
        np.testing.assert_array_equal(bits(cp.asnumpy(gpu)), bits(cpu))

@pytest.mark.gpu
@pytest.mark.parametrize('m,elect,normalize,scale,uniform_weights', COMBINE_CASES)
def test_combine_gpu(m, elect, normalize, scale, uniform_weights):
    import cupy as cp
    (deltas, base, *rest), want = combine_case(m, m, 1_000_003, elect, normalize, scale, uniform_weights)
    got = combine([cp.asarray(d) for d in deltas], cp.asarray(base), *rest)
    np.testing.assert_array_equal(bits(cp.asnumpy(got)), bits(want))

@pytest.mark.gpu
def test_uniform_on_the_gpu():
    import cupy as cp
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    for n in (5, 10_000_001, 2):
        np.testing.assert_array_equal(cp.asnumpy(uniform(r1, (n,), cp)).view(np.uint32), r2.random(n, dtype=np.float32).view(np.uint32))
    assert r1.bit_generator.state == r2.bit_generator.state

@pytest.mark.gpu
@pytest.mark.parametrize('m,n,levels,density,weight,normalize,scale,grid', CASES)
def test_ties_gpu_equals_cpu(m, n, levels, density, weight, normalize, scale, grid):
    import cupy as cp
    xs, base = models(n, m, n, levels)
    want = ties(xs, base, density, weight, normalize, scale)
    got = ties([cp.asarray(x) for x in xs], cp.asarray(base), density, weight, normalize, scale)
    assert isinstance(got, cp.ndarray)
    np.testing.assert_array_equal(bits(cp.asnumpy(got)), bits(want))
    np.testing.assert_array_equal(bits(want), bits(cpu_ties(xs, base, density, weight, normalize, scale)))

@pytest.mark.gpu
def test_ties_gpu_large_and_nan():
    import cupy as cp
    xs, base = models(11, 3, (1 << 24) + 777, levels=2)
    want = cpu_ties(xs, base, [0.2, 0.5, 0.9], [1, 0.5, 2], True, 0.8)
    got = ties([cp.asarray(x) for x in xs], cp.asarray(base), [0.2, 0.5, 0.9], [1, 0.5, 2], True, 0.8)
    np.testing.assert_array_equal(bits(cp.asnumpy(got)), bits(want))
    xs, base = models(12, 2, 50_000)
    xs[0][49_999] = np.nan
    assert ties([cp.asarray(x) for x in xs], cp.asarray(base), [0.5, 0.5], [1, 1], True, 1.0) is None
    out, nan = ties_launch([cp.asarray(x) for x in xs], cp.asarray(base), [0.5, 0.5], [1, 1], True, 1.0)
    assert isinstance(nan, cp.ndarray) and int(nan[0]) == 1

@pytest.mark.gpu
@pytest.mark.parametrize('seed', range(4))
def test_kth_value_and_rank_mask_gpu(seed):
    import cupy as cp
    v, rng = values(seed, 1_000_003), np.random.default_rng(seed)
    d = cp.asarray(v)
    for r in [0, v.size - 1, *rng.integers(0, v.size, 4)]:
        got = kth_value(d, int(r))
        assert isinstance(got, cp.ndarray) and bits(cp.asnumpy(got)) == bits(kth_value(v, int(r)))
    for s, e in [(0, 500_000), (500_000, v.size), *(sorted(rng.integers(0, v.size, 2)) for _ in range(3))]:
        np.testing.assert_array_equal(cp.asnumpy(rank_mask(d, int(s), int(e))), rank_mask(v, int(s), int(e)))
