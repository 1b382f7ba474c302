"`entrenar quantize` and `entrenar dequantize`, run as a user runs them: in a subprocess"
import json
import numpy as np
import pytest
import fastcore.test as ft
import gguf, safetensors.numpy
from conftest import MODELS, one_error_line
from entrenar.io import load_model, save_model, Model, ModelMetadata
from entrenar.quantize import load_quantized, Q4_0, Q8_0

BASE = MODELS / 'tiny-llama' / 'model.safetensors'

def test_help_lists_quantize(run_cli):
    r = run_cli('--help')
    ft.test_eq(r.returncode, 0)
    for cmd in ('quantize', 'dequantize'): assert cmd in r.stdout
    r = run_cli('quantize', '--help')
    for opt in ('--bits', '--method', '--per-channel', '--per-tensor', '--block-size', '--format', '--report', '--allow-nonfinite'):
        assert opt in r.stdout, opt

@pytest.mark.parametrize('ext', ['json', 'safetensors', 'gguf'])
def test_quantize_and_back(run_cli, tmp_path, ext):
    out = tmp_path / f'q4.{ext}'
    only = ['--tensors-only'] if ext == 'gguf' else []   # entrenar's own tensor file (the llama.cpp layout: test_gguf_cli.py)
    r = run_cli('quantize', BASE, '--bits', '4', '--method', 'symmetric', '--output', out, *only)
    ft.test_eq(r.returncode, 0)
    assert 'quantized 16 tensors to q4_0, kept 5' in r.stdout, r.stdout
    assert 'x smaller' in r.stdout and f'wrote {out}' in r.stdout
    q, ref = load_quantized(out), load_model(BASE)
    w = ref.get_parameter('model.layers.0.mlp.up_proj.weight')
    ft.test_eq(q['model.layers.0.mlp.up_proj.weight'].data.tobytes(), gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0).tobytes())
    back = tmp_path / f'back-{ext}.safetensors'
    r = run_cli('dequantize', out, '--output', back)
    ft.test_eq(r.returncode, 0)
    m = load_model(back)
    ft.test_eq(m.names, ref.names)
    ft.test_eq(m.metadata.name, ref.metadata.name)
    for n, a in ref:
        b = m.get_parameter(n)
        ft.test_eq((b.dtype, b.shape), (a.dtype, a.shape))
        if a.ndim == 1: ft.test_eq(b.tobytes(), a.tobytes())   # norms are kept
        else: ft.test_close(b, a, eps=float(abs(a).max()) / 7)

def test_tensors_only_gguf_file_is_ggml(run_cli, tmp_path):
    out = tmp_path / 'q8.gguf'
    ft.test_eq(run_cli('quantize', BASE, '--bits', '8', '--tensors-only', '--output', out, '--quiet').returncode, 0)
    r = gguf.GGUFReader(out)
    ft.test_eq(r.fields['general.architecture'].contents(), 'LlamaForCausalLM')
    ft.test_eq(r.fields['general.quantization_version'].contents(), 2)
    ref = load_model(BASE)
    for t in r.tensors:
        a = ref.get_parameter(t.name)
        if a.ndim == 2:
            ft.test_eq(t.tensor_type, gguf.GGMLQuantizationType.Q8_0)
            ft.test_eq(t.data.tobytes(), gguf.quants.quantize(a, gguf.GGMLQuantizationType.Q8_0).tobytes())
            ft.test_eq([int(s) for s in t.shape], list(a.shape[::-1]))
        else: ft.test_eq(t.data.tobytes(), a.tobytes())

