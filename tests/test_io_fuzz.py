"""Hostile files: one mutation fuzzer per input format (tests/fuzz_io.py), the defects it found, and the bounds
that the io notebook documents (a small hostile file costs little memory); a killed save leaves the old file.

CI runs 300 cases per format with a fixed seed; ENTRENAR_FUZZ_CASES=10000 runs the long version (each format in a
subprocess under an address-space limit, each case under a time bound). `python tests/fuzz_io.py` prints the table.
"""
import gzip, json, os, resource, signal, struct, subprocess, sys, time
from pathlib import Path
import numpy as np, pytest
import fastcore.test as ft
import fuzz_io
from conftest import one_error_line
from entrenar.errors import SerializationError
from entrenar.io import GGUF_MAX_ITEMS, GZIP_FREE, YAML_MAX, Model, ModelMetadata, load_model, save_model

CASES = int(os.environ.get('ENTRENAR_FUZZ_CASES', 300))
SEED = int(os.environ.get('ENTRENAR_FUZZ_SEED', 1))
RESULTS = []

@pytest.fixture(scope='module', autouse=True)
def _table():
    "Print the fuzz table (format, cases, typed errors, loads, raw exceptions, hangs, peak RSS) after the module (`pytest -s`)"
    yield
    if RESULTS: print('\n' + fuzz_io.table(RESULTS))

@pytest.mark.parametrize('fmt', fuzz_io.FORMATS)
def test_fuzz_format(tmp_path, fmt):
    "Every mutant loads or raises an EntrenarError: no raw exception, no hang, no memory blow-up"
    r = fuzz_io.run_format(fmt, CASES, seed=SEED, workdir=tmp_path)
    RESULTS.append(r)
    bad = [f for f in r['failures'] if f['kind'] in ('raw', 'hang', 'oom', 'rss', 'crash')]
    assert not bad, json.dumps(bad[:3], indent=1)
    ft.test_eq((r['raw'], r['hangs'], r['oom']), (0, 0, 0))
    ft.test_eq(r['cases'], CASES)
    assert r['typed'] > CASES // 2, r           # the mutations really do break files ...
    assert r['loads'] > 0, r                     # ... and some still load: the seeds are real, loadable files
    assert r['peak_rss_mb'] < fuzz_io.RSS_BOUND_MB, r

# ---- defects the fuzzer found, each reproduced with a crafted file ----

def test_quantized_table_that_disagrees_with_stored_bytes(tmp_path):
    "A .safetensors quantization table whose shape needs other bytes than the file stores: was a raw ValueError in dequantize"
    from entrenar.quantize import load_quantized, quantize_model
    p = tmp_path / 'q.safetensors'
    quantize_model(fuzz_io._quant_model(), p, format='q8_0', report=False)
    m = load_model(p)
    settings = m.metadata.custom['quantization']
    entry = next(e for e in settings['tensors'] if e['scheme'] == 'q8_0')
    entry['shape'] = [entry['shape'][0], 0]
    bad = Model(m.metadata.with_custom('quantization', settings), [(n, m.get_parameter(n)) for n in m.names])
    save_model(bad, tmp_path / 'bad.safetensors')
    q = load_quantized(tmp_path / 'bad.safetensors')
    with pytest.raises(SerializationError, match=rf"bad.safetensors: tensor '{entry['name']}': stores 272 bytes but its entry \(shape \[4, 0\], q8_0\) needs 0"):
        q[entry['name']].dequantize()

def _llama_gguf_with(folder, key:bytes, value:int):
    "fuzz_io's llama GGUF with the uint32 metadata value `key` set to `value`"
    import gguf
    p = folder / 'llama.gguf'
    fuzz_io._llama_gguf(p)
    data = bytearray(p.read_bytes())
    i = data.index(struct.pack('<Q', len(key)) + key) + 8 + len(key)
    ft.test_eq(struct.unpack_from('<I', data, i)[0], gguf.GGUFValueType.UINT32)
    data[i + 4:i + 8] = struct.pack('<I', value)
    p.write_bytes(bytes(data))
    return p

