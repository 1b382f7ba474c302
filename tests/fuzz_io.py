"""Mutation fuzzing of every reader: each mutated file must load or raise an EntrenarError, quickly and in bounded memory.

One fuzzer per input format (`FORMATS`): it writes a real file with entrenar's (or gguf-py's) writer, mutates its
bytes (bit flips, truncation, inserted and deleted runs, big integers written over lengths, counts and shapes,
two header fields swapped) and loads each mutant with the public loader, reading every tensor.

Each format runs in its own subprocess (`run_format`) under an address-space limit (`resource.setrlimit`), each case
under a time bound (SIGALRM). It counts loads, typed errors, raw exceptions, hangs and memory blow-ups (a typed
"out of memory", or the peak RSS rising past `RSS_BOUND_MB`).

    python tests/fuzz_io.py [CASES] [FORMAT ...]       # default: $ENTRENAR_FUZZ_CASES or 10,000 per format

tests/test_io_fuzz.py runs a few hundred cases per format with a fixed seed.
"""
import gzip, json, os, random, re, resource, shutil, signal, struct, subprocess, sys, tempfile, time, traceback
from pathlib import Path
import numpy as np

HERE = Path(__file__).resolve().parent
CASE_SECONDS = 10          # a case that runs longer is a hang
AS_LIMIT_MB = 4096         # the child's address-space limit: a blow-up becomes MemoryError, not a dead machine
RSS_BOUND_MB = 320         # peak RSS allowed in the child: the imports take about 160 MB, a case may add as much again

# ---- seed files ----

def _seed_model():
    import ml_dtypes
    from entrenar.io import Model, ModelMetadata
    rng = np.random.default_rng(0)
    meta = ModelMetadata('fuzz', 'mlp').with_custom('hidden', 8).with_custom('tags', ['a', {'b': None}])
    return Model(meta, {'w': rng.standard_normal((4, 8)).astype(np.float32),
                        'b': np.array([np.nan, np.inf, -0.0], np.float32),
                        'h': rng.standard_normal(5).astype(ml_dtypes.bfloat16),
                        'ids': np.arange(6, dtype=np.int64).reshape(2, 3),
                        'mask': np.array([True, False]), 's': np.array(2.5, np.float64)})

def _quant_model():
    from entrenar.io import Model, ModelMetadata
    rng = np.random.default_rng(1)
    return Model(ModelMetadata('q', 'llama'), {'model.layers.0.mlp.up_proj.weight': rng.standard_normal((4, 64)).astype(np.float32),
                                               'model.layers.0.self_attn.q_proj.weight': rng.standard_normal((2, 32)).astype(np.float32),
                                               'model.norm.weight': np.ones(8, np.float32)})

