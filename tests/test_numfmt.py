"float32 text from entrenar.numfmt against orjson, byte for byte, and saved files against the ones orjson alone wrote"
import gzip, subprocess, sys
import numpy as np, orjson, ml_dtypes
import fastcore.test as ft
from hypothesis import given, settings, strategies as st
import entrenar.io as eio
from entrenar.io import Model, ModelMetadata, load_model, save_model
from entrenar.numfmt import awkward_float32, format_float32, float32_text_chunks, JSON_NONFINITE, YAML_NONFINITE

def orjson_text(v): return orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]

def check(v):
    v = v[np.isfinite(v)]
    a, b = format_float32(v), orjson_text(v)
    if a != b:
        x, y = a.split(b','), b.split(b',')
        i = next(i for i in range(len(y)) if i >= len(x) or x[i] != y[i])
        raise AssertionError(f"value {v[i]!r} (bits {v[i:i+1].view(np.uint32)[0]:#010x}): ours {x[i] if i < len(x) else None}, orjson {y[i]}")

def test_million_random_bit_patterns():
    rng = np.random.default_rng(12345)
    check(rng.integers(0, 2**32, 1_200_000, dtype=np.uint64).astype(np.uint32).view(np.float32))

def test_awkward_values():
    check(awkward_float32(1_000_000, seed=7))

def test_every_exponent_and_its_edges():
    rng = np.random.default_rng(3)
    ex = np.repeat(np.arange(0, 255, dtype=np.uint32), 4000)
    mant = rng.integers(0, 2**23, ex.size).astype(np.uint32)
    mant[::4000] = 0; mant[1::4000] = 1; mant[2::4000] = 2**23 - 1      # bottom and top of every binade
    check((ex << 23 | mant).view(np.float32))

def test_weights_like_values():
    rng = np.random.default_rng(4)
    for scale in (1.0, 0.02, 1e-3, 1e-6, 1e3):
        check((rng.standard_normal(200_000) * scale).astype(np.float32))
    check(np.arange(0, 2**25 + 2**12, 33, dtype=np.float32))                     # integers up to 2**24 and past it
    check((np.arange(1, 200_000) / np.float32(1000)).astype(np.float32))         # short decimals

@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64))
def test_hypothesis_bit_patterns(bits):
    check(np.array(bits, np.uint32).view(np.float32))

def test_nonfinite_spellings():
    v = np.float32([np.nan, -np.nan, np.inf, -np.inf, 1.5])
    ft.test_eq(format_float32(v), b'NaN,NaN,Infinity,-Infinity,1.5')
    ft.test_eq(format_float32(v, YAML_NONFINITE), b'.nan,.nan,.inf,-.inf,1.5')

def test_chunks_join_to_the_whole():
    v = awkward_float32(100_000, seed=9)
    for size in (1, 7, 4096, 10**6):
        assert b','.join(bytes(c) for c in float32_text_chunks(v, chunk_size=size)) == orjson_text(v)

# the writer before numfmt: orjson for everything, one tensor at a time
def _orjson_number_chunks(a, fmt):
    flat = eio._as_text_array(a)
    if flat.size == 0: return [b'']
    bad = ~np.isfinite(flat) if flat.dtype.kind == 'f' else np.zeros(flat.size, bool)
    if not bad.any(): return [orjson_text(flat)]
    toks = orjson_text(np.where(bad, 0, flat)).split(b',')
    nan, inf, ninf = eio._NONFINITE[fmt]
    for i in np.flatnonzero(bad): toks[i] = nan if np.isnan(flat[i]) else inf if flat[i] > 0 else ninf
    return [b','.join(toks)]

def _model():
    rng = np.random.default_rng(0)
    big = rng.standard_normal(2_500_000).astype(np.float32)                      # several chunks
    big[::1001] = np.nan; big[::1003] = -np.inf; big[::997] = 1e-40; big[::991] = 3e38
    return Model(ModelMetadata('same-bytes', 'mlp'), {
        'big': big.reshape(2500, 1000), 'awkward': awkward_float32(50_000, seed=1),
        'half': rng.standard_normal(3000).astype(np.float16), 'bf16': rng.standard_normal(3000).astype(ml_dtypes.bfloat16),
        'c64': (rng.standard_normal(100) + 1j).astype(np.complex64), 'f64': rng.standard_normal(100),
        'ids': np.arange(-5, 5, dtype=np.int64), 'empty': np.zeros((0, 3), np.float32), 'one': np.float32([0.5])})

def test_saved_files_identical_to_orjson_ones(tmp_path, monkeypatch):
    m = _model()
    names = ['m.json', 'm.yaml', 'p.json', 'm.json.gz']
    cfg = lambda n: eio.SaveConfig(pretty=n.startswith('p'))
    for n in names: save_model(m, tmp_path / ('new-' + n), cfg(n))
    monkeypatch.setattr(eio, '_number_chunks', _orjson_number_chunks)
    for n in names: save_model(m, tmp_path / ('old-' + n), cfg(n))
    for n in names:
        read = gzip.decompress if n.endswith('.gz') else (lambda b: b)
        assert read((tmp_path / ('new-' + n)).read_bytes()) == read((tmp_path / ('old-' + n)).read_bytes()), n
        back = load_model(tmp_path / ('new-' + n))
        for name, a in m:
            assert back.get_parameter(name).tobytes() == np.asarray(a).tobytes(), (n, name)

def test_cli_startup_does_not_import_numba():
    code = "import sys, entrenar.cli, entrenar.io; print('numba' in sys.modules)"
    ft.test_eq(subprocess.run([sys.executable, '-c', code], capture_output=True, text=True).stdout.strip(), 'False')
