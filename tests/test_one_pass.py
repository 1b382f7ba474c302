"One pass from recipe to a runnable GGUF (issue 18): the bytes of the three steps, run by llama.cpp, refused up front"
import json, shutil
from pathlib import Path
import numpy as np
import pytest
import fastcore.test as ft
from conftest import MODELS, one_error_line
from entrenar.gguf import GgufFile, to_gguf
from entrenar.io import Model, load_model, save_model
from entrenar.merge import merge_files

BASE, A, B, C = (MODELS / f'tiny-llama{k}' for k in ('', '-a', '-b', '-c'))
PROMPT = 'Once upon a time'

def recipe(folder, base, models, method='ties'):
    "A mergekit recipe file: `models` onto `base`"
    lines = [f"merge_method: {method}", f"base_model: {base}", "models:"]
    for m, w in zip(models, (0.5, 0.3, 0.2)): lines += [f"  - model: {m}", f"    parameters: {{weight: {w}, density: 0.6}}"]
    p = Path(folder) / 'recipe.yml'
    p.write_text('\n'.join(lines) + '\n')
    return p

def same_bytes(a:Path, b:bytes):
    "`a` holds the bytes `b`; on a difference, say where (not the whole files)"
    got = Path(a).read_bytes()
    if got != b:
        i = next((k for k, (x, y) in enumerate(zip(got, b)) if x != y), min(len(got), len(b)))
        raise AssertionError(f"{a}: {len(got)} bytes vs {len(b)}; first difference at {i}: {got[max(0, i - 40):i + 40]!r} vs {b[max(0, i - 40):i + 40]!r}")

def three_steps(run_cli, rec, folder, type, *extra):
    "The chain the one pass replaces: merge to a float32 checkpoint, then quantize it to the GGUF"
    steps = Path(folder) / 'merged'
    ft.test_eq(run_cli('merge', '--config', rec, '--out-dtype', 'float32', '--output', steps, '--quiet').returncode, 0)
    ft.test_eq(run_cli('quantize', steps, '--type', type, *extra, '--output', Path(folder) / 'steps.gguf', '--quiet').returncode, 0)
    return (Path(folder) / 'steps.gguf').read_bytes()

@pytest.mark.parametrize('type', ['q4_k_m', 'q8_0', 'f16', 'q3_k_s'])
def test_same_bytes_as_the_three_steps(run_cli, tmp_path, type):
    rec = recipe(tmp_path, BASE, [A, B, C])
    r = run_cli('merge', '--config', rec, '--type', type, '--output', tmp_path / 'merged.gguf', '--quiet')
    ft.test_eq((r.returncode, r.stderr), (0, ''))
    same_bytes(tmp_path / 'merged.gguf', three_steps(run_cli, rec, tmp_path, type))
    ft.test_eq(sorted(p.name for p in tmp_path.iterdir()), ['merged', 'merged.gguf', 'recipe.yml', 'steps.gguf'])   # no intermediate files

def test_with_an_importance_matrix_and_both_outputs(run_cli, tmp_path):
    "--imatrix weighs the quantization as in the chain; --gguf gives the checkpoint too, from one read"
    from entrenar.imatrix import Imatrix, write_imatrix
    rec = recipe(tmp_path, BASE, [A, B])
    f = GgufFile(to_gguf(BASE, tmp_path / 'shape.gguf', 'f32').path)
    rng = np.random.default_rng(3)
    sums = {n: rng.random((1, f.shape(n)[-1])).astype(np.float32) * 10 for n in f.tensors if n.startswith('blk.') and len(f.shape(n)) == 2}
    write_imatrix(tmp_path / 'im.gguf', Imatrix(sums, {n: np.array([100], np.float32) for n in sums}, ['test'], 4, 32))
    r = run_cli('merge', '--config', rec, '--type', 'q4_k_m', '--imatrix', tmp_path / 'im.gguf', '--gguf', tmp_path / 'merged.gguf',
                '--out-dtype', 'float32', '--output', tmp_path / 'merged', '--quiet')
    ft.test_eq((r.returncode, r.stderr), (0, ''))
    (tmp_path / 'chain').mkdir()
    steps = three_steps(run_cli, rec, tmp_path / 'chain', 'q4_k_m', '--imatrix', tmp_path / 'im.gguf')
    same_bytes(tmp_path / 'merged.gguf', steps)
    ours, chain = load_model(tmp_path / 'merged'), load_model(tmp_path / 'chain' / 'merged')
    for n in ours.names: ft.test_eq(ours.get_parameter(n), chain.get_parameter(n))
    assert (tmp_path / 'merged' / 'config.json').exists() and (tmp_path / 'merged' / 'tokenizer.model').exists()

