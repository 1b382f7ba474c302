"Exactness and error reporting of entrenar.numtext.parse_numbers (the fast path, the general path, chunk boundaries)"
import math, struct
import numpy as np, orjson, pytest
from hypothesis import given, settings, strategies as st, HealthCheck
from entrenar.numtext import parse_numbers

CHUNKS = [1 << 25, 64, 7, 1]


def bits(x): return np.asarray(x, np.float64).view(np.int64)


def ref(tokens): return np.array([float(t) for t in tokens], np.float64)


def check(text, tokens=None, **kw):
    if tokens is None: tokens = [t.strip() for t in text.split(b',')]
    want = ref(tokens)
    for cb in CHUNKS:
        got = parse_numbers(text, chunk_bytes=cb, **kw)
        assert got.dtype == np.float64 and got.shape == want.shape
        assert np.array_equal(bits(got), bits(want)), (cb, text[:200])


EDGE = [b'-0.12573022', b'3', b'1e-7', b'1.5E+10', b'-2.5e-45', b'+1.0', b'0', b'-0', b'-0.0', b'0.0',
        b'1e308', b'1.7976931348623157e308', b'1e-320', b'5e-324', b'2.2250738585072014e-308',
        b'4.9406564584124654e-324', b'2.4703282292062327e-324', b'2.4703282292062328e-324',
        b'1e309', b'-1e400', b'1e-400', b'0e999', b'123456789012345678901234567890',
        b'9007199254740992', b'9007199254740993', b'-9007199254740991', b'9007199254740991.0',
        b'0.1', b'0.30000000000000004', b'1.00000000000000011102230246251565404236316680908203125',
        b'1e22', b'1e23', b'9007199254740991e22', b'1.5', b'12345678.87654321', b'1e0', b'1E-0',
        b'00012', b'1.', b'.5', b'-.5', b'+.5', b'123456789012345678', b'1234567890123456789',
        b'12345678901234567890', b'0.000000000000000000001', b'1e+00005', b'1e-00000000001',
        b'3.4028235e+38', b'1.4e-45', b'1.17549435e-38', b'16777217', b'0.1e1', b'100e-2']
NONFIN = [b'NaN', b'Infinity', b'-Infinity', b'nan', b'inf', b'-inf', b'.nan', b'.inf', b'-.inf',
          b'.NaN', b'.Inf', b'-.Inf', b'+inf', b'+.inf', b'.NAN', b'.INF', b'-.INF', b'NAN', b'infinity',
          b'+Infinity', b'-nan', b'+nan', b'INF']


def test_edge_tokens():
    check(b','.join(EDGE))
    for t in EDGE:
        check(t)
        check(b'  ' + t + b'\n')


def test_nonfinite():
    got = parse_numbers(b','.join(NONFIN))
    want = [float(t.decode().replace('.', '')) for t in NONFIN]
    assert all((math.isnan(g) and math.isnan(w)) or g == w for g, w in zip(got, want))
    assert math.isinf(got[1]) and got[2] == -math.inf and math.isnan(got[0])
    for cb in (7, 3):
        g2 = parse_numbers(b', '.join(NONFIN + EDGE), chunk_bytes=cb)
        assert np.array_equal(bits(g2[len(NONFIN):]), bits(ref(EDGE)))


def test_empty():
    for t in (b'', b'   ', b'\n\t\r\n '):
        r = parse_numbers(t)
        assert r.shape == (0,) and r.dtype == np.float64
    assert parse_numbers(b'', count=0).shape == (0,)
    with pytest.raises(ValueError, match='expected 3'):
        parse_numbers(b'  ', count=3)


def test_input_types(tmp_path):
    import mmap
    text = b'1.5, -2, 3e2'
    for buf in (text, bytearray(text), memoryview(text)):
        assert parse_numbers(buf).tolist() == [1.5, -2.0, 300.0]
    p = tmp_path / 'w.txt'
    p.write_bytes(text)
    with open(p, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        assert parse_numbers(mm).tolist() == [1.5, -2.0, 300.0]
        assert parse_numbers(memoryview(mm)[5:], count=2).tolist() == [-2.0, 300.0]
    p.write_bytes(b'1.5, x')
    with pytest.raises(ValueError, match="number 1 is not a number: 'x'"):
        with open(p, 'rb') as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            parse_numbers(mm)   # the mmap must close cleanly while the error propagates


def test_random_float64_repr():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.standard_normal(100_000), rng.standard_normal(20_000) * 1e10,
                        rng.integers(0, 2**64, 100_000, dtype=np.uint64).view(np.float64),
                        rng.integers(-2**53, 2**53, 20_000).astype(np.float64)])
    x = x[np.isfinite(x)]
    toks = [repr(float(v)).encode() for v in x]
    text = b','.join(toks)
    got = parse_numbers(text)
    assert np.array_equal(bits(got), bits(x))
    got = parse_numbers(text, chunk_bytes=64)
    assert np.array_equal(bits(got), bits(x))