def _llama_gguf(path):
    "A small GGUF laid out as llama.cpp's converter writes a Llama: hyperparameters, a tokenizer, F32/F16/Q8_0 tensors"
    import gguf
    from entrenar.quantize import Q8_0
    rng = np.random.default_rng(2)
    w = gguf.GGUFWriter(path, 'llama')
    w.add_name('tiny'); w.add_block_count(1); w.add_context_length(64); w.add_embedding_length(32)
    w.add_feed_forward_length(64); w.add_head_count(2); w.add_head_count_kv(1); w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0); w.add_file_type(7); w.add_vocab_size(16)
    w.add_tokenizer_model('llama')
    w.add_token_list([f'tok{i}'.encode() for i in range(16)]); w.add_token_scores([float(-i) for i in range(16)])
    w.add_token_types([1] * 16); w.add_bos_token_id(1); w.add_eos_token_id(2)
    w.add_array('general.tags', ['a', 'b'])
    q8 = lambda x: Q8_0.quantize(x)
    w.add_tensor('token_embd.weight', q8(rng.standard_normal((16, 32)).astype(np.float32)), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor('blk.0.attn_norm.weight', np.ones(32, np.float32))
    w.add_tensor('blk.0.attn_q.weight', rng.standard_normal((32, 32)).astype(np.float16))
    w.add_tensor('blk.0.attn_k.weight', rng.standard_normal((16, 32)).astype(np.float32))
    w.add_tensor('output_norm.weight', np.ones(32, np.float32))
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()

def _imatrix():
    from entrenar.imatrix import Imatrix
    rng = np.random.default_rng(3)
    return Imatrix({'blk.0.attn_q.weight': rng.random((1, 32)).astype(np.float32), 'blk.0.ffn_up.weight': rng.random((2, 16)).astype(np.float32)},
                   {'blk.0.attn_q.weight': np.array([10]), 'blk.0.ffn_up.weight': np.array([3, 0])}, ['calib.txt'], 4, 32)

def _imatrix_dat(path):
    "The legacy .dat layout llama-imatrix wrote before GGUF"
    rng, out = np.random.default_rng(4), [struct.pack('<i', 2)]
    for name, n in (('blk.0.attn_q.weight', 32), ('blk.0.ffn_up.weight', 16)):
        out += [struct.pack('<i', len(name)), name.encode(), struct.pack('<ii', 7, n), rng.random(n).astype('<f4').tobytes()]
    out += [struct.pack('<i', 12), struct.pack('<i', 9), b'calib.txt']
    Path(path).write_bytes(b''.join(out))

RECIPE = """merge_method: ties
base_model: base
slices:
  - sources:
      - model: base
        layer_range: [0, 2]
      - model: a
        layer_range: [0, 2]
        parameters: {weight: [0.2, 0.8], density: 0.5}
      - model: b
        layer_range: [1, 3]
        parameters: {weight: [{filter: mlp, value: 0.3}, {value: 0.5}], density: [{filter: self_attn, value: 0.7}, {value: 0.4}]}
parameters: {normalize: true, lambda: 1.0}
dtype: float32
out_dtype: bfloat16
"""

def _recipe_models():
    "Small lazy models (4 layers) for every name a recipe may give"
    from entrenar.io import Model, ModelMetadata, TensorSpec, lazy_tensor
    names = [f'model.layers.{i}.{p}.weight' for i in range(4) for p in ('mlp.up_proj', 'self_attn.q_proj')] + ['model.embed_tokens.weight', 'lm_head.weight']
    z = lambda: np.zeros((2, 2), np.float32)
    return Model(ModelMetadata('m', 'llama'), [(n, lazy_tensor(TensorSpec(n, np.dtype(np.float32), (2, 2)), z)) for n in names])

def make_seeds(d: Path) -> dict:
    "{format: the folder (or file) to copy, the files in it to mutate}"
    from entrenar.io import SaveConfig, save_model
    from entrenar.imatrix import write_imatrix
    from entrenar.quantize import quantize_model
    d.mkdir(parents=True, exist_ok=True)
    m, seeds = _seed_model(), {}
    for ext in ('safetensors', 'json', 'yaml', 'json.gz', 'yaml.gz'):
        seeds[ext] = [save_model(m, d / f'seed.{ext}')]
    sh = d / 'sharded'; save_model(m, sh, SaveConfig().with_shard_size(120))
    seeds['sharded'] = sorted(sh.iterdir())
    for ext, fmt in (('json', 'q4_0'), ('safetensors', 'q8_0'), ('gguf', 'q4_k')):
        quantize_model(_quant_model(), d / f'q.{ext}', format=fmt, report=False)
        seeds[f'quantized.{ext}'] = [d / f'q.{ext}']
    (d / 'q.lin.json').unlink(missing_ok=True)
    _llama_gguf(d / 'llama.gguf'); seeds['llama.gguf'] = [d / 'llama.gguf']
    _imatrix_dat(d / 'im.dat'); seeds['imatrix.dat'] = [d / 'im.dat']
    write_imatrix(d / 'im.gguf', _imatrix()); seeds['imatrix.gguf'] = [d / 'im.gguf']
    (d / 'recipe.yml').write_text(RECIPE); seeds['recipe'] = [d / 'recipe.yml']
    return seeds

FORMATS = ['safetensors', 'sharded', 'json', 'yaml', 'json.gz', 'yaml.gz', 'quantized.json', 'quantized.safetensors',
           'quantized.gguf', 'llama.gguf', 'imatrix.dat', 'imatrix.gguf', 'recipe']

# ---- loaders: the public entry points, every tensor read ----

def load(fmt: str, path: Path, rnd: random.Random):
    if fmt in ('safetensors', 'sharded', 'json', 'yaml', 'json.gz', 'yaml.gz'):
        from entrenar.io import load_model
        m = load_model(path, lazy=rnd.random() < 0.5)
        for n in m.names: np.asarray(m.get_parameter(n)).sum()
    elif fmt.startswith('quantized.'):
        from entrenar.quantize import load_quantized
        q = load_quantized(path)
        for n in q.names: q[n].dequantize()
    elif fmt == 'llama.gguf':
        from entrenar.gguf import gguf_info, gguf_model
        gguf_info(path)
        m = gguf_model(path, hf_names=rnd.random() < 0.5)
        for n in m.names: m.get_parameter(n)
    elif fmt.startswith('imatrix.'):
        from entrenar.imatrix import read_imatrix
        im = read_imatrix(path)
        for n in im.names: im[n]
    elif fmt == 'recipe':
        from entrenar.merge import load_recipe, plan_merge
        r, _ = load_recipe(path)
        model = _recipe_models()
        plan_merge(r, {ref: model for ref in r.models})
    else: raise ValueError(fmt)

# ---- mutations ----

BIG = [0, 1, 2**7, 2**8 - 1, 2**15, 2**16 - 1, 2**31 - 1, 2**31, 2**32 - 1, 2**32, 2**47 - 1, 2**53 + 1, 2**62, 2**63 - 1,
       2**63, 2**64 - 1]
TEXT_NUMBERS = [b'-1', b'0', b'4294967296', b'9223372036854775807', b'18446744073709551616', b'340282366920938463463374607431768211456',
                b'1e308', b'1e999', b'-0', b'2.5', b'NaN', b'99999999999999999999999999999999999999']
INTERESTING = [b'\x00', b'\xff', b'{', b'}', b'[', b']', b'"', b',', b':', b'-', b'.', b'e', b'9' * 20, b'NaN', b'\n- ', b'&a ',
               b'*a', b'!!python/object:os.system', b'data', b'"data": [', b'\xff\xff\xff\xff\xff\xff\xff\x7f',
               b'18446744073709551615', b'1e999', b'<<: ', b'? ', b'\n  ', b'\t', b'\\u0000', b'\xc3(']
_NUMBER = re.compile(rb'-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?')
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?|\w+')

def _bytes_op(b: bytearray, rnd: random.Random, fields=()):
    "One byte-level mutation, in place (or a new array)"
    op, i = rnd.randrange(10 if fields else 6), rnd.randrange(len(b) + 1)   # text has no binary fields: ops 0-5 only
    if op == 0 and b: b[min(i, len(b) - 1)] ^= 1 << rnd.randrange(8)                        # bit flip
    elif op == 1: b[i:i] = rnd.choice(INTERESTING)                                            # insert a token
    elif op == 2: del b[i:i + rnd.randint(1, 16)]                                             # delete a run
    elif op == 3: del b[i:]                                                                   # truncate
    elif op == 4 and b: b[min(i, len(b) - 1)] = rnd.randrange(256)                           # random byte
    elif op == 5 and len(b) > 8: j = rnd.randrange(len(b)); b[i:i] = b[j:j + rnd.randint(1, 32)]   # duplicate a run
    elif op in (6, 7) and fields:                                                             # a big integer over a length/count/shape
        pos, size = rnd.choice(fields)
        v = rnd.choice(BIG) if rnd.random() < 0.8 else rnd.randrange(2**(8 * size))
        if op == 7: v = int.from_bytes(b[pos:pos + size], 'little') + rnd.choice((-1, 1, len(b), 2**size))
        b[pos:pos + size] = (v % 2**(8 * size)).to_bytes(size, 'little')
    elif op == 8 and len(fields) > 1:                                                         # swap two header fields of one size
        (p, s), (q, t) = rnd.sample(fields, 2)
        if s == t and p + s <= len(b) and q + t <= len(b): b[p:p + s], b[q:q + t] = bytes(b[q:q + t]), bytes(b[p:p + s])
    elif op == 9 and fields[:1] == [(0, 8)] and len(b) > 8: b[0:8] = rnd.randrange(2**64).to_bytes(8, 'little')         # the first 8 bytes
    return b

def _text_op(b: bytearray, rnd: random.Random):
    "One mutation aware of JSON/YAML tokens: a number made huge or negative, two tokens swapped, or a byte-level one"
    r = rnd.random()
    if r < 0.3:
        nums = list(_NUMBER.finditer(b))
        if nums:
            m = rnd.choice(nums); b[m.start():m.end()] = rnd.choice(TEXT_NUMBERS); return b
    elif r < 0.45:
        toks = list(_TOKEN.finditer(b))
        if len(toks) > 1:
            x, y = sorted(rnd.sample(toks, 2), key=lambda m: m.start())
            return bytearray(b[:x.start()] + b[y.start():y.end()] + b[x.end():y.start()] + b[x.start():x.end()] + b[y.end():])
    return _bytes_op(b, rnd)

def _gguf_fields(data: bytes) -> list:
    "(offset, size) of every 4- and 8-byte integer in a GGUF's header: versions, counts, lengths, dimensions, types, offsets"
    import gguf
    r = gguf.GGUFReader(Path(_tmp_write(data)))
    base = r.data.__array_interface__['data'][0]
    out = []
    for f in list(r.fields.values()) + [t.field for t in r.tensors]:
        for part in f.parts:
            if part.dtype.itemsize in (4, 8) and part.dtype.kind in 'ui' and part.size == 1:
                out.append((part.__array_interface__['data'][0] - base, part.dtype.itemsize))
    return out

def _tmp_write(data):
    fd, name = tempfile.mkstemp(suffix='.gguf'); os.write(fd, data); os.close(fd)
    return name

def _safetensors_mutant(data: bytes, rnd: random.Random) -> bytes:
    "Mutate the JSON header as text (then, mostly, fix its length prefix so the parser sees it) or the bytes"
    if rnd.random() < 0.5 or len(data) < 8: return bytes(_bytes_op(bytearray(data), rnd, [(0, 8)]))
    n = struct.unpack_from('<Q', data)[0]
    head, rest = bytearray(data[8:8 + n]), data[8 + n:]
    for _ in range(rnd.randint(1, 3)): head = _text_op(head, rnd)
    n2 = len(head) if rnd.random() < 0.85 else n
    return struct.pack('<Q', n2) + bytes(head) + rest

class Mutator:
    "Mutants of one format's seed files"
    def __init__(self, fmt, seeds, rnd):
        self.fmt, self.rnd, self.files = fmt, rnd, {p.name: p.read_bytes() for p in seeds}
        self.fields = {k: (_gguf_fields(v) if k.endswith('.gguf') else _dat_fields(v) if k.endswith('.dat') else
                           [(0, 8)] if k.endswith('.safetensors') else []) for k, v in self.files.items()}

    def mutant(self) -> dict:
        "{file name: bytes}: every seed file, one or two of them mutated"
        out, rnd = dict(self.files), self.rnd
        for name in rnd.sample(sorted(out), min(len(out), rnd.choice((1, 1, 2)))):
            data = out[name]
            if name.endswith('.gz') and rnd.random() < 0.8:
                b = bytearray(gzip.decompress(data))
                for _ in range(rnd.randint(1, 4)): b = _text_op(b, rnd)
                out[name] = gzip.compress(bytes(b), 1); continue
            if name.endswith('.safetensors'): out[name] = _safetensors_mutant(data, rnd); continue
            b, text = bytearray(data), name.endswith(('.json', '.yaml', '.yml'))
            for _ in range(rnd.randint(1, 4)): b = _text_op(b, rnd) if text else _bytes_op(b, rnd, self.fields[name])
            out[name] = bytes(b)
        return out

def _dat_fields(data: bytes) -> list:
    "(offset, 4) of every integer of the legacy imatrix layout: the count, name lengths, ncall, value counts, chunks"
    out, pos = [(0, 4)], 4
    for _ in range(struct.unpack_from('<i', data)[0]):
        n = struct.unpack_from('<i', data, pos)[0]
        out += [(pos, 4), (pos + 4 + n, 4), (pos + 8 + n, 4)]
        pos += 12 + n + 4 * struct.unpack_from('<i', data, pos + 8 + n)[0]
    return out + [(pos, 4), (pos + 4, 4)]

# ---- one format, in this process ----

class Hang(Exception): pass
def _alarm(*_): raise Hang()

def _rss_mb():
    "This process's peak RSS in MB: /proc's VmHWM, which starts afresh at exec (ru_maxrss keeps the size of the process that forked it)"
    try: return int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:'))) / 1024
    except (OSError, StopIteration): return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def fuzz_format(fmt: str, cases: int, seed: int, workdir: Path) -> dict:
    "Run `cases` mutants of `fmt` here; counts and the first failures"
    from entrenar.errors import EntrenarError
    seeds = make_seeds(workdir / 'seeds')[fmt]
    rnd = random.Random(f'{seed}-{fmt}')
    mut, case_dir = Mutator(fmt, seeds, rnd), workdir / 'case'
    load(fmt, seeds[0] if fmt != 'sharded' else seeds[0].parent, rnd)       # the seed itself loads (and warms imports)
    counts, failures, t0 = dict(cases=0, typed=0, loads=0, raw=0, hangs=0, oom=0), [], time.time()
    signal.signal(signal.SIGALRM, _alarm)
    for i in range(cases):
        shutil.rmtree(case_dir, ignore_errors=True); case_dir.mkdir()
        files = mut.mutant()
        for name, data in files.items(): (case_dir / name).write_bytes(data)
        target = case_dir if fmt == 'sharded' else case_dir / seeds[0].name
        counts['cases'] += 1
        signal.setitimer(signal.ITIMER_REAL, CASE_SECONDS)
        try:
            load(fmt, target, rnd); counts['loads'] += 1
        except Hang:
            counts['hangs'] += 1; failures.append(dict(case=i, kind='hang', files=_keep(files, workdir, i)))
        except EntrenarError as e:
            if 'out of memory' in str(e):
                counts['oom'] += 1; failures.append(dict(case=i, kind='oom', error=str(e)[:300], files=_keep(files, workdir, i)))
            else: counts['typed'] += 1
        except BaseException as e:
            if isinstance(e, KeyboardInterrupt): raise
            counts['raw'] += 1
            failures.append(dict(case=i, kind='raw', error=f'{type(e).__name__}: {str(e)[:300]}', files=_keep(files, workdir, i),
                                 traceback=traceback.format_exc(limit=-4)[-1500:]))
        finally: signal.setitimer(signal.ITIMER_REAL, 0)
        if _rss_mb() > RSS_BOUND_MB and not any(f['kind'] == 'rss' for f in failures):
            failures.append(dict(case=i, kind='rss', error=f'peak RSS {_rss_mb():.0f} MB', files=_keep(files, workdir, i)))
    return dict(format=fmt, **counts, peak_rss_mb=round(_rss_mb()), seconds=round(time.time() - t0, 1), failures=failures[:20])

def _keep(files, workdir, i):
    "Save a failing case's files, to reproduce it"
    d = workdir / 'failures' / f'case{i}'
    d.mkdir(parents=True, exist_ok=True)
    for name, data in files.items(): (d / name).write_bytes(data)
    return str(d)

# ---- every format, each in a subprocess with its limits ----

def run_format(fmt: str, cases: int, seed: int = 0, workdir=None, timeout=None) -> dict:
    "Fuzz one format in a child process under the address-space limit; a killed or stuck child counts as a hang"
    workdir = Path(workdir or tempfile.mkdtemp(prefix='entrenar-fuzz-')) / fmt.replace('.', '-')
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / 'result.json'
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(HERE.parent), os.environ.get('PYTHONPATH', '')])}
    cmd = [sys.executable, str(Path(__file__).resolve()), '--child', fmt, str(cases), str(seed), str(workdir)]
    try:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout or 120 + cases * CASE_SECONDS)
    except subprocess.TimeoutExpired:
        return dict(format=fmt, cases=cases, typed=0, loads=0, raw=0, hangs=1, oom=0, peak_rss_mb=0, seconds=timeout,
                    failures=[dict(kind='hang', error='the child process did not finish')])
    if p.returncode or not out.exists():
        return dict(format=fmt, cases=cases, typed=0, loads=0, raw=1, hangs=0, oom=0, peak_rss_mb=0, seconds=0,
                    failures=[dict(kind='crash', error=f'child exited {p.returncode}: {p.stderr[-2000:]}')])
    return json.loads(out.read_text())

