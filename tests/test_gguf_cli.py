"""`entrenar` with GGUF files, run as a user runs it (in a subprocess): the llama.cpp layout, round trips, and bad input.

What llama.cpp itself says about these files is in test_gguf_llama_cpp.py.
"""
import json, shutil
import numpy as np
import pytest
import fastcore.test as ft
from conftest import MODELS, one_error_line
from entrenar.gguf import GgufFile, gguf_model
from entrenar.io import Model, load_model, save_model

TINY = MODELS / 'tiny-llama'

def _copy(tmp_path, dtype=None, files=('config.json', 'tokenizer.model', 'tokenizer_config.json')):
    "The tiny model in a folder of its own, optionally cast to `dtype`"
    d = tmp_path / f'tiny-{dtype or "f32"}'
    d.mkdir()
    m = load_model(TINY)
    params = {n: (a.astype(dtype) if dtype else a) for n, a in m}
    save_model(Model(m.metadata, params), d / 'model.safetensors')
    for f in files: shutil.copy(TINY / f, d / f)
    return d

@pytest.mark.parametrize('dtype,kind', [(None, 'f32'), ('float16', 'f16'), ('bfloat16', 'bf16')])
def test_round_trip_is_bit_identical(run_cli, tmp_path, dtype, kind):
    "HF -> GGUF -> HF gives back every tensor bit for bit (2-d tensors in their type; norms come back as F32 values that are equal)"
    import ml_dtypes
    src = _copy(tmp_path, dtype and np.dtype(getattr(ml_dtypes, dtype, dtype)))
    ft.test_eq(run_cli('convert', src, tmp_path / 'm.gguf', '--type', kind, '--quiet').returncode, 0)
    ft.test_eq(run_cli('convert', tmp_path / 'm.gguf', tmp_path / 'back', '--quiet').returncode, 0)
    a, b = load_model(src), load_model(tmp_path / 'back')
    ft.test_eq(sorted(a.names), sorted(b.names))
    for n in a.names:
        x, y = a[n], b[n]
        if x.ndim == 2: ft.test_eq((x.dtype, x.tobytes()), (y.dtype, y.tobytes()))
        else: ft.test_eq(x.astype(np.float32), y)
    cfg = json.loads((tmp_path / 'back' / 'config.json').read_text())
    ft.test_eq(cfg['torch_dtype'], {'f32': 'float32', 'f16': 'float16', 'bf16': 'bfloat16'}[kind])
    for k, v in json.loads((TINY / 'config.json').read_text()).items():
        if k != 'torch_dtype': ft.test_eq(cfg[k], v)

def test_type_names_are_llama_quantizes(run_cli, tmp_path):
    for name, code in (('Q8_0', 7), ('q4_1', 3), ('Q5_0', 8), ('f16', 1), ('BF16', 32)):
        out = tmp_path / f'{name}.gguf'
        ft.test_eq(run_cli('quantize', TINY, '--type', name, '--output', out, '--quiet').returncode, 0)
        ft.test_eq(GgufFile(out).get('general.file_type'), code)
    for name, code in (('Q4_K_M', 15), ('q3_k', 12), ('Q6_K', 18)):   # q3_k: llama-quantize's alias of Q3_K_M
        ft.test_eq(run_cli('quantize', TINY, '--type', name, '--output', tmp_path / f'{name}.gguf', '--quiet').returncode, 0)
        ft.test_eq(GgufFile(tmp_path / f'{name}.gguf').get('general.file_type'), code)
    r = run_cli('quantize', TINY, '--type', 'IQ2_XS', '--output', tmp_path / 'k.gguf')
    assert 'unknown GGUF type' in one_error_line(r)
    assert not (tmp_path / 'k.gguf').exists()

def test_norms_stay_f32_and_include_1d_is_refused(run_cli, tmp_path):
    ft.test_eq(run_cli('quantize', TINY, '--type', 'q4_0', '--output', tmp_path / 'a.gguf', '--quiet').returncode, 0)
    f = GgufFile(tmp_path / 'a.gguf')
    ft.test_eq({f.type_of(n) for n in f.tensors if n.endswith('_norm.weight')}, {'F32'})
    ft.test_eq(f.type_of('output.weight'), 'Q8_0')   # llama-quantize's head type (Q6_K falls back to Q8_0 on rows of 128)
    r = run_cli('quantize', TINY, '--type', 'q4_0', '--include-1d', '--output', tmp_path / 'b.gguf')
    assert '--include-1d' in one_error_line(r) and not (tmp_path / 'b.gguf').exists()
    ft.test_eq(run_cli('quantize', TINY, '--bits', '4', '--include-1d', '--tensors-only', '--output', tmp_path / 'c.gguf', '--quiet').returncode, 0)

