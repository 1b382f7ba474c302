"""Hostile files (issue 16, items 4 and 7): each defect reproduced with a crafted file on disk, and shown fixed.

- the JSON/YAML model reader looked for `data` once per candidate key, rescanning the document each time;
- mergekit recipes expanded YAML aliases, kept the last of duplicate keys and quoted whole values in errors;
- a GGUF whose header claims an array of 2**62 items kept `gguf.GGUFReader` looping for ever;
- YAML model files kept the last of duplicate keys (JSON refuses them).
"""
import struct, subprocess, sys, time
import numpy as np
import pytest
import fastcore.test as ft
from conftest import MODELS, entrenar_cmd, one_error_line
from entrenar.errors import MergeError, SerializationError
from entrenar.io import Model, ModelMetadata, check_gguf, load_model, save_model

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
        assert secs < 1.0, (n, secs)

def test_json_with_3000_top_level_data_keys_is_refused_at_once(tmp_path):
    "30 KB, 3,000 top-level `data` keys: 3.4 s before (6,000: 17 s), now an error naming the file and the key"
    for n in (3000, 30000):
        p = tmp_path / f'dups{n}.json'
        p.write_text(HEAD_JSON + '"data":[],' * (n - 1) + '"data":[1]}')
        secs, e = _timed(load_model, p)
        assert isinstance(e, SerializationError) and f"dups{n}.json: duplicate key 'data'" in str(e), e
        assert secs < 1.0, (n, secs)

def test_yaml_with_thousands_of_data_lines_is_quick(tmp_path):
    "An 8 KB YAML with 1,000 `data:` lines took 6.5 s (18 KB: 25 s); now a handful of tries, then one general parse"
    for n in (1000, 2250, 20000):
        p = tmp_path / f'dups{n}.yaml'
        p.write_text(HEAD_YAML + 'data: []\n' * (n - 1) + 'data: [1]\n')
        secs, e = _timed(load_model, p)
        assert isinstance(e, SerializationError) and f"dups{n}.yaml: duplicate key 'data' (line 4)" in str(e), e
        assert secs < 1.0, (n, secs)
    for n in (1000, 20000):   # `data:` lines inside a multi-line string come before the real one: still found, still quick
        p = tmp_path / f'instring{n}.yaml'
        p.write_text('metadata: {name: m, architecture: a, custom: {note: "x\n' + 'data: [1]\n' * n + '"}}\n'
                     + HEAD_YAML[HEAD_YAML.index('parameters'):] + 'data: [2.5]\n')
        secs, m = _timed(load_model, p)
        assert not isinstance(m, Exception), m
        ft.test_eq(m.get_parameter('w').tolist(), [2.5])
        assert m.metadata.custom['note'].count('data: [1]') == n
        assert secs < 2.0, (n, secs)
    p = tmp_path / 'open.yaml'   # 1,000 `data: [` lines, one `]`: the first candidate is taken and its numbers refused
    p.write_text(HEAD_YAML + 'data: [\n' * 1000 + ']\n')
    secs, e = _timed(load_model, p)
    assert isinstance(e, SerializationError) and 'open.yaml' in str(e) and 'is not a number' in str(e), e
    assert secs < 1.0

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
        assert secs < 1.0, (f, secs)

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