def test_check_reports_and_reads_back(run_cli, tmp_path):
    rec = recipe(tmp_path, BASE, [A, B, C])
    r = run_cli('merge', '--config', rec, '--type', 'q4_0', '--check', '--quiet', '--output', tmp_path / 'm.gguf')
    ft.test_eq(r.returncode, 0)
    assert 'check: 21 tensors read back' in r.stdout and 'mean SQNR' in r.stdout, r.stdout
    worst = [l for l in r.stdout.splitlines() if 'SQNR' in l and 'dB  rel RMSE' in l]
    ft.test_eq(len(worst), 5)
    sqnr = [float(l.split('SQNR')[1].split('dB')[0]) for l in worst]
    ft.test_eq(sqnr, sorted(sqnr))   # worst first
    assert 15 < sqnr[0] < 40, sqnr

def test_bad_input_is_refused_before_writing(run_cli, tmp_path):
    notok = tmp_path / 'no-tokenizer'; shutil.copytree(BASE, notok)
    for f in notok.glob('tokenizer*'): f.unlink()
    r = run_cli('merge', '--config', recipe(tmp_path, notok, [A, B]), '--type', 'q4_0', '--output', tmp_path / 'out.gguf')
    assert 'no tokenizer files' in one_error_line(r), r.stderr
    r = run_cli('merge', BASE / 'model.safetensors', A / 'model.safetensors', '--method', 'linear', '--type', 'q8_0', '--output', tmp_path / 'out.gguf')
    assert "needs the base's config.json" in one_error_line(r), r.stderr
    odd = tmp_path / 'odd'; shutil.copytree(BASE, odd)
    m = load_model(odd / 'model.safetensors')
    save_model(Model(m.metadata, [*m.parameters, ('model.layers.0.mlp.extra.weight', np.zeros((4, 64), np.float32))]), odd / 'model.safetensors')
    r = run_cli('merge', odd, odd, '--method', 'linear', '--type', 'q8_0', '--output', tmp_path / 'out.gguf')
    assert "llama.cpp's llama graph has no place for this tensor" in one_error_line(r), r.stderr
    r = run_cli('merge', BASE, A, '--method', 'linear', '--type', 'q4_0', '--output', tmp_path / 'folder')
    assert 'are for a GGUF output' in one_error_line(r), r.stderr
    ft.test_eq(sorted(p.name for p in tmp_path.iterdir()), ['no-tokenizer', 'odd', 'recipe.yml'])

def test_llama_cpp_runs_the_one_pass_file(peers, run_cli, tmp_path):
    rec = recipe(tmp_path, BASE, [A, B, C])
    ft.test_eq(run_cli('merge', '--config', rec, '--type', 'q4_k_m', '--output', tmp_path / 'm.gguf', '--quiet').returncode, 0)
    got = peers.run('llama_run.py', tmp_path / 'm.gguf', PROMPT, 8)
    ft.test_eq(len(got['generated']), 8)

@pytest.fixture(scope='module')
def smol_pair(peers, tmp_path_factory):
    "A real checkpoint (SmolLM2-135M, from its published GGUF) and a fine-tune of it (its weights nudged)"
    d = tmp_path_factory.mktemp('smol')
    from entrenar.gguf import gguf_to_hf
    gguf_to_hf(peers.smollm2, d / 'base')
    m, rng = load_model(d / 'base'), np.random.default_rng(5)
    shutil.copytree(d / 'base', d / 'tuned')
    save_model(Model(m.metadata, [(n, x + (rng.standard_normal(x.shape).astype(x.dtype) * np.float32(0.002) if x.ndim == 2 else 0))
                                  for n, x in m.parameters]), d / 'tuned' / 'model.safetensors')
    return d / 'base', d / 'tuned'

def test_real_checkpoint_pair(peers, run_cli, smol_pair, tmp_path):
    "SLERP of SmolLM2 and its fine-tune to Q4_K_M in one pass: the chain's bytes; llama.cpp says what the chain's file says"
    base, tuned = smol_pair
    (tmp_path / 'recipe.yml').write_text(f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {tuned}\n"
                                         "parameters: {t: 0.5}\ndtype: float32\n")
    r = run_cli('merge', '--config', tmp_path / 'recipe.yml', '--type', 'q4_k_m', '--output', tmp_path / 'merged.gguf', '--quiet', timeout=900)
    ft.test_eq(r.returncode, 0)
    same_bytes(tmp_path / 'merged.gguf', three_steps(run_cli, tmp_path / 'recipe.yml', tmp_path, 'q4_k_m'))   # the name comes from the output's
    got = peers.run('llama_run.py', tmp_path / 'merged.gguf', 'The capital of France is', 6)
    ft.test_eq(len(got['generated']), 6)
