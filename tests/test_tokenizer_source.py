"""`tokenizer_source` / `tokenizer` in merge recipes against mergekit 0.1.5, and recipes that name Hub models.

Three tiny Llamas with different vocabularies (tests/peers/vocab_models.py): a base, `a` with three tokens added, `b`
with three others (one shared with `a`) and two pieces' ids swapped. The same recipe through mergekit-yaml and
`entrenar merge` gives the same vocabulary and, token by token, the same embedding and lm_head rows (mergekit's ids for
new tokens depend on a set's order, so rows are compared by token); transformers loads entrenar's output and runs it.
"""
import hashlib, json, os, shutil, subprocess
from pathlib import Path
import numpy as np
import pytest
import fastcore.test as ft
from conftest import MODELS, one_error_line
from test_merge_cli import _mergekit_yaml
from entrenar.io import load_model
from entrenar.vocab import read_vocabulary

VOCAB = ('model.embed_tokens.weight', 'lm_head.weight')

@pytest.fixture(scope='module')
def trio(tmp_path_factory, peers):
    out = tmp_path_factory.mktemp('vocab')
    sizes = peers.run('vocab_models.py', MODELS, out)
    ft.test_eq(sizes, {'base': 512, 'a': 515, 'b': 515})
    return out

RECIPES = {
    'ties_union': """merge_method: ties
base_model: {d}/base
models:
  - model: {d}/a
    parameters: {{weight: 0.6, density: 0.5}}
  - model: {d}/b
    parameters: {{weight: 0.4, density: 0.7}}
tokenizer_source: union
dtype: float32
""",
    'linear_base': """merge_method: linear
base_model: {d}/base
models:
  - model: {d}/base
    parameters: {{weight: 0.2}}
  - model: {d}/a
    parameters: {{weight: 0.5}}
  - model: {d}/b
    parameters: {{weight: 0.3}}
tokenizer_source: base
""",
    'tokens_model_source': """merge_method: task_arithmetic
base_model: {d}/base
models:
  - model: {d}/a
    parameters: {{weight: 0.7}}
  - model: {d}/b
    parameters: {{weight: 0.5}}
tokenizer:
  source: {d}/b
  tokens:
    <tool>: {{source: {d}/a}}
    <think>: {{source: {{kind: zero}}, force: true}}
    zebra: {{source: {{kind: model_token, model: {d}/base, token: "</s>"}}}}
  pad_to_multiple_of: 8
""",
}

def _compare(mk_dir, en_dir):
    mk, en = load_model(mk_dir), load_model(en_dir)
    vm, ve = read_vocabulary(mk_dir).tokens, read_vocabulary(en_dir).tokens
    ft.test_eq(set(vm), set(ve))
    ft.test_eq(sorted(mk.names), sorted(en.names))
    for n in mk.names:
        a, b = mk[n].astype(np.float32), en[n].astype(np.float32)
        ft.test_eq(a.shape, b.shape)
        if n in VOCAB:
            toks = list(vm)
            np.testing.assert_allclose(b[[ve[t] for t in toks]], a[[vm[t] for t in toks]], rtol=0, atol=1e-6, err_msg=n)
            np.testing.assert_allclose(b[len(ve):], a[len(vm):], rtol=0, atol=1e-6, err_msg=f'{n} padding rows')
        else: np.testing.assert_allclose(b, a, rtol=0, atol=1e-6, err_msg=n)
    cfg = lambda d: json.loads((Path(d) / 'config.json').read_text())['vocab_size']
    ft.test_eq(cfg(en_dir), cfg(mk_dir))
    return vm, ve

