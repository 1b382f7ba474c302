"Round-trip properties of the three formats, over dtypes, shapes, names and metadata (hypothesis)"
import math
import numpy as np, pytest
from hypothesis import given, settings, strategies as st, HealthCheck
import hypothesis.extra.numpy as hnp
import fastcore.test as ft
from entrenar.io import DTYPES, Model, ModelMetadata, SaveConfig, load_model, save_model

EXTS = ['safetensors', 'json', 'yaml', 'json.gz', 'yaml.gz']
names = st.text(st.characters(blacklist_categories=('Cs', 'Cc')), min_size=1, max_size=24).filter(lambda n: n != '__metadata__')   # SafeTensors reserves it (the writer refuses it, by name)
shapes = hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=4)

@st.composite
def tensors(draw):
    code = draw(st.sampled_from(sorted(DTYPES)))
    dt, shape = DTYPES[code], draw(shapes)
    n = math.prod(shape)
    raw = draw(st.binary(min_size=n * dt.itemsize, max_size=n * dt.itemsize))   # any bit pattern: NaNs, infs, subnormals
    a = np.frombuffer(raw, np.uint8).view(dt).reshape(shape) if n else np.zeros(shape, dt)
    if dt == np.bool_: a = a.view(np.uint8) % 2 == 1
    return a

json_values = st.recursive(st.none() | st.booleans() | st.integers(-2**53, 2**53) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=10),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3), max_leaves=8)

@st.composite
def models(draw):
    params = draw(st.dictionaries(names, tensors(), min_size=1, max_size=5))
    meta = ModelMetadata(draw(names), draw(names), draw(st.sampled_from(['0.1.0', '2.0'])))
    for k, v in draw(st.dictionaries(names, json_values, max_size=4)).items(): meta = meta.with_custom(k, v)
    return Model(meta, params)

@pytest.mark.parametrize('ext', EXTS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(m=models())
def test_round_trip(tmp_path, ext, m):
    path = save_model(m, tmp_path / f'm.{ext}')
    back = load_model(path)
    ft.test_eq(back.names, m.names)
    ft.test_eq((back.metadata.name, back.metadata.architecture, back.metadata.version, back.metadata.custom),
               (m.metadata.name, m.metadata.architecture, m.metadata.version, m.metadata.custom))
    for n, a in m:
        b = back.get_parameter(n)
        ft.test_eq((b.dtype, b.shape), (a.dtype, a.shape))
        if ext == 'safetensors': assert a.tobytes() == b.tobytes(), n
        else:
            # text keeps every value exactly; a NaN comes back as a NaN (its payload bits are not text)
            an, bn = _isnan(a), _isnan(b)
            assert (an == bn).all(), n
            assert a[~an].tobytes() == b[~bn].tobytes(), (n, a.dtype, a.tolist(), b.tolist())

def _isnan(a):
    if a.dtype.kind in 'iub': return np.zeros(a.shape, bool)
    if a.dtype == np.complex64: return np.isnan(a.real) | np.isnan(a.imag)
    return np.isnan(a.astype(np.float64))

@pytest.mark.parametrize('ext', ['json', 'yaml'])
def test_float32_text_is_exact_for_every_bit_pattern(tmp_path, ext):
    bits = np.random.default_rng(1).integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    a = bits.view(np.float32)
    a = a[np.isfinite(a)]
    extremes = np.array([np.finfo(np.float32).max, -np.finfo(np.float32).max, np.finfo(np.float32).tiny, 1e-45, -1e-45, 0.0, -0.0], np.float32)
    a = np.concatenate([a, extremes])
    back = load_model(save_model(Model(None, {'w': a}), tmp_path / f'w.{ext}')).get_parameter('w')
    assert back.tobytes() == a.tobytes()