def orjson_f32(a):
    return orjson.dumps(a, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]


def test_float32_orjson_all_bit_patterns():
    rng = np.random.default_rng(2)
    u = rng.integers(0, 2**32, 3_000_000, dtype=np.uint64).astype(np.uint32)
    a = u.view(np.float32)
    a = a[np.isfinite(a)]
    extra = np.array([0.0, -0.0, 1.4e-45, -1.4e-45, 1.1754942e-38, 1.17549435e-38, 3.4028235e38,
                      -3.4028235e38, 1.0, 0.1, 16777216.0, 16777217.0, 1e-45], np.float32)
    a = np.concatenate([extra, a])
    text = orjson_f32(a)
    out = np.empty(a.size, np.float32)
    r = parse_numbers(text, out=out, chunk_bytes=1 << 20)
    assert r is out
    assert np.array_equal(out.view(np.uint32), a.view(np.uint32))
    # also equal to float() bit for bit in float64
    sub = text[:2_000_000]
    sub = sub[:sub.rfind(b',')]
    toks = sub.split(b',')
    assert np.array_equal(bits(parse_numbers(sub)), bits(ref(toks)))


def test_float32_normal_and_subnormal():
    rng = np.random.default_rng(3)
    a = np.concatenate([rng.standard_normal(2_000_000).astype(np.float32),
                        (rng.integers(0, 2**23, 200_000).astype(np.uint32)
                         | (rng.integers(0, 2, 200_000).astype(np.uint32) << 31)).view(np.float32)])
    text = orjson_f32(a)
    out = np.empty(a.size, np.float32)
    parse_numbers(text, out=out, count=a.size)
    assert np.array_equal(out.view(np.uint32), a.view(np.uint32))


def test_whitespace_variants():
    vals = [b'1.5', b'-2e3', b'NaN', b'0.25', b'-0.0', b'7']
    for sep in (b',', b', ', b' , ', b',\n', b'\n,\t', b'\r\n, ', b',\n    '):
        text = b' \n' + sep.join(vals) + b'\r\n'
        for cb in CHUNKS:
            got = parse_numbers(text, chunk_bytes=cb)
            assert got[0] == 1.5 and got[1] == -2000.0 and math.isnan(got[2])
            assert got[3] == 0.25 and bits(got[4]) == bits(-0.0) and got[5] == 7.0


@pytest.mark.parametrize('text,idx,tok', [
    (b'1,,2', 1, ''), (b'1,2,', 2, ''), (b',1', 0, ''), (b'0x10', 0, '0x10'), (b'1,abc,3', 1, 'abc'),
    (b'1, 2 3, 4', 1, '2 3'), (b'1_000', 0, '1_000'), (b'1e', 0, '1e'), (b'1e+', 0, '1e+'),
    (b'-', 0, '-'), (b'.', 0, '.'), (b'1.2.3', 0, '1.2.3'), (b'1e5e5', 0, '1e5e5'),
    (b'--1', 0, '--1'), (b'1-2', 0, '1-2'), (b'1.5,2,3,1e5.0', 3, '1e5.0'), (b'[1,2]', 0, '[1'),
    (b'1,2, ,3', 2, ''), (b'infinit', 0, 'infinit'), (b'-.NaNa', 0, '-.NaNa'), (b'1,-.nan', 1, '-.nan'), (b'1,2,3,4,+-1', 4, '+-1'),
    (b'1,\x002', 1, '\x002'), (b'e5', 0, 'e5'), (b'.e1', 0, '.e1'), (b'1.0f', 0, '1.0f'),
    (b'1,2,' + b'9' * 100 + b'x', 2, '9' * 40), (b'1,\xff\xfe', 1, '\ufffd\ufffd'),
])
def test_errors(text, idx, tok):
    for cb in CHUNKS:
        with pytest.raises(ValueError) as e:
            parse_numbers(text, chunk_bytes=cb)
        msg = str(e.value)
        assert msg == f'number {idx} is not a number: {tok!r}', (cb, msg)


def test_error_index_far():
    toks = [b'%d.5' % i for i in range(100_000)]
    toks[76543] = b'1.2x'
    for cb in (1 << 25, 1000):
        with pytest.raises(ValueError, match=r"number 76543 is not a number: '1.2x'"):
            parse_numbers(b','.join(toks), chunk_bytes=cb)


