"The `entrenar merge` command, run as a user runs it: in a subprocess, on real files"
import json, os, shutil, subprocess
from pathlib import Path
import numpy as np
import pytest
import fastcore.test as ft
from conftest import PEERS, MODELS, one_error_line
from entrenar.io import Model, SaveConfig, load_model, save_model
from entrenar.merge import merge_models

BASE, A, B, C = (MODELS / f'tiny-llama{k}' for k in ('', '-a', '-b', '-c'))
W = 'model.layers.1.self_attn.o_proj.weight'

def _nothing_written(folder, name):
    left = [p.name for p in Path(folder).iterdir() if name in p.name]
    assert not left, left

def _same_tensors(p, q):
    m, n = load_model(p), load_model(q)
    ft.test_eq(m.names, n.names)
    for name in m.names: assert m.get_parameter(name).tobytes() == n.get_parameter(name).tobytes(), name

@pytest.fixture(scope='module')
def sharded(tmp_path_factory):
    "The fine-tunes saved as sharded checkpoints (several shards plus an index), with config.json beside them"
    d = tmp_path_factory.mktemp('sharded')
    for src in (BASE, A, B):
        save_model(load_model(src), d / src.name, SaveConfig().with_shard_size('400kB'))
        shutil.copy(src / 'config.json', d / src.name / 'config.json')
    return d

def test_help(run_cli):
    r = run_cli('merge', '--help')
    ft.test_eq(r.returncode, 0)
    for word in ('--method', '--config', '--weights', '--density', '--shard-size', '--workers', 'dare_ties'): assert word in r.stdout

def test_ties_of_sharded_inputs(run_cli, sharded, tmp_path):
    assert len(list((sharded / A.name).glob('model-*.safetensors'))) > 1
    out = tmp_path / 'merged'
    r = run_cli('merge', sharded / BASE.name, sharded / A.name, sharded / B.name, '--method', 'ties', '--weights', '0.6,0.4',
                '--density', '0.5', '--shard-size', '1MB', '--output', out)
    ft.test_eq(r.returncode, 0)
    assert 'note: ties needs a base model; using the first one' in r.stdout   # said, not silent
    assert 'merged 21 tensors' in r.stdout
    files = sorted(p.name for p in out.iterdir())
    assert 'model.safetensors.index.json' in files and 'config.json' in files and len(files) >= 4, files
    got = load_model(out)
    ref = merge_models([load_model(p) for p in (BASE, A, B)], 'ties', weight=[0.6, 0.4], density=0.5)
    for n in ref.names: assert got.get_parameter(n).tobytes() == ref.get_parameter(n).tobytes(), n
    meta = got.metadata.custom['merge']
    ft.test_eq(meta['method'], 'ties'); ft.test_eq(len(meta['inputs']), 3); assert meta['base'].endswith('tiny-llama')
    ft.test_eq(json.loads((out / 'config.json').read_text()), json.loads((BASE / 'config.json').read_text()))

def test_output_formats_and_dtype(run_cli, tmp_path):
    for ext in ('json', 'yaml'):
        r = run_cli('merge', A, B, '--method', 'average', '--quiet', '--output', tmp_path / f'avg.{ext}')
        ft.test_eq((r.returncode, r.stdout), (0, ''))
        ref = (load_model(A).get_parameter(W) + load_model(B).get_parameter(W)) / 2
        np.testing.assert_allclose(load_model(tmp_path / f'avg.{ext}').get_parameter(W), ref, rtol=0, atol=1e-7)
    r = run_cli('merge', A, B, '--method', 'slerp', '--t', '0.3', '--out-dtype', 'bfloat16', '--quiet', '--output', tmp_path / 'bf.safetensors')
    ft.test_eq(r.returncode, 0)
    ft.test_eq(load_model(tmp_path / 'bf.safetensors').get_parameter(W).dtype.name, 'bfloat16')

def test_dare_same_for_any_workers_and_seeded(run_cli, tmp_path):
    outs = []
    for workers in (1, 3):
        out = tmp_path / f'w{workers}' / 'dare.safetensors'; outs.append(out)
        r = run_cli('merge', BASE, A, B, C, '--method', 'dare', '--density', '0.3', '--seed', '11', '--workers', workers, '--quiet', '--output', out)
        ft.test_eq(r.returncode, 0)
    _same_tensors(*outs)
    assert outs[0].read_bytes() == outs[1].read_bytes()   # the whole file, metadata included
    r = run_cli('merge', BASE, A, B, C, '--method', 'dare', '--density', '0.3', '--seed', '12', '--quiet', '--output', tmp_path / 'other.safetensors')
    assert load_model(tmp_path / 'other.safetensors').get_parameter(W).tobytes() != load_model(outs[0]).get_parameter(W).tobytes()

