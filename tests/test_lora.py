"""LoRA both ways against the real peer tools: `entrenar extract-lora` against mergekit-extract-lora, the adapters it
writes loaded by peft, `model+adapter` and `--lora` in `entrenar merge` against peft's merge_and_unload."""
import json, shutil, subprocess
from pathlib import Path
import numpy as np, pytest
import fastcore.test as ft
from conftest import MODELS, one_error_line
from entrenar.io import load_model, save_model, Model, ModelMetadata
from entrenar.lora import fold_adapter, load_adapter

BASE, FT, OTHER = MODELS / 'tiny-llama', MODELS / 'tiny-llama-a', MODELS / 'tiny-llama-b'

def _mergekit_extract(peers, out, rank, *extra):
    exe = Path(peers.python).parent / 'mergekit-extract-lora'
    r = subprocess.run([str(exe), '--model', str(FT), '--base-model', str(BASE), '--out-path', str(out), '--max-rank', str(rank), *extra],
                       capture_output=True, text=True, timeout=600, env={'HF_HUB_OFFLINE': '1', 'PATH': '/usr/bin:/bin'})
    assert r.returncode == 0, r.stderr[-3000:]
    return out

def _tensors(folder):
    return {k: v for k, v in load_model(Path(folder) / 'adapter_model.safetensors').parameters}

def _products(t):
    "module -> B @ A of every LoRA pair; whole tensors as they are"
    out = {}
    for k, v in t.items():
        if '.lora_A.' in k: out[k.replace('.lora_A.weight', '')] = t[k.replace('lora_A', 'lora_B')] @ v
        elif '.lora_B.' not in k: out[k] = v
    return out

@pytest.mark.parametrize('rank', [8, 1000])
def test_extract_equals_mergekit(peers, run_cli, tmp_path, rank):
    mk = _mergekit_extract(peers, tmp_path / 'mk', rank)
    r = run_cli('extract-lora', '--base', BASE, '--model', FT, '--rank', rank, tmp_path / 'ours')
    assert r.returncode == 0, r.stderr
    assert 'relative error' in r.stdout and 'q_proj' in r.stdout, r.stdout
    ours, theirs = _tensors(tmp_path / 'ours'), _tensors(mk)
    ft.test_eq(sorted(ours), sorted(theirs))
    for k in ours: ft.test_eq((k, ours[k].shape, ours[k].dtype), (k, theirs[k].shape, theirs[k].dtype))
    po, pt = _products(ours), _products(theirs)
    for k in po:   # the sign of each singular pair is arbitrary: compare B @ A and the singular values
        np.testing.assert_allclose(po[k], pt[k], rtol=1e-4, atol=1e-6, err_msg=k)
        if '.lora_A.' not in k and po[k].ndim == 2:
            np.testing.assert_allclose(np.linalg.svd(po[k], compute_uv=False), np.linalg.svd(pt[k], compute_uv=False), rtol=1e-4, atol=1e-6)
    a, b = (json.loads((f / 'adapter_config.json').read_text()) for f in (tmp_path / 'ours', mk))
    for c in (a, b): c['target_modules'], c['modules_to_save'] = sorted(c['target_modules']), sorted(c['modules_to_save'])
    ft.test_eq(a, b)
    ft.test_eq(a['r'], min(rank, 128))   # a rank larger than the matrices is clipped to their smaller side, as mergekit does
    assert ('clipped to it' in r.stdout) == (rank > 128), r.stdout
    assert '| model.layers.0.self_attn.q_proj | 128×128 |' in (tmp_path / 'ours' / 'README.md').read_text()

def test_errors_reported_are_the_reconstruction_errors(run_cli, tmp_path):
    r = run_cli('extract-lora', '--base', BASE, '--model', FT, '--rank', 4, tmp_path / 'ad')
    assert r.returncode == 0, r.stderr
    base, fine, t = load_model(BASE), load_model(FT), _tensors(tmp_path / 'ad')
    rows = [l for l in (tmp_path / 'ad' / 'README.md').read_text().splitlines() if l.startswith('| model.')]
    ft.test_eq(len(rows), 14)
    for row in rows:
        module, _, rank, err = [c.strip() for c in row.strip('|').split('|')]
        d = fine[module + '.weight'] - base[module + '.weight']
        ba = t[f'base_model.model.{module}.lora_B.weight'] @ t[f'base_model.model.{module}.lora_A.weight']
        ft.test_close(float(err), np.linalg.norm(d - ba) / np.linalg.norm(d), eps=1e-4)
        ft.test_eq(rank, '4')

