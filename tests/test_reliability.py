"""Hostile files (issue 16, items 4 and 7): each defect reproduced with a crafted file on disk, and shown fixed.

- the JSON/YAML model reader looked for `data` once per candidate key, rescanning the document each time;
- mergekit recipes expanded YAML aliases, kept the last of duplicate keys and quoted whole values in errors;
- a GGUF whose header claims an array of 2**62 items kept `gguf.GGUFReader` looping for ever;
- YAML model files kept the last of duplicate keys (JSON refuses them).

Items 1, 5 and 6:
- a file replaced (renamed over) while it was read gave the old header's offsets with the new file's bytes;
- impossible shapes and broken quantization tables raised raw ValueError/KeyError/TypeError;
- `kill -9` left `.NAME.entrenar-tmp-*` files for ever, a failed `ftruncate` leaked one, and the GGUF writers lost
  the errno of a failed write.
"""
import errno, json, os, resource, signal, struct, subprocess, sys, time
import numpy as np
import pytest
import fastcore.test as ft
from conftest import MODELS, entrenar_cmd, one_error_line
from entrenar.errors import MergeError, SerializationError
from entrenar.io import Model, ModelMetadata, SafeTensorsReader, check_gguf, load_model, save_model

A, B = MODELS / 'tiny-llama-a', MODELS / 'tiny-llama-b'
HEAD_JSON = '{"metadata":{"name":"m","architecture":"a"},"parameters":[{"name":"w","shape":[1],"dtype":"f32"}],'
HEAD_YAML = 'metadata: {name: m, architecture: a}\nparameters: [{name: w, shape: [1], dtype: f32}]\n'

def _timed(f, *args):
    "(seconds, result or the exception raised)"
    t = time.perf_counter()
    try: r = f(*args)
    except Exception as e: r = e
    return time.perf_counter() - t, r

@pytest.fixture(scope='module', autouse=True)
def _warm(tmp_path_factory):
    "Load one small text model first, so that compiling (or loading) the number parser is not timed"
    p = tmp_path_factory.mktemp('warm') / 'w.json'
    p.write_text(HEAD_JSON + '"data":[1]}')
    load_model(p)

QUICK = 10.0   # seconds: generous on a loaded 2-core machine; the quadratic scans took minutes at the larger sizes here (and the GGUF loop never ended)

# ---- 4(a): finding `data` is linear ----

def test_json_with_3000_data_keys_loads_at_once(tmp_path):
    "3,000 `\"data\": [` keys nested in the metadata took 1.2 s (6,000: 5 s); now one pass finds the top-level one"
    for n in (3000, 30000):
        custom = ','.join(f'"k{i}":{{"data":[]}}' for i in range(n))
        p = tmp_path / f'nested{n}.json'
        p.write_text(f'{{"metadata":{{"name":"m","architecture":"a","custom":{{{custom}}}}},' + HEAD_JSON[HEAD_JSON.index('"parameters"'):] + '"data":[1.5]}')
        secs, m = _timed(load_model, p)
        assert not isinstance(m, Exception), m
        ft.test_eq(m.get_parameter('w').tolist(), [1.5])
        ft.test_eq(m.metadata.custom['k7'], {'data': []})
        assert secs < QUICK, (n, secs)

def test_json_with_3000_top_level_data_keys_is_refused_at_once(tmp_path):
    "30 KB, 3,000 top-level `data` keys: 3.4 s before (6,000: 17 s), now an error naming the file and the key"
    for n in (3000, 30000):
        p = tmp_path / f'dups{n}.json'
        p.write_text(HEAD_JSON + '"data":[],' * (n - 1) + '"data":[1]}')
        secs, e = _timed(load_model, p)
        assert isinstance(e, SerializationError) and f"dups{n}.json: duplicate key 'data'" in str(e), e
        assert secs < QUICK, (n, secs)