def test_recipe_with_gradient_and_filters(run_cli, tmp_path):
    recipe = tmp_path / 'slerp.yml'
    recipe.write_text(f"""
merge_method: slerp
base_model: {BASE}
slices:
  - sources:
      - {{model: {BASE}, layer_range: [0, 2]}}
      - {{model: {A}, layer_range: [0, 2]}}
parameters:
  t:
    - {{filter: self_attn, value: [0, 1]}}
    - value: 0.5
dtype: float32
""")
    r = run_cli('merge', '--config', recipe, '--output', tmp_path / 'out.safetensors')
    ft.test_eq(r.returncode, 0)
    got, base, a = load_model(tmp_path / 'out.safetensors'), load_model(BASE), load_model(A)
    q0, q1 = 'model.layers.0.self_attn.q_proj.weight', 'model.layers.1.self_attn.q_proj.weight'
    ft.test_eq(got.get_parameter(q0), base.get_parameter(q0))           # gradient start: t = 0
    np.testing.assert_allclose(got.get_parameter(q1), a.get_parameter(q1), atol=1e-6)   # gradient end: t = 1
    mid = 'model.layers.0.mlp.up_proj.weight'                            # no filter matches: 0.5
    np.testing.assert_allclose(got.get_parameter(mid), merge_models([base, a], 'slerp', t=0.5).get_parameter(mid), atol=1e-7)

def test_bad_inputs_exit_1_one_line_no_output(run_cli, tmp_path):
    full = load_model(A)
    save_model(Model(full.metadata, [(n, x) for n, x in full.parameters if n != W]), tmp_path / 'missing.safetensors')
    save_model(Model(full.metadata, [(n, x[:, :-1] if n == W else x) for n, x in full.parameters]), tmp_path / 'shape.safetensors')
    save_model(Model(full.metadata, [(n, np.full_like(x, np.inf) if n == W else x) for n, x in full.parameters]), tmp_path / 'inf.safetensors')
    out = tmp_path / 'out.safetensors'
    cases = [
        (('merge', A, tmp_path / 'missing.safetensors', '--method', 'ties'), ['missing.safetensors', W, 'missing']),
        (('merge', A, tmp_path / 'shape.safetensors', '--method', 'linear'), [W, 'shape [128, 127]']),
        (('merge', A, B, '--method', 'tiez'), ["unknown merge method 'tiez'"]),
        (('merge', A, B / 'modle.safetensors', '--method', 'linear'), ['modle.safetensors', 'no such file']),
        (('merge', A, tmp_path / 'inf.safetensors', '--method', 'linear'), [W, 'NaN or infinite']),
        (('merge', A, B, '--method', 'linear', '--density', '0.5'), ["linear has no parameter 'density'"]),
        (('merge', A, B, '--method', 'linear', '--weights', '1,2,3'), ["3 values for 'weight'"]),
    ]
    for args, words in cases:
        line = one_error_line(run_cli(*args, '--output', out))
        for w in words: assert w in line, (w, line)
        assert not out.exists(); _nothing_written(tmp_path, 'out.safetensors')
    r = run_cli('merge', A, tmp_path / 'inf.safetensors', '--method', 'linear', '--allow-nonfinite', '--quiet', '--output', out)
    ft.test_eq(r.returncode, 0); assert np.isinf(load_model(out).get_parameter(W)).all()

def test_bad_recipes(run_cli, tmp_path):
    out = tmp_path / 'out'
    recipes = {
        'field': (f"merge_method: ties\nbase_model: {BASE}\nmodels: [{{model: {A}, parameters: {{weight: 1}}}}]\nchat_template: chatml\n",
                  "recipe field 'chat_template' is not supported"),
        'weight': (f"merge_method: ties\nbase_model: {BASE}\nmodels: [{{model: {A}}}]\n", "parameter 'weight' is required"),
        'param': (f"merge_method: linear\nmodels: [{{model: {A}}}, {{model: {B}}}]\nparameters: {{weight: 1, densty: 0.5}}\n", "no parameter 'densty'"),
        'typo': (f"merge_method: linear\nmodels: [{{model: {A}x}}, {{model: {B}}}]\nparameters: {{weight: 1}}\n", 'no such file'),
        'yaml': ("merge_method: [linear\n", 'recipe'),
    }
    for name, (text, words) in recipes.items():
        (tmp_path / f'{name}.yml').write_text(text)
        line = one_error_line(run_cli('merge', '--config', tmp_path / f'{name}.yml', '--output', out))
        assert words in line, (name, line)
        assert not out.exists()
    line = one_error_line(run_cli('merge', '--config', tmp_path / 'nope.yml', '--output', out))
    assert 'nope.yml' in line
    ft.test_eq(run_cli('merge', A, B, '--method', 'linear').returncode, 2)   # argparse: --output is required