@pytest.mark.peers
@pytest.mark.parametrize('name', list(RECIPES))
def test_equals_mergekit(trio, run_cli, tmp_path, name):
    recipe = tmp_path / f'{name}.yml'
    recipe.write_text(RECIPES[name].format(d=trio))
    r = subprocess.run([_mergekit_yaml(), recipe, tmp_path / 'mk', '--quiet'], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli('merge', '--config', recipe, '--output', tmp_path / 'en', '--quiet')
    assert r.returncode == 0, r.stderr
    vm, ve = _compare(tmp_path / 'mk', tmp_path / 'en')
    if name == 'ties_union': ft.test_eq(len(ve), 512 + 5)
    if name == 'linear_base': ft.test_eq(len(ve), 512)
    if name == 'tokens_model_source':
        ft.test_eq(json.loads((tmp_path / 'en' / 'config.json').read_text())['vocab_size'], 520)   # 517 tokens, padded to 8
        ft.test_eq(np.abs(load_model(tmp_path / 'en')['model.embed_tokens.weight'][ve['<think>']]).max(), 0.0)

@pytest.mark.peers
def test_transformers_runs_the_union(trio, run_cli, peers, tmp_path):
    "transformers loads entrenar's merge with its tokenizer, which knows every model's new tokens, and runs it"
    recipe = tmp_path / 'r.yml'
    recipe.write_text(RECIPES['ties_union'].format(d=trio))
    ft.test_eq(run_cli('merge', '--config', recipe, '--output', tmp_path / 'en', '--quiet').returncode, 0)
    out = peers.run('hf_run.py', tmp_path / 'en', 'the zebra and the narwhal <think>', 3)
    vocab = read_vocabulary(tmp_path / 'en').tokens
    for t in ('zebra', 'narwhal', '<think>'): assert vocab[t] in out['prompt_tokens'], (t, out['prompt_tokens'])
    ft.test_eq(len(out['logits']), 517)
    assert all(np.isfinite(out['logits']))

@pytest.mark.peers
def test_model_prefix_and_relative_source(trio, run_cli, tmp_path):
    "`model:<path>` is the same as the bare path, and a relative path is found beside the recipe"
    shutil.copytree(trio / 'b', tmp_path / 'b')
    text = lambda src: RECIPES['linear_base'].format(d=trio).replace('tokenizer_source: base', f'tokenizer_source: {src}')
    (tmp_path / 'p.yml').write_text(text(f'model:{trio}/b'))
    (tmp_path / 'r.yml').write_text(text('b'))
    for n in ('p', 'r'): ft.test_eq(run_cli('merge', '--config', tmp_path / f'{n}.yml', '--output', tmp_path / n, '--quiet', cwd='/').returncode, 0)
    for name in VOCAB: ft.test_eq(np.array_equal(load_model(tmp_path / 'p')[name], load_model(tmp_path / 'r')[name]), True)
    ft.test_eq((tmp_path / 'p' / 'tokenizer.json').read_bytes(), (trio / 'b' / 'tokenizer.json').read_bytes())

@pytest.mark.peers
def test_source_without_tokenizer_is_named(trio, run_cli, tmp_path):
    bare = tmp_path / 'bare'; bare.mkdir()
    shutil.copy(trio / 'a' / 'config.json', bare / 'config.json')
    recipe = tmp_path / 'r.yml'
    recipe.write_text(RECIPES['linear_base'].format(d=trio).replace('tokenizer_source: base', f'tokenizer_source: model:{bare}'))
    line = one_error_line(run_cli('merge', '--config', recipe, '--output', tmp_path / 'out'))
    assert str(bare) in line and 'no tokenizer files' in line, line
    ft.test_eq((tmp_path / 'out').exists(), False)
    # without tokenizer_source, vocabularies of different sizes are the shape error they always were
    recipe.write_text(RECIPES['linear_base'].format(d=trio).replace('tokenizer_source: base\n', ''))
    assert 'shape' in one_error_line(run_cli('merge', '--config', recipe, '--output', tmp_path / 'out'))
    ft.test_eq((tmp_path / 'out').exists(), False)


# ---- Hub names in recipes and on the command line: a Hub cache written by the test, read offline ----

def _git_sha1(data): return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()

def make_hub_cache(cache, repo_id, folder, commit):
    "`folder`'s files in a Hub cache as huggingface_hub lays it out: blobs, a snapshot of links, refs/main"
    repo = Path(cache) / ('models--' + repo_id.replace('/', '--'))
    snap = repo / 'snapshots' / commit
    (repo / 'blobs').mkdir(parents=True, exist_ok=True); snap.mkdir(parents=True)
    for f in sorted(Path(folder).iterdir()):
        data = f.read_bytes()
        blob = repo / 'blobs' / (hashlib.sha256(data).hexdigest() if f.suffix == '.safetensors' else _git_sha1(data))
        blob.write_bytes(data)
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    (repo / 'refs').mkdir(exist_ok=True); (repo / 'refs' / 'main').write_text(commit)
    return snap

@pytest.fixture
def hub_env(tmp_path):
    cache = tmp_path / 'hub'
    return cache, {'HF_HUB_CACHE': str(cache), 'HF_HUB_OFFLINE': '1', 'HF_HUB_DISABLE_TELEMETRY': '1', 'HF_TOKEN': ''}

@pytest.mark.peers
def test_recipe_names_hub_models(trio, run_cli, tmp_path, hub_env):
    "`model: org/name` and `org/name@revision` read from the Hub cache offline give the local folders' merge"
    cache, env = hub_env
    for i, n in enumerate(('base', 'a', 'b')): make_hub_cache(cache, f'org/{n}', trio / n, f'{i + 1:040x}')
    local = RECIPES['ties_union'].format(d=trio)
    hub = local.replace(f'{trio}/base', 'org/base').replace(f'{trio}/a', f'org/a@{2:040x}').replace(f'{trio}/b', 'org/b@main')
    (tmp_path / 'local.yml').write_text(local); (tmp_path / 'hub.yml').write_text(hub)
    for n in ('local', 'hub'):
        r = run_cli('merge', '--config', tmp_path / f'{n}.yml', '--output', tmp_path / n, '--quiet', cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr
    a, b = load_model(tmp_path / 'local'), load_model(tmp_path / 'hub')
    for n in a.names: ft.test_eq(np.array_equal(a[n], b[n]), True)
    for f in ('config.json', 'tokenizer.json', 'generation_config.json'):
        ft.test_eq((tmp_path / 'hub' / f).read_bytes(), (tmp_path / 'local' / f).read_bytes())
    card = (tmp_path / 'hub' / 'README.md').read_text()
    assert '- org/base\n' in card and '- org/a\n' in card, card[:400]

@pytest.mark.peers
def test_command_line_hub_models(run_cli, tmp_path, hub_env):
    "`entrenar merge org/x org/y --method slerp` fetches (here: reads the offline cache) and merges"
    cache, env = hub_env
    make_hub_cache(cache, 'org/x', MODELS / 'tiny-llama', 'a' * 40)
    make_hub_cache(cache, 'org/y', MODELS / 'tiny-llama-a', 'b' * 40)
    r = run_cli('merge', 'org/x', 'org/y@main', '--method', 'slerp', '--output', tmp_path / 'hub', '--quiet', cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    r = run_cli('merge', MODELS / 'tiny-llama', MODELS / 'tiny-llama-a', '--method', 'slerp', '--output', tmp_path / 'local', '--quiet')
    assert r.returncode == 0, r.stderr
    a, b = load_model(tmp_path / 'local'), load_model(tmp_path / 'hub')
    for n in a.names: ft.test_eq(np.array_equal(a[n], b[n]), True)
    ft.test_eq((tmp_path / 'hub' / 'tokenizer.model').read_bytes(), (MODELS / 'tiny-llama' / 'tokenizer.model').read_bytes())
    # a Hub name the cache lacks, offline: one error line naming it, nothing written
    line = one_error_line(run_cli('merge', 'org/x', 'org/missing', '--method', 'slerp', '--output', tmp_path / 'no', cwd=tmp_path, env=env))
    assert 'org/missing' in line, line
    ft.test_eq((tmp_path / 'no').exists(), False)