def test_gguf_heads_that_do_not_split_the_rows(tmp_path):
    "attention.head_count that does not divide attn_q's rows: was a raw ValueError from the q/k un-permutation"
    from entrenar.gguf import gguf_model
    p = _llama_gguf_with(tmp_path, b'llama.attention.head_count', 3)
    m = gguf_model(p)
    with pytest.raises(SerializationError, match="llama.gguf: tensor 'blk.0.attn_q.weight': 32 rows do not split into 3 heads"):
        m.get_parameter('model.layers.0.self_attn.q_proj.weight')
    ft.test_eq(gguf_model(p, hf_names=False).get_parameter('blk.0.attn_q.weight').shape, (32, 32))

GGUF_PEAK = '''
import resource, sys
def hwm(): return int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))   # kB; this process's own, fresh after exec
sys.path[:0] = [{root!r}]
from entrenar.gguf import gguf_model
before = hwm()
m = gguf_model(sys.argv[1])
print(m.names[1], (hwm() - before) // 1024)
'''

def test_gguf_block_count_costs_nothing(tmp_path):
    "block_count 9,999 in a 6 KB file: the name map of every layer took 500 MB; now only the layers of the tensors present"
    p = _llama_gguf_with(tmp_path, b'llama.block_count', 9999)
    r = subprocess.run([sys.executable, '-c', GGUF_PEAK.format(root=str(fuzz_io.HERE.parent)), str(p)], capture_output=True, text=True, timeout=600)
    name, mb = r.stdout.split()
    ft.test_eq(name, 'model.layers.0.input_layernorm.weight')
    assert int(mb) < 32, mb

def test_recipe_model_entry_without_model(run_cli, tmp_path):
    "`models: [{}]` (an entry with no `model` key): was a raw KeyError, now a MergeError naming the file and the field"
    p = tmp_path / 'r.yml'
    p.write_text('merge_method: linear\nmodels: [{}, {model: a}]\n')
    from entrenar.merge import load_recipe
    from entrenar.errors import MergeError
    with pytest.raises(MergeError, match=r"r.yml: models\[\].model must name a model path, got None"): load_recipe(p)
    err = one_error_line(run_cli('merge', '--config', p, '--output', tmp_path / 'out.safetensors'))
    assert 'r.yml: models[].model must name a model path' in err, err

# ---- the documented bounds: what a small hostile file can cost ----

PEAK = '''
import resource, sys, time
def hwm(): return int(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))   # kB; this process's own, fresh after exec
sys.path[:0] = [{root!r}]
from entrenar.io import check_gguf, load_model
before = hwm()
t = time.process_time()
try: check_gguf(sys.argv[1]) if sys.argv[1].endswith('.gguf') else load_model(sys.argv[1])
except Exception as e: print(type(e).__name__, str(e)[:400], file=sys.stderr)
print((hwm() - before) // 1024, time.process_time() - t)
'''

def _peak_mb(path):
    "(MB the load added to the process's peak RSS, CPU seconds, the error it printed) in a fresh process"
    p = subprocess.run([sys.executable, '-c', PEAK.format(root=str(fuzz_io.HERE.parent)), str(path)], capture_output=True, text=True, timeout=600)
    mb, secs = p.stdout.split()
    return int(mb), float(secs), p.stderr

def test_gzip_bomb_costs_the_documented_bound(tmp_path):
    "3 MB of gzip that inflates to 3 GiB: refused after GZIP_FREE (64 MiB) of text; peak RSS stays under 3 x that"
    p = tmp_path / 'bomb.json.gz'
    zeros = gzip.compress(b',0' * (32 << 20), 9)         # 64 MiB of text in 64 KB; gzip members may follow one another
    p.write_bytes(gzip.compress(b'{"metadata": {"name": "b"}, "parameters": [{"name": "w", "shape": [4], "dtype": "f32"}], "data": [0')
                  + zeros * 48 + gzip.compress(b']}'))
    assert p.stat().st_size < 4 << 20
    mb, secs, err = _peak_mb(p)
    assert 'refused as a possible gzip bomb' in err and 'bomb.json.gz' in err, err
    assert mb < 3 * GZIP_FREE >> 20, mb