def test_missing_tokenizer_and_unknown_architecture(run_cli, tmp_path):
    bare = _copy(tmp_path, files=('config.json',))
    r = run_cli('quantize', bare, '--type', 'q8_0', '--output', tmp_path / 'x.gguf')
    assert 'no tokenizer files' in one_error_line(r) and not (tmp_path / 'x.gguf').exists()
    ft.test_eq(run_cli('quantize', bare, '--type', 'q8_0', '--tensors-only', '--output', tmp_path / 'x.gguf', '--quiet').returncode, 0)
    ft.test_eq('tokenizer.ggml.tokens' in GgufFile(tmp_path / 'x.gguf').keys, False)
    (bare / 'config.json').write_text(json.dumps({**json.loads((TINY / 'config.json').read_text()), 'architectures': ['GPT2LMHeadModel']}))
    r = run_cli('convert', bare, tmp_path / 'y.gguf')
    line = one_error_line(r)
    assert "'GPT2LMHeadModel'" in line and 'LlamaForCausalLM' in line, line
    assert not (tmp_path / 'y.gguf').exists()

def test_requantize_warns_and_never_overwrites_its_input(run_cli, tmp_path):
    q8 = tmp_path / 'q8.gguf'
    run_cli('quantize', TINY, '--type', 'q8_0', '--output', q8, '--quiet')
    before = q8.read_bytes()
    r = run_cli('quantize', q8, '--type', 'q4_0', '--output', tmp_path / 'q4.gguf')
    ft.test_eq(r.returncode, 0)
    assert 'requantizing 16 already quantized tensors' in r.stderr, r.stderr
    r = run_cli('quantize', q8, '--type', 'q4_0', '--output', q8)
    assert 'is also an input' in one_error_line(r)
    ft.test_eq(q8.read_bytes(), before)

def test_info_and_dequantize(run_cli, tmp_path):
    out = tmp_path / 'a.gguf'
    run_cli('quantize', TINY, '--type', 'q5_1', '--output', out, '--quiet')
    r = run_cli('info', out, '--json')
    d = json.loads(r.stdout)
    ft.test_eq((d['architecture'], d['tensor_types'], d['hparams']['block_count'], d['tokenizer']['tokens']), ('llama', {'Q5_1': 15, 'F32': 5, 'Q8_0': 1}, 2, 512))
    r = run_cli('info', out, '--tensors')
    assert 'blk.1.ffn_down.weight' in r.stdout and 'Q5_1' in r.stdout
    ft.test_eq(run_cli('dequantize', out, '--output', tmp_path / 'd.safetensors', '--quiet').returncode, 0)
    d, ref = load_model(tmp_path / 'd.safetensors'), load_model(TINY)
    ft.test_eq(sorted(d.names), sorted(ref.names))
    np.testing.assert_allclose(d['model.layers.0.self_attn.k_proj.weight'], ref['model.layers.0.self_attn.k_proj.weight'], atol=0.02)

def test_broken_gguf_files_give_one_error_line(run_cli, tmp_path):
    good = tmp_path / 'good.gguf'
    run_cli('quantize', TINY, '--type', 'q4_0', '--output', good, '--quiet')
    data = good.read_bytes()
    rng = np.random.default_rng(0)
    for i, bad in enumerate([data[:100], data[:5000], data[:len(data) // 2], b'GGUF' + bytes(20), b'not a gguf at all' * 10,
                             data[:8] + (2**40).to_bytes(8, 'little') + data[16:]]):
        p = tmp_path / f'bad{i}.gguf'
        p.write_bytes(bad)
        for cmd in (['info', p], ['convert', p, tmp_path / f'out{i}'], ['quantize', p, '--type', 'q8_0', '--output', tmp_path / f'out{i}.gguf']):
            line = one_error_line(run_cli(*cmd))
            assert f'bad{i}.gguf' in line, line
        assert not (tmp_path / f'out{i}').exists() and not (tmp_path / f'out{i}.gguf').exists()

def test_mutated_headers_raise_the_typed_error(tmp_path):
    "Random byte flips in the header: a SerializationError or a file that still reads, never another exception"
    from entrenar.errors import SerializationError
    from entrenar.gguf import to_gguf
    good = tmp_path / 'good.gguf'
    to_gguf(TINY, good, 'q8_0')
    data, rng = bytearray(good.read_bytes()), np.random.default_rng(1)
    head = 24 + 2000
    for i in range(150):
        d = bytearray(data)
        for _ in range(rng.integers(1, 4)): d[rng.integers(0, head)] = rng.integers(0, 256)
        p = tmp_path / 'm.gguf'; p.write_bytes(d)
        try:
            m = gguf_model(p)
            for n in m.names[:3]: m[n]
        except SerializationError: pass