def test_peft_loads_extracted_adapter(peers, run_cli, tmp_path):
    "At full rank the adapter reproduces the fine-tune exactly: peft's logits with it equal the fine-tune's"
    r = run_cli('extract-lora', '--base', BASE, '--model', FT, '--rank', 128, tmp_path / 'full', '-q')
    assert r.returncode == 0 and r.stdout == '', r.stderr
    res = peers.run('peft_lora.py', 'logits', BASE, tmp_path / 'full', FT)
    np.testing.assert_allclose(res['adapter'], res['finetune'], rtol=1e-4, atol=1e-4)

def _peft_adapter(peers, tmp_path, name, **config):
    out = tmp_path / name
    peers.run('peft_lora.py', 'make', BASE, out, json.dumps(config))
    return out

CONFIGS = {
    'patterns': dict(r=4, lora_alpha=16, target_modules=['q_proj', 'v_proj', 'down_proj'], rank_pattern={'q_proj': 2},
                     alpha_pattern={'down_proj': 3}, modules_to_save=['norm']),
    'rslora': dict(r=8, lora_alpha=5, use_rslora=True, target_modules=['k_proj', 'gate_proj', 'embed_tokens', 'lm_head']),
}

@pytest.mark.parametrize('kind', list(CONFIGS))
def test_fold_equals_peft_merge_and_unload(peers, tmp_path, kind):
    adapter = _peft_adapter(peers, tmp_path, 'adapter', **CONFIGS[kind])
    peers.run('peft_lora.py', 'merge', BASE, adapter, tmp_path / 'peft')
    ours, theirs = fold_adapter(load_model(BASE, lazy=True), adapter), load_model(tmp_path / 'peft', lazy=True)
    ft.test_eq(ours.is_lazy, True)
    ft.test_eq(sorted(ours.names), sorted(theirs.names))
    changed = 0
    for n in ours.names:
        a, b = ours[n], theirs[n]
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6, err_msg=n)
        changed += not np.array_equal(b, load_model(BASE, lazy=True)[n])
    assert changed >= 4, changed
    if kind == 'rslora':   # the embedding's factors are peft's lora_embedding_A / _B
        assert any('lora_embedding_A' in k for k in load_adapter(adapter).tensors.names)

def test_merge_with_adapter_reference_equals_merge_of_peft_merged(peers, run_cli, tmp_path):
    adapter = _peft_adapter(peers, tmp_path, 'adapter', **CONFIGS['patterns'])
    peers.run('peft_lora.py', 'merge', BASE, adapter, tmp_path / 'peft')
    runs = {
        'peft': ['merge', tmp_path / 'peft', OTHER, '--method', 'linear'],
        'plus': ['merge', f'{BASE}+{adapter}', OTHER, '--method', 'linear'],
        'option': ['merge', BASE, OTHER, '--method', 'linear', '--lora', f'{BASE}={adapter}'],
    }
    (tmp_path / 'recipe.yml').write_text(   # relative paths in a recipe are found beside it, on both sides of the +
        f"merge_method: ties\nbase_model: {OTHER}\nmodels:\n  - model: {BASE}+adapter\n    parameters: {{weight: 1.0, density: 0.5}}\n")
    (tmp_path / 'recipe-peft.yml').write_text(
        f"merge_method: ties\nbase_model: {OTHER}\nmodels:\n  - model: peft\n    parameters: {{weight: 1.0, density: 0.5}}\n")
    runs['recipe'], runs['recipe-peft'] = ['merge', '--config', tmp_path / 'recipe.yml'], ['merge', '--config', tmp_path / 'recipe-peft.yml']
    out = {}
    for k, args in runs.items():
        r = run_cli(*args, '-o', tmp_path / f'out-{k}', '-q')
        assert r.returncode == 0, (k, r.stderr)
        out[k] = load_model(tmp_path / f'out-{k}')
    for k in ('plus', 'option'):
        for n in out['peft'].names: np.testing.assert_allclose(out[k][n], out['peft'][n], rtol=1e-6, atol=1e-6, err_msg=(k, n))
    for n in out['recipe-peft'].names: np.testing.assert_allclose(out['recipe'][n], out['recipe-peft'][n], rtol=1e-6, atol=1e-6, err_msg=n)
    assert f'{BASE}+' in (tmp_path / 'out-plus' / 'README.md').read_text()   # the model card names the adapter

