"The `entrenar info` and `entrenar convert` commands, run as a user runs them: in a subprocess"
import json
import numpy as np
import fastcore.test as ft
from conftest import MODELS, one_error_line
from entrenar.io import load_model

BASE = MODELS / 'tiny-llama' / 'model.safetensors'

def test_help_lists_subcommands(run_cli):
    r = run_cli('--help')
    ft.test_eq(r.returncode, 0)
    for cmd in ('info', 'convert'): assert cmd in r.stdout

def test_info(run_cli):
    r = run_cli('info', BASE, '--tensors')
    ft.test_eq(r.returncode, 0)
    assert 'architecture: LlamaForCausalLM' in r.stdout and 'parameters:   459,392' in r.stdout
    assert 'model.layers.1.self_attn.q_proj.weight' in r.stdout and '[128, 128]' in r.stdout
    d = json.loads(run_cli('info', MODELS / 'tiny-llama', '--json').stdout)
    ft.test_eq((d['tensors'], d['parameters'], d['bytes_by_dtype']), (21, 459392, {'F32': 459392 * 4}))

def test_convert_round_trip(run_cli, tmp_path):
    for ext in ('json', 'yaml', 'json.gz', 'safetensors'):
        r = run_cli('convert', BASE, tmp_path / f'm.{ext}')
        ft.test_eq(r.returncode, 0)
        back, ref = load_model(tmp_path / f'm.{ext}'), load_model(BASE)
        ft.test_eq(back.names, ref.names)
        for n, a in ref: assert back.get_parameter(n).tobytes() == a.tobytes(), n
        ft.test_eq(back.metadata.custom, ref.metadata.custom)

def test_convert_sharded(run_cli, tmp_path):
    r = run_cli('convert', BASE, tmp_path / 'out', '--shard-size', '500kB')
    ft.test_eq(r.returncode, 0)
    files = sorted(p.name for p in (tmp_path / 'out').iterdir())
    ft.test_eq(files[-1], 'model.safetensors.index.json')
    ft.test_eq(files[0], 'model-00001-of-%05d.safetensors' % (len(files) - 1)); assert len(files) >= 5
    idx = json.loads((tmp_path / 'out' / 'model.safetensors.index.json').read_text())
    ft.test_eq(idx['metadata']['total_size'], 459392 * 4)
    ft.test_eq(run_cli('info', tmp_path / 'out', '--json').returncode, 0)

def test_bad_inputs_one_line_no_output(run_cli, tmp_path):
    out = tmp_path / 'out.json'
    line = one_error_line(run_cli('convert', tmp_path / 'nope.safetensors', out))
    assert 'nope.safetensors' in line and 'no such file' in line
    bad = tmp_path / 'bad.safetensors'; bad.write_bytes(BASE.read_bytes()[:5000])
    line = one_error_line(run_cli('convert', bad, out))
    assert 'bad.safetensors' in line
    line = one_error_line(run_cli('convert', BASE, tmp_path / 'out.bin'))
    assert 'out.bin' in line and 'cannot tell the format' in line
    copy = tmp_path / 'copy.safetensors'; copy.write_bytes(BASE.read_bytes())
    line = one_error_line(run_cli('convert', copy, copy))
    assert 'is also an input' in line
    assert copy.read_bytes() == BASE.read_bytes()
    ft.test_eq(sorted(p.name for p in tmp_path.iterdir()), ['bad.safetensors', 'copy.safetensors'])

def test_debug_shows_traceback(run_cli, tmp_path):
    r = run_cli('info', tmp_path / 'nope.json', '--debug')
    assert r.returncode != 0 and 'Traceback' in r.stderr and 'IoError' in r.stderr

def test_usage_error_exits_2(run_cli):
    ft.test_eq(run_cli('info').returncode, 2)
    ft.test_eq(run_cli('frobnicate').returncode, 2)