def test_safetensors_file_is_readable(run_cli, tmp_path):
    out = tmp_path / 'c.safetensors'
    ft.test_eq(run_cli('quantize', BASE, '--bits', '4', '--method', 'asymmetric', '--per-channel', '--output', out, '--quiet').returncode, 0)
    st = safetensors.numpy.load_file(out)
    ft.test_eq(st['lm_head.weight'].dtype, np.uint8)
    ft.test_eq(st['lm_head.weight'].shape, (512 * 128 // 2,))
    ft.test_eq(st['lm_head.weight::scale'].shape, (512,))
    ft.test_eq(st['lm_head.weight::zero_point'].dtype, np.int64)
    ft.test_eq(load_quantized(out).settings['scheme'], 'int4_asym_channel')

def test_report_table(run_cli, tmp_path):
    r = run_cli('quantize', BASE, '--format', 'q5_1', '--report', '--output', tmp_path / 'r.json')
    ft.test_eq(r.returncode, 0)
    lines = r.stdout.splitlines()
    assert lines[0].split() == ['tensor', 'scheme', 'bytes', 'RMSE', 'rel', 'RMSE', 'SQNR', 'dB', 'max', 'err'], lines[0]
    rows = [l for l in lines if l.startswith('model.layers.0.self_attn.q_proj.weight')]
    ft.test_eq(len(rows), 1)
    rel = float(rows[0].split()[-3].rstrip('%'))
    assert 1 < rel < 6, rows[0]
    assert sum('kept: 1-d (norm or bias)' in l for l in lines) == 5

def test_per_tensor_and_include_1d(run_cli, tmp_path):
    out = tmp_path / 't.json'
    r = run_cli('quantize', BASE, '--bits', '8', '--per-tensor', '--include-1d', '--output', out)
    ft.test_eq(r.returncode, 0)
    assert 'quantized 21 tensors to int8_sym_tensor, kept 0' in r.stdout, r.stdout
    d = json.loads(out.read_text())
    ft.test_eq((d['format'], d['quantization']['granularity'], len(d['tensors'])), ('entrenar-quantized', 'tensor', 21))

def test_nonfinite(run_cli, tmp_path):
    src = tmp_path / 'nan.safetensors'
    w = np.ones((4, 32), np.float32); w[2, 5] = np.nan
    save_model(Model(ModelMetadata('nan', 'test'), {'ok': np.ones((4, 32), np.float32), 'bad': w}), src)
    out = tmp_path / 'nan.gguf'
    line = one_error_line(run_cli('quantize', src, '--bits', '8', '--tensors-only', '--output', out))
    assert "tensor 'bad'" in line and '--allow-nonfinite' in line, line
    assert not out.exists()
    r = run_cli('quantize', src, '--bits', '8', '--tensors-only', '--output', out, '--allow-nonfinite', '--report')
    ft.test_eq(r.returncode, 0)
    assert 'kept: non-finite values' in r.stdout
    back = tmp_path / 'back.safetensors'
    ft.test_eq(run_cli('dequantize', out, '--output', back, '--quiet').returncode, 0)
    ft.test_eq(load_model(back).get_parameter('bad').tobytes(), w.tobytes())

@pytest.mark.parametrize('args,msg', [
    (['--bits', '16'], 'choose 2 to 8'),
    (['--bits', '4', '--method', 'fancy'], "unknown method 'fancy'"),
    (['--bits', '8', '--method', 'asymmetric'], 'no ggml block format'),
    (['--bits', '4', '--block-size', '64'], 'block size 64'),
    (['--format', 'iq2_xs'], 'unknown block format'),
    (['--bits', '4', '--per-channel', '--out-ext', 'gguf'], 'GGUF holds ggml block formats only'),
    (['--bits', '4', '--out-ext', 'bin'], 'use .json, .safetensors or .gguf'),
    (['--bits', '4', '--missing'], 'no such file'),
    ([], '--bits'),
])
def test_bad_requests_one_line_no_output(run_cli, tmp_path, args, msg):
    ext = 'json'
    if '--out-ext' in args: i = args.index('--out-ext'); ext = args[i + 1]; args = args[:i] + args[i + 2:]
    src = BASE
    if '--missing' in args: args = [a for a in args if a != '--missing']; src = tmp_path / 'missing.safetensors'
    out = tmp_path / f'out.{ext}'
    line = one_error_line(run_cli('quantize', src, *args, '--output', out))
    assert msg in line, line
    ft.test_eq(sorted(p.name for p in tmp_path.iterdir()), [])

def test_dequantize_bad_inputs(run_cli, tmp_path):
    line = one_error_line(run_cli('dequantize', tmp_path / 'none.json', '--output', tmp_path / 'o.safetensors'))
    assert 'no such file' in line
    line = one_error_line(run_cli('dequantize', BASE, '--output', tmp_path / 'o.safetensors'))
    assert 'not a quantized model' in line
    (tmp_path / 'broken.json').write_text('{"format": "entrenar-quantized", "tensors": [')
    line = one_error_line(run_cli('dequantize', tmp_path / 'broken.json', '--output', tmp_path / 'o.safetensors'))
    assert 'broken.json' in line
    ft.test_eq(sorted(p.name for p in tmp_path.iterdir()), ['broken.json'])

def test_output_is_not_input(run_cli, tmp_path):
    q = tmp_path / 'q.json'
    ft.test_eq(run_cli('quantize', BASE, '--bits', '8', '--output', q, '--quiet').returncode, 0)
    before = q.read_bytes()
    line = one_error_line(run_cli('dequantize', q, '--output', q))
    assert 'is also an input' in line
    ft.test_eq(q.read_bytes(), before)

def test_dequantize_to_text_formats(run_cli, tmp_path):
    q = tmp_path / 'q.safetensors'
    ft.test_eq(run_cli('quantize', BASE, '--format', 'q5_0', '--output', q, '--quiet').returncode, 0)
    outs = [tmp_path / n for n in ('d.safetensors', 'd.json', 'd.yaml', 'folder')]
    for o in outs:
        r = run_cli('dequantize', q, '--output', o)
        ft.test_eq(r.returncode, 0)
        assert f'wrote {o} (21 tensors' in r.stdout, r.stdout
    ref = load_model(outs[0])
    for o in outs[1:]:
        m = load_model(o)
        for n, a in ref: ft.test_eq(m.get_parameter(n).tobytes(), a.tobytes())