def test_count_mismatch():
    text = b'1,2,3,4,5'
    assert parse_numbers(text, count=5).tolist() == [1, 2, 3, 4, 5]
    for c in (3, 6, 0):
        for cb in CHUNKS:
            with pytest.raises(ValueError, match=f'expected {c} numbers, found 5'):
                parse_numbers(text, count=c, chunk_bytes=cb)
    with pytest.raises(ValueError, match='expected 4'):
        parse_numbers(text, out=np.empty(4, np.float32))
    out = np.empty(5, np.float16)
    parse_numbers(text, out=out)
    assert out.tolist() == [1, 2, 3, 4, 5]


def test_chunk_boundaries_exhaustive():
    toks = EDGE + [b'-0.5', b'1.25e-3', b'NaN', b'42']
    text = b', '.join(toks)
    want = parse_numbers(text)
    for cb in range(1, 80):
        got = parse_numbers(text, chunk_bytes=cb)
        assert np.array_equal(bits(got), bits(want)), cb


finite = st.floats(allow_nan=False, allow_infinity=False)
f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(finite, min_size=1, max_size=50), st.sampled_from([b',', b', ', b' ,\n']),
       st.sampled_from(CHUNKS))
def test_hyp_float64(xs, sep, cb):
    text = sep.join(repr(x).encode() for x in xs)
    got = parse_numbers(text, chunk_bytes=cb)
    assert np.array_equal(bits(got), bits(np.array(xs)))


@settings(max_examples=300, deadline=None)
@given(st.lists(f32, min_size=1, max_size=50), st.sampled_from(CHUNKS))
def test_hyp_float32(xs, cb):
    a = np.array(xs, np.float32)
    out = np.empty(a.size, np.float32)
    parse_numbers(orjson_f32(a), out=out, chunk_bytes=cb)
    assert np.array_equal(out.view(np.uint32), a.view(np.uint32))


# token grammar: [+-]? digits [. digits] [eE [+-] digits], built from pieces
digits = st.text('0123456789', min_size=0, max_size=25)


@settings(max_examples=500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(['', '-', '+']), digits, st.booleans(), digits,
                          st.sampled_from(['', 'e', 'E']), st.sampled_from(['', '-', '+']),
                          st.text('0123456789', min_size=1, max_size=4)), min_size=1, max_size=20),
       st.sampled_from(CHUNKS))
def test_hyp_grammar(parts, cb):
    toks = []
    for s, i, dot, f, e, es, ed in parts:
        if not (i or f): i = '0'
        t = s + i + ('.' + f if dot or f else '') + ((e + es + ed) if e else '')
        toks.append(t.encode())
    got = parse_numbers(b','.join(toks), chunk_bytes=cb)
    assert np.array_equal(bits(got), bits(ref(toks)))


@settings(max_examples=300, deadline=None)
@given(st.text(st.sampled_from('0123456789.eE+-, \nxn'), min_size=1, max_size=30))
def test_hyp_garbage_agrees_with_float(s):
    """Anything we accept must equal float(); tokens float() rejects must raise."""
    text = s.encode()
    toks = [t.strip() for t in text.split(b',')]
    try:
        want = ref(toks)
        ok = all(b'_' not in t and t and b'n' not in t.lower() for t in toks)
    except ValueError:
        ok = False
    if ok:
        got = parse_numbers(text)
        assert np.array_equal(bits(got), bits(want))
    else:
        if text.strip() == b'': return
        with pytest.raises(ValueError):
            parse_numbers(text)


def test_fast_path_taken_and_mixed_tokens():
    """orjson's float32 text never needs float(): the compiled loop converts every token exactly itself;
    a few odd tokens mixed in (exponents, '+', long mantissas, more integer digits) must still come out exact."""
    from entrenar.numtext import _kernel, _END
    rng = np.random.default_rng(5)
    a = rng.standard_normal(50_000).astype(np.float32)
    text = orjson_f32(a)
    u = np.frombuffer(text, np.uint8)
    out, slow = np.empty(a.size, np.float32), np.empty((16, 3), np.int64)
    assert _kernel()(u, 0, u.size, u.size, out, 0, a.size, slow) == (_END, u.size, a.size, 0)
    assert out.tobytes() == a.tobytes()
    toks = text.split(b',')
    odd = [b'1.5e-7', b'+0.25', b'-1.0E+300', b'12345.678', b'0.12345678901234567', b'123456789.5',
           b'1.2e+5', b'-.5e1', b'-0.0', b'+1.', b'9007199254740993.0', b'1.00000000000000000001']
    for j, t in enumerate(odd):
        toks[1000 * j + 7] = t
    text2 = b','.join(toks)
    for cb in (1 << 20, 4096, 333):
        got = parse_numbers(text2, chunk_bytes=cb)
        assert np.array_equal(bits(got), bits(ref(toks)))
    for badtok in (b'1.5e-7e', b'1.5-3', b'+-0.5', b'1.5/', b'0.5.', b'1,5e', b'.e5', b'1.e', b'-.'):
        t3 = list(toks)
        t3[777] = badtok
        with pytest.raises(ValueError, match='number 77[78] is not a number'):
            parse_numbers(b','.join(t3))