def test_yaml_with_thousands_of_data_lines_is_quick(tmp_path):
    "An 8 KB YAML with 1,000 `data:` lines took 6.5 s (18 KB: 25 s); now a handful of tries, then one general parse"
    for n in (1000, 2250, 20000):
        p = tmp_path / f'dups{n}.yaml'
        p.write_text(HEAD_YAML + 'data: []\n' * (n - 1) + 'data: [1]\n')
        secs, e = _timed(load_model, p)
        assert isinstance(e, SerializationError) and f"dups{n}.yaml: duplicate key 'data' (line 4)" in str(e), e
        assert secs < QUICK, (n, secs)
    for n in (1000, 20000):   # `data:` lines inside a multi-line string come before the real one: still found, still quick
        p = tmp_path / f'instring{n}.yaml'
        p.write_text('metadata: {name: m, architecture: a, custom: {note: "x\n' + 'data: [1]\n' * n + '"}}\n'
                     + HEAD_YAML[HEAD_YAML.index('parameters'):] + 'data: [2.5]\n')
        secs, m = _timed(load_model, p)
        assert not isinstance(m, Exception), m
        ft.test_eq(m.get_parameter('w').tolist(), [2.5])
        assert m.metadata.custom['note'].count('data: [1]') == n
        assert secs < QUICK, (n, secs)
    p = tmp_path / 'open.yaml'   # 1,000 `data: [` lines, one `]`: the first candidate is taken and its numbers refused
    p.write_text(HEAD_YAML + 'data: [\n' * 1000 + ']\n')
    secs, e = _timed(load_model, p)
    assert isinstance(e, SerializationError) and 'open.yaml' in str(e) and 'is not a number' in str(e), e
    assert secs < QUICK

def test_ordinary_text_models_still_load_both_ways(tmp_path):
    "The fast path is unchanged: our own files, block-style YAML as the Rust crate writes it, a `[` inside a name"
    m = Model(ModelMetadata('m', 'llama').with_custom('note', 'a "data": [ in a string ] {'),
              {'a[0]': np.arange(6, dtype=np.float32).reshape(2, 3), 'b': np.array([1, -2], np.int64)})
    for ext in ('json', 'yaml', 'json.gz', 'yaml.gz'):
        save_model(m, tmp_path / f'm.{ext}')
        back = load_model(tmp_path / f'm.{ext}')
        ft.test_eq(back.names, m.names); ft.test_eq(back.metadata.custom, m.metadata.custom)
        for n in m.names: ft.test_eq(back.get_parameter(n), m.get_parameter(n))
    (tmp_path / 'rust.yaml').write_text('metadata:\n  name: r\n  architecture: a\nparameters:\n- name: w\n  shape: [3]\n  dtype: f32\n'
                                        'data:\n- 1.0\n- 2.0\n- 3.0\n')
    ft.test_eq(load_model(tmp_path / 'rust.yaml').get_parameter('w').tolist(), [1.0, 2.0, 3.0])

# ---- 7: duplicate keys in YAML are refused, as in JSON ----

@pytest.mark.parametrize('text,key,line', [
    (HEAD_YAML + 'data: [1]\ndata: [2]\n', 'data', 4),
    ('metadata: {name: m, architecture: a, name: n}\n' + HEAD_YAML[HEAD_YAML.index('parameters'):] + 'data: [1]\n', 'name', 1),
    ('metadata:\n  name: m\n  custom:\n    k: 1\n    k: 2\n' + HEAD_YAML[HEAD_YAML.index('parameters'):] + 'data: [1]\n', 'k', 5),
    ('metadata: {name: m}\nparameters: [{name: w, shape: [1], shape: [2], dtype: f32}]\ndata: [1]\n', 'shape', 2),
])
def test_yaml_model_with_duplicate_keys_is_refused(run_cli, tmp_path, text, key, line):
    "The last value won without a word before; now `entrenar info` names the file, the key and its line"
    p = tmp_path / 'dup.yaml'
    p.write_text(text)
    err = one_error_line(run_cli('info', p))
    assert f"dup.yaml: duplicate key '{key}' (line {line})" in err, err
    (tmp_path / 'dup.json').write_text(HEAD_JSON + '"data":[1],"data":[2]}')
    assert "dup.json: duplicate key 'data'" in one_error_line(run_cli('info', tmp_path / 'dup.json'))