def test_lora_option_alone_is_merge_and_unload(peers, run_cli, tmp_path):
    adapter = _peft_adapter(peers, tmp_path, 'adapter', **CONFIGS['rslora'])
    peers.run('peft_lora.py', 'merge', BASE, adapter, tmp_path / 'peft')
    r = run_cli('merge', BASE, '--lora', adapter, '--method', 'linear', '-o', tmp_path / 'folded', '-q')
    assert r.returncode == 0, r.stderr
    ours, theirs = load_model(tmp_path / 'folded'), load_model(tmp_path / 'peft')
    for n in theirs.names: np.testing.assert_allclose(ours[n], theirs[n], rtol=1e-6, atol=1e-6, err_msg=n)
    assert (tmp_path / 'folded' / 'config.json').exists()

# ---- bad input: one error line, nothing written ----

def test_adapter_for_modules_the_base_lacks(peers, run_cli, tmp_path):
    adapter = _peft_adapter(peers, tmp_path, 'adapter', **CONFIGS['patterns'])
    one_layer = Model(ModelMetadata('one-layer', 'LlamaForCausalLM'),
                      [(n, a) for n, a in load_model(BASE).parameters if not n.startswith('model.layers.1.')])
    save_model(one_layer, tmp_path / 'one.safetensors')
    r = run_cli('merge', f'{tmp_path / "one.safetensors"}+{adapter}', OTHER, '--method', 'linear', '-o', tmp_path / 'out')
    line = one_error_line(r)
    for s in ('lacks: ', 'model.layers.1.mlp.down_proj', 'model.layers.1.self_attn.q_proj', str(adapter), 'one.safetensors'): assert s in line, line
    assert not (tmp_path / 'out').exists()

def test_bad_lora_options(peers, run_cli, tmp_path):
    r = run_cli('merge', BASE, OTHER, '--lora', tmp_path, '--method', 'linear', '-o', tmp_path / 'out')
    assert 'say which model' in one_error_line(r)
    r = run_cli('merge', BASE, OTHER, '--lora', f'elsewhere={tmp_path}', '--method', 'linear', '-o', tmp_path / 'out')
    assert 'not one of the models' in one_error_line(r)
    r = run_cli('merge', f'{BASE}+{tmp_path / "none"}', '--method', 'linear', '-o', tmp_path / 'out')
    assert 'no such adapter folder' in one_error_line(r)
    assert not (tmp_path / 'out').exists()

def test_extract_errors(run_cli, tmp_path):
    shapes = dict(load_model(FT).parameters)
    shapes['model.layers.0.self_attn.q_proj.weight'] = shapes['model.layers.0.self_attn.q_proj.weight'][:64]
    save_model(Model(ModelMetadata('odd', 'LlamaForCausalLM'), shapes), tmp_path / 'odd.safetensors')
    r = run_cli('extract-lora', '--base', BASE, '--model', tmp_path / 'odd.safetensors', tmp_path / 'out')
    line = one_error_line(r)
    for s in ('model.layers.0.self_attn.q_proj.weight', '[128, 128] in the base', str(BASE), '[64, 128] in the fine-tune', 'odd.safetensors'): assert s in line, line
    assert 'at least 1' in one_error_line(run_cli('extract-lora', '--base', BASE, '--model', FT, '--rank', 0, tmp_path / 'out'))
    assert not (tmp_path / 'out').exists()

def test_fold_in_bfloat16_rounds_as_peft(peers, tmp_path):
    "A bfloat16 base: peft adds the float32 change to a linear weight with one rounding, and rounds an embedding's change first"
    import ml_dtypes
    m, out = load_model(BASE), tmp_path / 'bf16'
    save_model(Model(m.metadata, [(n, a.astype(ml_dtypes.bfloat16)) for n, a in m.parameters]), out / 'model.safetensors')
    cfg = json.loads((BASE / 'config.json').read_text()); cfg['torch_dtype'] = 'bfloat16'
    (out / 'config.json').write_text(json.dumps(cfg))
    peers.run('peft_lora.py', 'make', out, tmp_path / 'adapter', json.dumps(dict(r=4, lora_alpha=16, target_modules=['q_proj', 'down_proj', 'embed_tokens'])))
    peers.run('peft_lora.py', 'merge', out, tmp_path / 'adapter', tmp_path / 'peft', 'bfloat16')
    ours, theirs = fold_adapter(load_model(out, lazy=True), tmp_path / 'adapter'), load_model(tmp_path / 'peft')
    for n in theirs.names:
        a, b = ours[n].astype(np.float32), theirs[n].astype(np.float32)
        ft.test_eq(ours[n].dtype, theirs[n].dtype)
        assert (a != b).mean() < 1e-3, n   # float32 sums in another order may flip a rare rounding tie
        np.testing.assert_allclose(a, b, rtol=2 ** -7, atol=0, err_msg=n)