def test_long_mantissas_near_halfway():
    """17-19 digit mantissas (the exact long-division path) next to halfway points between doubles."""
    from decimal import Decimal, getcontext
    getcontext().prec = 60
    rng = np.random.default_rng(7)
    xs = np.concatenate([rng.standard_normal(3000), rng.uniform(1, 2**53, 3000),
                         rng.standard_normal(3000) * 1e-6, rng.uniform(0, 1, 3000)])
    toks = []
    for x in xs.tolist():
        h = (Decimal(x) + Decimal(float(np.nextafter(x, np.inf)))) / 2   # exact midpoint
        for digits in (17, 18, 19):
            t = format(h, f'.{digits}g' if abs(h) >= 1 else f'.{digits}f')
            toks.append(t.encode())
            if b'e' not in t.encode():
                last = int(t[-1])
                for dd in (-1, 1):
                    if 0 <= last + dd <= 9: toks.append((t[:-1] + str(last + dd)).encode())
    toks = [t for t in toks if len(t.replace(b'-', b'').replace(b'.', b'').lstrip(b'0')) <= 19]
    text = b','.join(toks)
    for cb in (1 << 20, 100):
        assert np.array_equal(bits(parse_numbers(text, chunk_bytes=cb)), bits(ref(toks)))
    text = b', '.join(toks)   # whitespace path too
    assert np.array_equal(bits(parse_numbers(text)), bits(ref(toks)))


def test_orjson_float64():
    rng = np.random.default_rng(8)
    x = np.concatenate([rng.standard_normal(300_000), rng.standard_normal(50_000) * 1e-8,
                        rng.integers(0, 2**64, 100_000, dtype=np.uint64).view(np.float64)])
    x = x[np.isfinite(x)]
    text = orjson.dumps(x, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1]
    assert np.array_equal(bits(parse_numbers(text)), bits(x))


# reading in parts on several threads: the same bytes as one thread, whatever the cuts and estimates
@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(['', '-', '+']), digits, st.booleans(), digits,
                          st.sampled_from(['', 'e', 'E']), st.sampled_from(['', '-', '+']),
                          st.text('0123456789', min_size=1, max_size=4)), min_size=1, max_size=300),
       st.sampled_from([2, 3, 8]), st.sampled_from([1, 7, 1 << 24]), st.integers(0, 400), st.sampled_from([b',', b' , ']))
def test_hyp_parts_equal_one_thread(parts, threads, block, stop, sep):
    from entrenar.numtext import read_numbers as _read
    toks = []
    for s, i, dot, f, e, es, ed in parts:
        if not (i or f): i = '0'
        toks.append((s + i + ('.' + f if dot or f else '') + ((e + es + ed) if e else '')).encode())
    toks = toks * (1 + 300 // len(toks))          # long enough to share out (64+ commas in the sample)
    text = sep.join(toks)
    a = np.frombuffer(text, np.uint8)
    n = min(len(toks), max(1, stop))
    one, many = np.empty(n), np.full(n, np.nan)
    r1 = _read(a, 0, a.size, one, threads=1, block=block)
    r2 = _read(a, 0, a.size, many, threads=threads, min_split=1, block=block)
    assert r1 == r2 and one.tobytes() == many.tobytes()
    assert np.array_equal(bits(one), bits(ref(toks[:n])))
    end, k = r1
    assert k == n and (end == a.size) == (n == len(toks))
    if end < a.size: assert a[end] == 44 and np.count_nonzero(a[:end] == 44) == n - 1


def test_parts_float32_big_and_exact():
    "Two million float32 values through the threads: every bit pattern class, same bytes as one thread"
    from entrenar.numtext import read_numbers as _read
    rng = np.random.default_rng(11)
    x = rng.integers(0, 2**32, 2_000_000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    x = x[np.isfinite(x)]
    text = orjson_f32(x)
    a = np.frombuffer(text, np.uint8)
    outs = []
    for th in (1, 2, 4):
        o = np.empty(x.size, np.float32)
        assert _read(a, 0, a.size, o, threads=th, min_split=1) == (a.size, x.size)
        outs.append(o.tobytes())
    assert outs[0] == x.tobytes() and outs[1] == outs[0] and outs[2] == outs[0]