def test_recipe_with_duplicate_keys_is_refused(run_cli, tmp_path):
    "mergekit recipes go through the same YAML reader: a repeated weight is an error naming the file, the key and its line"
    recipe = tmp_path / 'dup.yml'
    recipe.write_text(f"merge_method: linear\nmodels:\n  - model: {A}\n    parameters: {{weight: 0.3, weight: 0.7}}\n  - model: {B}\n"
                      "    parameters: {weight: 0.5}\n")
    err = one_error_line(run_cli('merge', '--config', recipe, '--output', tmp_path / 'out.safetensors'))
    assert "dup.yml: duplicate key 'weight' (line 4)" in err, err
    assert not (tmp_path / 'out.safetensors').exists()

# ---- 4(c): recipes: no aliases, short messages ----

def _bomb(levels, where='merge_method'):
    "A recipe whose `where` is a list of 9**levels items built from nested YAML aliases (a few hundred bytes)"
    txt, prev = 'parameters:\n  weight: &a [x,x,x,x,x,x,x,x,x]\n', 'a'
    for n in 'bcdefgh'[:levels - 1]:
        txt += f'  p{n}: &{n} [' + ','.join([f'*{prev}'] * 9) + ']\n'; prev = n
    return txt + f'models: [{{model: {A}}}]\n{where}: *{prev}\n'

