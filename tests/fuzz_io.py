"""Mutation fuzzing of the model readers: every mutated file must load or raise an EntrenarError, quickly.

Used by tests/test_io_fuzz.py (a few hundred cases in CI) and by `python tests/fuzz_io.py N` for long runs
(it prints, per format, how many cases loaded, gave typed errors, gave untyped exceptions or hung).
"""
import gzip, os, random, signal, sys, tempfile, time, traceback
from pathlib import Path
import numpy as np
import ml_dtypes
from entrenar.errors import EntrenarError
from entrenar.io import Model, ModelMetadata, load_model, save_model

FORMATS = ['safetensors', 'json', 'yaml', 'json.gz']

def seed_model():
    rng = np.random.default_rng(0)
    meta = ModelMetadata('fuzz', 'mlp').with_custom('hidden', 8).with_custom('tags', ['a', {'b': None}])
    return Model(meta, {'w': rng.standard_normal((4, 8)).astype(np.float32), 'b': np.array([np.nan, np.inf, -0.0], np.float32),
                        'h': rng.standard_normal(5).astype(ml_dtypes.bfloat16), 'ids': np.arange(6, dtype=np.int64).reshape(2, 3),
                        'mask': np.array([True, False]), 's': np.array(2.5, np.float64)})

INTERESTING = [b'\x00', b'\xff', b'{', b'}', b'[', b']', b'"', b',', b':', b'-', b'.', b'e', b'9' * 20, b'NaN', b'\n- ', b'&a ', b'*a',
               b'!!python/object:os.system', b'data', b'"data": [', b'\xff\xff\xff\xff\xff\xff\xff\x7f', b'18446744073709551615', b'1e999']

def mutate(data: bytes, rnd: random.Random) -> bytes:
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op, i = rnd.randrange(7), rnd.randrange(len(b) + 1)
        if op == 0 and b: b[min(i, len(b) - 1)] ^= 1 << rnd.randrange(8)                          # bit flip
        elif op == 1: b[i:i] = rnd.choice(INTERESTING)                                              # insert a token
        elif op == 2: del b[i:i + rnd.randint(1, 16)]                                               # delete a run
        elif op == 3: b = b[:i]                                                                     # truncate
        elif op == 4 and b: b[min(i, len(b) - 1)] = rnd.randrange(256)                             # random byte
        elif op == 5 and len(b) > 8: j = rnd.randrange(len(b)); b[i:i] = b[j:j + rnd.randint(1, 32)]  # duplicate a run
        elif op == 6 and len(b) >= 8: b[0:8] = rnd.randrange(2**64).to_bytes(8, 'little')           # header length
    return bytes(b)

class Hang(Exception): pass
def _alarm(*_): raise Hang()

def run(n_per_format: int, seed: int = 0, timeout_s: int = 5, workdir=None):
    "Fuzz every format; return {format: {'ok', 'typed', 'untyped', 'hang'}} and the first untyped failures"
    workdir = Path(workdir or tempfile.mkdtemp(prefix='entrenar-fuzz-'))
    model, results, failures = seed_model(), {}, []
    signal.signal(signal.SIGALRM, _alarm)
    for fmt in FORMATS:
        good = save_model(model, workdir / f'seed.{fmt}').read_bytes()
        if fmt == 'json.gz': good = gzip.decompress(good)
        rnd, counts = random.Random(f'{seed}-{fmt}'), dict(ok=0, typed=0, untyped=0, hang=0)
        target = workdir / f'case.{fmt}'
        for _ in range(n_per_format):
            data = mutate(good, rnd)
            target.write_bytes(gzip.compress(data, 1) if fmt == 'json.gz' else data)
            signal.alarm(timeout_s)
            try:
                m = load_model(target, lazy=rnd.random() < 0.5)
                for n in m.names: m.get_parameter(n)
                counts['ok'] += 1
            except EntrenarError: counts['typed'] += 1
            except Hang: counts['hang'] += 1; failures.append((fmt, 'hang', data[:200]))
            except Exception as e:
                counts['untyped'] += 1
                failures.append((fmt, f'{type(e).__name__}: {e}', data[:200], traceback.format_exc(limit=3)))
            finally: signal.alarm(0)
        results[fmt] = counts
    return results, failures

if __name__ == '__main__':
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 10_000
    t = time.time()
    res, fails = run(n)
    print(f"{'format':<12} {'cases':>7} {'loaded':>7} {'typed':>7} {'untyped':>8} {'hangs':>6}")
    for fmt, c in res.items(): print(f"{fmt:<12} {sum(c.values()):>7} {c['ok']:>7} {c['typed']:>7} {c['untyped']:>8} {c['hang']:>6}")
    print(f"{time.time() - t:.0f} s; crashes: 0 (the process is still alive)")
    for f in fails[:5]: print(*f, sep='\n  ')
    sys.exit(1 if fails else 0)