def _child(fmt, cases, seed, workdir):
    lim = AS_LIMIT_MB << 20
    resource.setrlimit(resource.RLIMIT_AS, (lim, lim))
    res = fuzz_format(fmt, int(cases), int(seed), Path(workdir))
    (Path(workdir) / 'result.json').write_text(json.dumps(res))

def table(results) -> str:
    head = f"{'format':<22} {'cases':>7} {'typed errors':>12} {'loads':>6} {'raw exceptions':>14} {'hangs':>5} {'OOM':>4} {'peak RSS MB':>11} {'seconds':>8}"
    rows = [f"{r['format']:<22} {r['cases']:>7} {r['typed']:>12} {r['loads']:>6} {r['raw']:>14} {r['hangs']:>5} {r['oom']:>4} "
            f"{r['peak_rss_mb']:>11} {r['seconds']:>8}" for r in results]
    return '\n'.join([head, *rows])

if __name__ == '__main__':
    if sys.argv[1:2] == ['--child']: _child(*sys.argv[2:6]); sys.exit(0)
    args = sys.argv[1:]
    n = int(args.pop(0)) if args and args[0].isdigit() else int(os.environ.get('ENTRENAR_FUZZ_CASES', 10_000))
    fmts, results, t = args or FORMATS, [], time.time()
    work = Path(tempfile.mkdtemp(prefix='entrenar-fuzz-'))
    for fmt in fmts:
        results.append(run_format(fmt, n, seed=int(os.environ.get('ENTRENAR_FUZZ_SEED', 0)), workdir=work))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    print(table(results)); print(f"{time.time() - t:.0f} s in all; failing cases kept under {work}")
    for r in results:
        for f in r['failures'][:3]: print(r['format'], json.dumps(f, indent=1)[:2500])
    sys.exit(1 if any(r['raw'] or r['hangs'] or r['oom'] or any(f['kind'] == 'rss' for f in r['failures']) for r in results) else 0)