@pytest.mark.parametrize('ext', ['json.gz', 'yaml.gz'])
def test_gz_model_past_gzip_free_loads(tmp_path, ext):
    "A real model whose text is larger than GZIP_FREE: its parameters table justifies the rest, and it loads exactly"
    rng = np.random.default_rng(0)
    m = Model(ModelMetadata('big', 'a'), {'w': rng.standard_normal((2000, 3200)).astype(np.float32), 'b': np.arange(7, dtype=np.int64)})
    p = save_model(m, tmp_path / f'big.{ext}')
    with gzip.open(p, 'rb') as f: text_bytes = sum(len(c) for c in iter(lambda: f.read(1 << 24), b''))
    assert text_bytes > GZIP_FREE, text_bytes
    back = load_model(p)
    for n in m.names: ft.test_eq(back.get_parameter(n), m.get_parameter(n))

def test_small_hostile_files_cost_a_small_multiple(tmp_path):
    "Files of a few hundred bytes that claim huge sizes (header lengths, shapes, counts) add under 64 MB to the peak RSS"
    cases = {
        'shape.safetensors': struct.pack('<Q', 80) + b'{"w":{"dtype":"F32","shape":[1099511627776],"data_offsets":[0,4398046511104]}}'.ljust(80),
        'shape.json': b'{"metadata":{},"parameters":[{"name":"w","shape":[0,140737488355327,140737488355327],"dtype":"f32"}],"data":[]}',
        'count.json': b'{"metadata":{},"parameters":[{"name":"w","shape":[4294967296],"dtype":"f32"}],"data":[1,2,3]}',
        'count.yaml': b'metadata: {}\nparameters: [{name: w, shape: [4294967296], dtype: f64}]\ndata: [1, 2, 3]\n',
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        mb, secs, err = _peak_mb(tmp_path / name)
        assert 'SerializationError' in err and name in err, (name, err)
        assert mb < 64, (name, mb)

def test_past_the_caps_costs_little(tmp_path):
    "YAML over YAML_MAX (PyYAML would hold 1 GB per 4 MB) and a GGUF over GGUF_MAX_ITEMS are refused before parsing"
    wide = tmp_path / 'wide.yaml'
    wide.write_text('metadata: {custom: {x: [' + '{},' * (YAML_MAX // 3) + ']}}\nparameters: []\ndata: []\n')
    many = tmp_path / 'many.gguf'
    many.write_bytes(b'GGUF' + struct.pack('<IQQ', 3, 0, 1) + struct.pack('<Q', 1) + b'x'
                     + struct.pack('<IIQ', 9, 8, GGUF_MAX_ITEMS + 1) + struct.pack('<Q', 0) * (GGUF_MAX_ITEMS + 1))
    for p, words in ((wide, 'characters of YAML to parse whole'), (many, f'over the {GGUF_MAX_ITEMS:,} allowed')):
        mb, secs, err = _peak_mb(p)
        assert words in err and p.name in err, err
        assert mb < 4 * p.stat().st_size >> 20, (p.name, mb)
    from entrenar.gguf import GgufFile
    with pytest.raises(SerializationError, match='many.gguf: key .x. \\(2,097,153 items\\) bring the header'): GgufFile(many)

# ---- a killed save leaves the old file ----

KILLER = '''
import sys, numpy as np
from entrenar.io import Model, save_model
m = Model(None, {f"t{i}": np.full((1024, 1024), i, np.float32) for i in range(int(sys.argv[2]))})
print("start", flush=True)
save_model(m, sys.argv[1])
'''

@pytest.mark.parametrize('ext,n', [('safetensors', 400), ('json', 40)])
def test_killed_save_leaves_old_file(tmp_path, ext, n):
    target = tmp_path / f'model.{ext}'
    old = Model(None, {'old': np.arange(3, dtype=np.float32)})
    save_model(old, target)
    before = target.read_bytes()
    p = subprocess.Popen([sys.executable, '-c', KILLER, str(target), str(n)], stdout=subprocess.PIPE, text=True)
    ft.test_eq(p.stdout.readline().strip(), 'start')
    deadline = time.time() + 60
    while not any(f.name.startswith(f'.{target.name}.entrenar-tmp') for f in tmp_path.iterdir()):   # wait until it is writing
        assert time.time() < deadline and p.poll() is None, "the save never started writing"
        time.sleep(0.005)
    time.sleep(0.05)
    p.kill(); p.wait()
    assert p.returncode == -signal.SIGKILL
    assert target.read_bytes() == before
    ft.test_eq(load_model(target).names, ['old'])