def test_passthrough_slices_updates_config(run_cli, tmp_path):
    recipe = tmp_path / 'stack.yml'
    recipe.write_text(f"merge_method: passthrough\nslices:\n  - sources: [{{model: {A}, layer_range: [0, 2]}}]\n  - sources: [{{model: {B}, layer_range: [1, 2]}}]\n")
    r = run_cli('merge', '--config', recipe, '--output', tmp_path / 'deep', '--quiet')
    ft.test_eq(r.returncode, 0)
    ft.test_eq(json.loads((tmp_path / 'deep' / 'config.json').read_text())['num_hidden_layers'], 3)
    got = load_model(tmp_path / 'deep')
    ft.test_eq(got.get_parameter('model.layers.2.mlp.up_proj.weight'), load_model(B).get_parameter('model.layers.1.mlp.up_proj.weight'))

def _mergekit_yaml():
    exe = os.environ.get('MERGEKIT_YAML') or str(PEERS / 'venv' / 'bin' / 'mergekit-yaml')
    if Path(exe).exists(): return exe
    msg = f"peer tool mergekit is not installed ({exe}): run `bash tools/peers.sh`, or set MERGEKIT_YAML"
    if os.environ.get('CI'): pytest.fail(msg)
    pytest.skip(msg)

@pytest.mark.peers
def test_equals_mergekit(run_cli, tmp_path):
    "Same recipe, same tensors as mergekit 0.1.5 (the full table: benchmarks/merge/compare_mergekit.py)"
    recipe = tmp_path / 'ties.yml'
    recipe.write_text(f"merge_method: ties\nbase_model: {BASE}\nmodels:\n"
                      f"  - {{model: {A}, parameters: {{weight: 0.5, density: 0.4}}}}\n  - {{model: {B}, parameters: {{weight: 0.5, density: 0.6}}}}\n")
    subprocess.run([_mergekit_yaml(), recipe, tmp_path / 'mk', '--quiet'], check=True, capture_output=True)
    ft.test_eq(run_cli('merge', '--config', recipe, '--output', tmp_path / 'en', '--quiet').returncode, 0)
    mk, en = load_model(tmp_path / 'mk'), load_model(tmp_path / 'en')
    ft.test_eq(sorted(mk.names), sorted(en.names))
    for n in mk.names: np.testing.assert_allclose(en.get_parameter(n), mk.get_parameter(n), rtol=0, atol=1e-6)


@pytest.mark.parametrize('method,param,value', [('slerp', '--t', '0.5'), ('ties', '--density', '0.2'), ('dare', '--density', '0.5')])
def test_the_commands_defaults(run_cli, tmp_path, method, param, value):
    "The Rust crate's command-line form works without the method's parameter, says which default it took, and equals giving it"
    r = run_cli('merge', A, B, '--method', method, '--output', tmp_path / 'default.safetensors')
    ft.test_eq(r.returncode, 0)
    assert f"{param[2:]} = {value}, the command's default" in r.stdout, r.stdout
    ft.test_eq(run_cli('merge', A, B, '--method', method, param, value, '--quiet', '--output', tmp_path / 'given.safetensors').returncode, 0)
    d, g = load_model(tmp_path / 'default.safetensors'), load_model(tmp_path / 'given.safetensors')
    for n in d.names: ft.test_eq(d[n].tobytes(), g[n].tobytes())
    assert 'slerp --t 0.5' in run_cli('merge', '--help').stdout

def test_recipes_keep_mergekits_rule(run_cli, tmp_path):
    "A recipe that leaves out a required parameter is still an error naming it"
    recipe = tmp_path / 'slerp.yml'
    recipe.write_text(f"merge_method: slerp\nbase_model: {A}\nmodels: [{{model: {A}}}, {{model: {B}}}]\n")
    line = one_error_line(run_cli('merge', '--config', recipe, '--output', tmp_path / 'out.safetensors'))
    assert "parameter 't' is required" in line, line
    assert not (tmp_path / 'out.safetensors').exists()


def test_folder_output_has_recipe_and_model_card(run_cli, tmp_path):
    "As mergekit writes them: mergekit_config.yml reproduces the merge; README.md has the Hub's front matter and the recipe"
    import yaml
    out = tmp_path / 'merged'
    ft.test_eq(run_cli('merge', A, B, '--base', BASE, '--method', 'ties', '--density', '0.5', '--quiet', '--output', out).returncode, 0)
    card = (out / 'README.md').read_text()
    front = yaml.safe_load(card.split('---')[1])
    ft.test_eq((front['library_name'], 'merge' in front['tags'], len(front['base_model'])), ('transformers', True, 3))
    assert 'merge_method: ties' in card and (out / 'mergekit_config.yml').read_text() in card
    ft.test_eq(run_cli('merge', '--config', out / 'mergekit_config.yml', '--quiet', '--output', tmp_path / 'again').returncode, 0)
    a, b = load_model(out), load_model(tmp_path / 'again')
    for n in a.names: ft.test_eq(a[n].tobytes(), b[n].tobytes())