def _rss_run(args, timeout=60):
    "Run `entrenar`, measuring its peak memory (KB) with getrusage"
    code = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
            "sys.stdout.write(str(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.stderr.write(r.stderr); sys.exit(r.returncode)")
    r = subprocess.run([sys.executable, '-c', code, *entrenar_cmd(), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return r, int(r.stdout or 0)

@pytest.mark.parametrize('levels', [7, 8])
def test_recipe_alias_bomb_is_refused_small(tmp_path, levels):
    "349 bytes of aliases gave a 226 MB error message and 1.3 GB of memory in 10 s; now one short line"
    recipe = tmp_path / 'bomb.yml'
    recipe.write_text(_bomb(levels))
    assert recipe.stat().st_size < 400
    t = time.perf_counter()
    r, rss_kb = _rss_run(['merge', '--config', recipe, '--output', tmp_path / 'out.safetensors'])
    err = one_error_line(r)
    assert 'bomb.yml: YAML anchors and aliases are not allowed' in err, err
    assert len(r.stderr) < 1000 and time.perf_counter() - t < 30
    assert rss_kb < 400_000, rss_kb   # the interpreter and numpy: ~60 MB
    assert not (tmp_path / 'out.safetensors').exists()

BIG = 200_000
@pytest.mark.parametrize('name,text,words', [
    ('method', f"merge_method: [{', '.join(['linear'] * BIG)}]\nmodels: [{{model: {A}}}]\n", 'unknown merge method'),
    ('model', f"merge_method: linear\nmodels: [{{model: {'a' * BIG}}}]\n", f'({BIG:,} characters)'),
    ('base', f"merge_method: ties\nbase_model: [{', '.join(['x'] * BIG)}]\nmodels: [{{model: {A}}}]\n", 'base_model must name a model path'),
    ('field', f"merge_method: linear\nmodels: [{{model: {A}}}]\n? {'z' * BIG}\n: 1\n", 'is not supported'),   # ? : a key over 1024 characters
    ('param', f"merge_method: linear\nmodels: [{{model: {A}}}, {{model: {B}}}]\nparameters:\n  weight: 1\n  ? {'q' * BIG}\n  : 1\n", 'has no parameter'),
    ('weight', f"merge_method: linear\nmodels: [{{model: {A}}}, {{model: {B}}}]\nparameters: {{weight: [[{', '.join(['1'] * BIG)}]]}}\n",
     'entries with other things'),
    ('type', f"merge_method: linear\nmodels: [{{model: {A}}}, {{model: {B}}}]\nparameters: {{weight: {'9' * 4000}x}}\n", 'must be a float'),
    ('dtype', f"merge_method: linear\nmodels: [{{model: {A}}}, {{model: {B}}}]\nparameters: {{weight: 1}}\ndtype: {'f' * BIG}\n", 'unknown dtype'),
    ('range', f"merge_method: passthrough\nslices: [{{sources: [{{model: {A}, layer_range: [{', '.join(['1'] * BIG)}]}}]}}]\n", 'layer_range'),
])
def test_recipe_errors_quote_values_briefly(run_cli, tmp_path, name, text, words):
    "A value quoted in an error is at most ~200 characters, whatever its size in the recipe (the message was as big as the value)"
    recipe = tmp_path / f'{name}.yml'
    recipe.write_text(text)
    err = one_error_line(run_cli('merge', '--config', recipe, '--output', tmp_path / 'out.safetensors'))
    assert words in err, err
    assert len(err) < 1000, (name, len(err))

def test_param_option_goes_through_the_same_reader(run_cli, tmp_path):
    "`--param NAME=VALUE` is YAML too: a bad value is one error line, not a traceback"
    out = tmp_path / 'out.safetensors'
    assert '--param weight' in one_error_line(run_cli('merge', A, B, '--method', 'linear', '--param', 'weight=[1', '--output', out))
    assert 'anchors and aliases' in one_error_line(run_cli('merge', A, B, '--method', 'linear', '--param', 'weight=&a [1]', '--output', out))
    assert not out.exists()

# ---- 4(d): GGUF headers are walked with bounds before GGUFReader sees them ----

def _gstr(b): return struct.pack('<Q', len(b)) + b

def _endless_gguf(path):
    "258 bytes: an architecture, then `tokenizer.ggml.scores`, an array of float32 whose count says 2**62"
    body = b'GGUF' + struct.pack('<IQQ', 3, 0, 2) + _gstr(b'general.architecture') + struct.pack('<I', 8) + _gstr(b'llama')
    body += _gstr(b'tokenizer.ggml.scores') + struct.pack('<IIQ', 9, 6, 2**62)
    path.write_bytes(body + bytes(258 - len(body)))
    return path

ENDLESS_WORDS = "key 'tokenizer.ggml.scores' (4,611,686,018,427,387,904 items) needs 18,446,744,073,709,551,616 bytes"

def test_gguf_array_count_of_2_62_fails_at_once(run_cli, tmp_path):
    "gguf.GGUFReader loops for ever on this file (killed after 20 s); every command that opens a GGUF now refuses it at once"
    g = _endless_gguf(tmp_path / 'endless.gguf')
    ft.test_eq(g.stat().st_size, 258)
    for args in (['info', g], ['dequantize', g, '--output', tmp_path / 'x.safetensors'], ['convert', g, tmp_path / 'x'],
                 ['quantize', g, '--type', 'q4_0', '--output', tmp_path / 'x.gguf'],
                 ['quantize', MODELS / 'tiny-llama', '--type', 'q4_0', '--imatrix', g, '--output', tmp_path / 'y.gguf'],
                 ['imatrix', g, '--info']):
        t = time.perf_counter()
        err = one_error_line(run_cli(*args, timeout=60))
        assert f'endless.gguf: {ENDLESS_WORDS}' in err, (args, err)
        assert time.perf_counter() - t < 30, args
    assert not any((tmp_path / n).exists() for n in ('x.safetensors', 'x', 'x.gguf', 'y.gguf'))

def test_every_gguf_opener_checks_first(tmp_path):
    "GgufFile, load_quantized and read_imatrix all call check_gguf before GGUFReader"
    from entrenar.gguf import GgufFile
    from entrenar.quantize import load_quantized
    from entrenar.imatrix import read_imatrix
    g = _endless_gguf(tmp_path / 'endless.gguf')
    for f in (check_gguf, GgufFile, load_quantized, read_imatrix):
        secs, e = _timed(f, g)
        assert isinstance(e, SerializationError) and ENDLESS_WORDS in str(e) and e.path == str(g), (f, e)
        assert secs < QUICK, (f, secs)

@pytest.fixture(scope='module')
def real_gguf(tmp_path_factory):
    "The tiny model as llama.cpp's GGUF (Q4_0 with its tokenizer), written by entrenar"
    from entrenar.gguf import to_gguf
    out = tmp_path_factory.mktemp('gguf') / 'tiny-q4_0.gguf'
    to_gguf(MODELS / 'tiny-llama', out, 'q4_0')
    return out

def test_check_gguf_agrees_with_gguf_reader(real_gguf):
    "On a good file the walk finds what GGUFReader finds: the counts and where the data starts"
    import gguf
    info, r = check_gguf(real_gguf), gguf.GGUFReader(real_gguf)
    ft.test_eq(info['tensors'], len(r.tensors))
    ft.test_eq(info['keys'], len(r.fields) - 3)   # GGUFReader adds GGUF.version, GGUF.tensor_count, GGUF.kv_count
    ft.test_eq(info['data_offset'], r.data_offset)

def test_broken_ggufs_are_refused_never_hang(real_gguf, tmp_path):
    "Every truncation of the header, and every count or length in it set to 2**62 or 2**64-1, is a SerializationError"
    data = real_gguf.read_bytes()
    end = check_gguf(real_gguf)['data_offset']
    cuts = sorted(set(range(0, 200)) | set(range(200, end, max(1, end // 300))))
    for n in cuts:
        (tmp_path / 'cut.gguf').write_bytes(data[:n])
        with pytest.raises(SerializationError, match='cut.gguf'): check_gguf(tmp_path / 'cut.gguf')
    from entrenar.gguf import GgufFile
    t, refused, opened = time.perf_counter(), 0, 0
    for at in range(8, min(end, 4096) - 8, 4):   # any 8 bytes of the header (a count, a length, a type) set huge
        for big in (2**62, 2**64 - 1):
            p = tmp_path / 'liar.gguf'
            p.write_bytes(data[:at] + big.to_bytes(8, 'little') + data[at + 8:])
            try: check_gguf(p)
            except SerializationError as e:
                refused += 1; assert 'liar.gguf' in str(e)
                continue
            try: GgufFile(p); opened += 1    # the walk let it through (bytes inside a string): GGUFReader ends too
            except SerializationError: pass
    assert refused > 0 and time.perf_counter() - t < 60, (refused, opened, time.perf_counter() - t)

def test_check_gguf_reads_big_endian_files_and_alignment(tmp_path):
    "The walk reads what GGUFReader reads: big-endian files, and a general.alignment other than 32"
    import gguf
    p = tmp_path / 'be.gguf'
    w = gguf.GGUFWriter(p, arch='llama', endianess=gguf.GGUFEndian.BIG)
    w.data_alignment = 64; w.add_uint32('general.alignment', 64); w.add_token_list([b'a', b'bc'])
    for name, rows in (('w', 4), ('v', 3)): w.add_tensor(name, np.zeros((rows, 32), '>f4'), raw_dtype=gguf.GGMLQuantizationType.F32)
    w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    info, r = check_gguf(p), gguf.GGUFReader(p)
    ft.test_eq((r.byte_order, r.alignment), ('S', 64))
    ft.test_eq((info['alignment'], info['data_offset'], info['tensors']), (64, r.data_offset, 2))
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(SerializationError, match="tensor 'v': its 384 bytes"): check_gguf(p)


# ---- 1: a file replaced while it is read ----

REPLACER = """
import os, shutil, sys
d, files = sys.argv[1], sys.argv[2:]
i = 0
while not os.path.exists(os.path.join(d, 'stop')):
    src = files[i % len(files)]; tmp = os.path.join(d, f'.replacing{i % 2}')
    shutil.copyfile(src, tmp); os.replace(tmp, os.path.join(d, 'model' + os.path.splitext(src)[1])); i += 1
    with open(os.path.join(d, 'replaced'), 'ab') as f: f.write(b'.')   # its size: the replacements so far
print(i)
"""

def _two_models(tmp_path, ext='.safetensors'):
    "Two models with the same tensor names and shapes but other values, and headers of other lengths (other offsets)"
    rng = np.random.default_rng(0)
    names = [f't{i}' for i in range(6)]
    models = [{k: rng.standard_normal((32, 64)).astype(np.float32) for k in names} for _ in range(2)]
    metas = [ModelMetadata('a', 'x'), ModelMetadata('b' * 100, 'x').with_custom('pad', 'p' * 333)]
    paths = [save_model(Model(meta, m), tmp_path / f'{c}{ext}') for meta, m, c in zip(metas, models, 'ab')]
    return names, models, paths

def _which(m, names, models):
    "0 or 1: the model whose every tensor `m` holds exactly; None for a mix"
    got = {k: np.array(m.get_parameter(k)) for k in names}
    return next((i for i, x in enumerate(models) if all(np.array_equal(got[k], x[k]) for k in names)), None)

def test_loads_racing_a_replacing_writer_are_never_mixed(tmp_path):
    "Before: 300 lazy and 300 eager loads racing os.replace gave 3 and 6 mixed models (and 6 errors); now none"
    names, models, paths = _two_models(tmp_path)
    target = tmp_path / 'model.safetensors'; target.write_bytes(paths[0].read_bytes())
    p = subprocess.Popen([sys.executable, '-c', REPLACER, str(tmp_path), *map(str, paths)], stdout=subprocess.PIPE, text=True)
    counts = dict(lazy=[0, 0], eager=[0, 0], typed=0)
    rounds, deadline = 0, time.monotonic() + 120
    def loads(): return sum(counts['lazy']) + sum(counts['eager'])
    def replaced_so_far(): return (tmp_path / 'replaced').stat().st_size if (tmp_path / 'replaced').exists() else 0
    try:   # 300 rounds at least, and on a loaded machine on until the writer has replaced the file 60 times
        while rounds < 300 or ((replaced_so_far() < 60 or loads() <= 500) and time.monotonic() < deadline):
            rounds += 1
            for lazy in (True, False):
                try: m = load_model(target, lazy=lazy)
                except SerializationError: counts['typed'] += 1; continue
                i = _which(m, names, models)
                assert i is not None, f"a {'lazy' if lazy else 'eager'} load mixed the two files"
                counts['lazy' if lazy else 'eager'][i] += 1
    finally:
        (tmp_path / 'stop').touch(); replaced = int(p.communicate(timeout=30)[0])
    assert replaced > 50 and loads() > 500, (replaced, counts)

def test_lazy_model_reads_the_file_it_opened(tmp_path):
    "Its file replaced before any tensor is read, a lazy model still reads the file it opened (it used to map the path again)"
    names, models, paths = _two_models(tmp_path)
    target = tmp_path / 'model.safetensors'
    for first, second in ((0, 1), (1, 0)):
        target.write_bytes(paths[first].read_bytes())
        lazy, reader = load_model(target, lazy=True), SafeTensorsReader(target)
        (tmp_path / 'new').write_bytes(paths[second].read_bytes()); os.replace(tmp_path / 'new', target)
        ft.test_eq(_which(lazy, names, models), first)
        ft.test_eq(_which(Model(None, reader.read_all()), names, models), first)
        ft.test_eq(_which(load_model(target), names, models), second)

def test_quantized_gguf_racing_a_replacing_writer(tmp_path):
    "A GGUF is checked and read from one open file: each load gives one file's tensors or a typed error"
    from entrenar.quantize import quantize_model, load_quantized
    names, models, paths = _two_models(tmp_path)
    ggufs = [tmp_path / f'{p.stem}.gguf' for p in paths]
    for p, g in zip(paths, ggufs): quantize_model(p, g, bits=8)
    want = [{n: load_quantized(g)[n].dequantize() for n in names} for g in ggufs]
    target = tmp_path / 'model.gguf'; target.write_bytes(ggufs[0].read_bytes())
    p = subprocess.Popen([sys.executable, '-c', REPLACER, str(tmp_path), *map(str, ggufs)], stdout=subprocess.PIPE, text=True)
    seen, rounds = [0, 0], 0
    try:   # typed errors are allowed: go on until 100 loads have given a whole file (a loaded machine gives more errors)
        while sum(seen) < 100 and rounds < 3000:
            rounds += 1
            try: q = load_quantized(target); got = {n: q[n].dequantize() for n in names}
            except SerializationError: continue
            i = next((i for i, w in enumerate(want) if all(np.array_equal(got[n], w[n]) for n in names)), None)
            assert i is not None, "a GGUF load mixed the two files"
            seen[i] += 1
    finally:
        (tmp_path / 'stop').touch(); p.communicate(timeout=30)
    assert sum(seen) >= 100, (seen, rounds)

# ---- 5: impossible shapes and broken quantization tables give a typed error naming file and tensor ----

def _safetensors_with(tmp_path, header, data=b''):
    hb = json.dumps(header).encode()
    p = tmp_path / 'shape.safetensors'; p.write_bytes(struct.pack('<Q', len(hb)) + hb + data)
    return p

@pytest.mark.parametrize('lazy', [False, True])
def test_empty_tensor_of_impossible_shape(run_cli, tmp_path, lazy):
    "shape [0, 2**64]: a raw ValueError (lazy) or an IoError (eager) before; now SerializationError naming file and tensor"
    p = _safetensors_with(tmp_path, {'w': dict(dtype='F32', shape=[0, 2**64], data_offsets=[0, 0])})
    with pytest.raises(SerializationError, match=r"shape.safetensors: tensor 'w': shape \[0, 18446744073709551616\] is too large"):
        load_model(p, lazy=lazy)
    assert "tensor 'w'" in one_error_line(run_cli('info', p))

def test_json_shape_too_large_for_numpy(run_cli, tmp_path):
    "[0, 2**47-1, 2**47-1]: a raw ValueError from np.zeros before"
    p = tmp_path / 'huge.json'
    p.write_text('{"metadata":{"name":"m","architecture":"a"},"parameters":[{"name":"w","shape":[0,140737488355327,140737488355327],"dtype":"f32"}],"data":[]}')
    with pytest.raises(SerializationError, match="huge.json: tensor 'w': shape .* is too large"): load_model(p)
    assert "huge.json: tensor 'w'" in one_error_line(run_cli('info', p))

@pytest.mark.parametrize('change,words', [(('"dtype": "F32", ', ''), 'gives no dtype'), (('[2, 32]', '2'), 'shape 2 is not a list')])
def test_quantized_table_entry_broken(run_cli, tmp_path, change, words):
    "A quantized JSON entry without dtype, or with shape 2: raw KeyError/TypeError (an 'internal error' in the CLI) before"
    from entrenar.quantize import dequantize_model, load_quantized
    entry = '{"name": "w", "shape": [2, 32], "dtype": "F32", "scheme": "q8_0", "data": ""}'
    p = tmp_path / 'q.json'; p.write_text('{"format": "entrenar-quantized", "tensors": [' + entry.replace(*change) + ']}')
    with pytest.raises(SerializationError, match=f"q.json: tensor 'w': .*{words}"): load_quantized(p)
    with pytest.raises(SerializationError, match=f"q.json: tensor 'w': .*{words}"): dequantize_model(p)
    line = one_error_line(run_cli('dequantize', p, '--output', tmp_path / 'out.safetensors'))
    assert "q.json: tensor 'w'" in line and words in line, line

def _one_tensor_gguf(offset):
    gstr = lambda b: struct.pack('<Q', len(b)) + b
    head = b'GGUF' + struct.pack('<IQQ', 3, 1, 1) + gstr(b'general.architecture') + struct.pack('<I', 8) + gstr(b'llama')
    head += gstr(b'w') + struct.pack('<IQIQ', 1, 8, 0, offset)
    return head + bytes(-len(head) % 32) + np.arange(16, dtype='<f4').tobytes()

@pytest.mark.parametrize('offset,words', [(2**64 - 32, 'run past the end'), (4, 'not a multiple of the alignment')])
def test_gguf_tensor_offsets_checked(run_cli, tmp_path, offset, words):
    "An offset of 2**64-32 wraps in GGUFReader's uint64 sum (it read the wrong bytes); a misaligned one was accepted"
    from entrenar.gguf import GgufFile
    p = tmp_path / 'off.gguf'; p.write_bytes(_one_tensor_gguf(offset))
    with pytest.raises(SerializationError, match=f"off.gguf: tensor 'w': .*{words}"): GgufFile(p)
    assert words in one_error_line(run_cli('info', p))
    p.write_bytes(_one_tensor_gguf(32))    # an aligned offset inside the file still reads
    ft.test_eq(GgufFile(p).array('w').tolist(), list(range(8, 16)))

# ---- 6: temporary files of killed writers, failed writes ----

@pytest.fixture(scope='module')
def big_models(tmp_path_factory):
    "Three 40 MB models: big enough that writing their merge, conversion or quantization takes a moment"
    d = tmp_path_factory.mktemp('big')
    rng = np.random.default_rng(1)
    for c in 'abc':
        save_model(Model(ModelMetadata(c, 'x'), {f't{i}': rng.standard_normal((1024, 1024)).astype(np.float32) for i in range(10)}),
                   d / f'{c}.safetensors')
    return d

def _temps(folder): return sorted(f.name for f in folder.iterdir() if '.entrenar-tmp-' in f.name)

KILLS = {
    'convert': lambda d, out: ['convert', d / 'a.safetensors', out / 'model.json'],
    'merge-shards': lambda d, out: ['merge', d / 'a.safetensors', d / 'b.safetensors', d / 'c.safetensors', '--method', 'ties',
                                    '--shard-size', '8MB', '--output', out / 'model.safetensors', '--quiet'],
    'quantize': lambda d, out: ['quantize', d / 'a.safetensors', '--bits', '4', '--output', out / 'q.json'],
}

@pytest.mark.parametrize('kind', ['convert', 'merge-shards', 'quantize'])
def test_kill_9_leaves_old_output_and_next_run_removes_temps(big_models, tmp_path, kind):
    "kill -9 mid-write: the old output is intact (or absent) and the next run to the same place removes the stale temps"
    out = tmp_path / 'out'; out.mkdir()
    args = KILLS[kind](big_models, out)
    p = subprocess.Popen(entrenar_cmd() + [str(a) for a in args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not _temps(out):
        assert time.time() < deadline and p.poll() is None, f"{kind} finished or failed before it could be killed"
        time.sleep(0.002)
    p.send_signal(signal.SIGKILL); p.wait()
    left = _temps(out)
    assert left and all(f'-{p.pid}-' in n for n in left), left
    ft.test_eq([f.name for f in out.iterdir() if not f.name.startswith('.')], [])   # no output appeared
    r = subprocess.run(entrenar_cmd() + [str(a) for a in args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    ft.test_eq(_temps(out), [])
    assert [f for f in out.iterdir() if not f.name.startswith('.')]

def test_stale_temps_of_live_processes_and_other_files_are_kept(tmp_path):
    "Only our naming, only dead pids of this machine: a live writer's temp (this process, pid 1), another file's, a stranger's stay"
    from entrenar.io import _HOST
    keep = [f'.m.safetensors.entrenar-tmp-{_HOST}-{os.getpid()}-0123abcd', f'.m.safetensors.entrenar-tmp-{_HOST}-1-0123abcd',
            f'.other.safetensors.entrenar-tmp-{_HOST}-4194305-0123abcd', '.m.safetensors.entrenar-tmp-ffffff-4194305-0123abcd',
            '.m.safetensors.entrenar-tmp-4194305-notours', 'm.safetensors.entrenar-tmp-4194305-0123abcd']
    gone = [f'.m.safetensors.entrenar-tmp-{_HOST}-4194305-0123abcd', '.m.safetensors.entrenar-tmp-4194305-89abcdef']
    for n in keep + gone: (tmp_path / n).write_text('x')
    save_model(Model(None, {'w': np.ones(2, np.float32)}), tmp_path / 'm.safetensors')
    ft.test_eq(sorted(f.name for f in tmp_path.iterdir()), sorted(keep + ['m.safetensors']))

def _limited(args, limit, timeout=300):
    "Run `entrenar ARGS` with files limited to `limit` bytes (RLIMIT_FSIZE): writes past it fail with EFBIG"
    pre = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return subprocess.run(entrenar_cmd() + [str(a) for a in args], capture_output=True, text=True, timeout=timeout, preexec_fn=pre)

@pytest.mark.parametrize('output,extra', [('out.safetensors', []), ('out.json', []), ('q.gguf', ['--type', 'q8_0'])])
def test_efbig_is_named_and_leaves_nothing(tmp_path, output, extra):
    "A write over the file size limit: the error names EFBIG; no output and no temporary file is left (ftruncate leaked one)"
    cmd = (['quantize', MODELS / 'tiny-llama-a', *extra, '--output', tmp_path / output] if output.endswith('.gguf')
           else ['convert', MODELS / 'tiny-llama-a', tmp_path / output])
    line = one_error_line(_limited(cmd, 64 * 1024))
    assert 'File too large (EFBIG)' in line and output in line, line
    ft.test_eq(list(tmp_path.iterdir()), [])
