"""`entrenar moe` beside mergekit-moe 0.1.5 on the same configs: the same tensors (cheap_embed routers to float
rounding, everything else bit for bit; random routers by their distribution, since torch's unseeded draws cannot be
matched), a checkpoint transformers loads as MixtralForCausalLM (or Qwen2MoeForCausalLM) and runs, and bad input
refused before anything is written."""
import json, os, shutil, subprocess
from pathlib import Path
import numpy as np
import pytest
import fastcore.test as ft
from conftest import MODELS, PEERS, ROOT, one_error_line
from entrenar.io import load_model

M = {k: MODELS / f'tiny-llama{k}' for k in ('', '-a', '-b', '-c')}

def moe_yaml(gate_mode='cheap_embed', dtype='float32', experts_per_token=2, base=M[''], experts=None, shared=False):
    experts = experts or [M['-a'], M['-b'], M['-c'], M['']]
    prompts = [('["the cat sat on the mat", "hello world"]', '["numbers 1 2 3"]'), ('["once upon a time"]', None),
               ('["def f(x): return x"]', None), ('["the weather today is sunny and warm"]', '["once upon a time"]')]
    lines = [f"base_model: {base}", f"gate_mode: {gate_mode}", f"experts_per_token: {experts_per_token}", "experts:"]
    if dtype: lines.insert(2, f"dtype: {dtype}")
    for e, (pos, neg) in zip(experts, prompts):
        lines += [f"  - source_model: {e}", f"    positive_prompts: {pos}"] + ([f"    negative_prompts: {neg}"] if neg else [])
    if shared: lines += ["shared_experts:", f"  - source_model: {M['']}", '    positive_prompts: ["a shared prompt for all"]']
    return '\n'.join(lines) + '\n'

def mergekit_moe(cfg, out, timeout=600):
    exe = PEERS / 'venv' / 'bin' / 'mergekit-moe'
    if not exe.exists():
        if os.environ.get('CI'): pytest.fail(f"peer tool mergekit-moe is not installed ({exe})")
        pytest.skip(f"peer tool mergekit-moe is not installed ({exe}): run `bash tools/peers.sh`")
    r = subprocess.run([str(exe), str(cfg), str(out)], capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    return load_model(out)

def fused_view(en, n_layers=2):
    "An entrenar Mixtral (per-expert layout) as mergekit 0.1.5's tensors (transformers 5's fused layout)"
    out = {n: en[n] for n in en.names if '.block_sparse_moe.' not in n}
    for i in range(n_layers):
        pre = f"model.layers.{i}.block_sparse_moe"
        E = en[f"{pre}.gate.weight"].shape[0]
        out[f"model.layers.{i}.mlp.gate.weight"] = en[f"{pre}.gate.weight"]
        out[f"model.layers.{i}.mlp.experts.gate_up_proj"] = np.stack([np.concatenate([en[f"{pre}.experts.{e}.w1.weight"], en[f"{pre}.experts.{e}.w3.weight"]]) for e in range(E)])
        out[f"model.layers.{i}.mlp.experts.down_proj"] = np.stack([en[f"{pre}.experts.{e}.w2.weight"] for e in range(E)])
    return out

def assert_same(mk, en:dict, gate_atol):
    ft.test_eq(sorted(mk.names), sorted(en))
    for n in mk.names:
        ft.test_eq((n, mk[n].dtype, mk[n].shape), (n, en[n].dtype, en[n].shape))
        if n.endswith('gate.weight'): np.testing.assert_allclose(en[n].astype(np.float32), mk[n].astype(np.float32), rtol=0, atol=gate_atol, err_msg=n)
        else: assert np.array_equal(mk[n], en[n]), n

@pytest.mark.peers
@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_cheap_embed_equals_mergekit(run_cli, tmp_path, dtype):
    cfg = tmp_path / 'moe.yml'; cfg.write_text(moe_yaml(dtype=dtype))
    mk = mergekit_moe(cfg, tmp_path / 'mk')
    r = run_cli('moe', cfg, tmp_path / 'fused', '--layout', 'fused')
    assert r.returncode == 0, r.stderr
    assert 'Mixtral, 4 experts (2 per token), cheap_embed gates' in r.stdout, r.stdout
    fused = load_model(tmp_path / 'fused')
    tol = 1e-6 if dtype == 'float32' else 2 ** -8   # float32 sums in another order; one bfloat16 rounding step at most
    assert_same(mk, {n: fused[n] for n in fused.names}, tol)
    ft.test_eq(run_cli('moe', cfg, tmp_path / 'hub', '--quiet').returncode, 0)
    assert_same(mk, fused_view(load_model(tmp_path / 'hub')), tol)
    en_cfg, mk_cfg = (json.loads((tmp_path / d / 'config.json').read_text()) for d in ('hub', 'mk'))
    for k in ('architectures', 'model_type', 'num_local_experts', 'num_experts_per_tok', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'vocab_size'):
        ft.test_eq(en_cfg[k], mk_cfg[k])
    ft.test_eq(en_cfg['torch_dtype'], dtype)
    files = {p.name for p in (tmp_path / 'hub').iterdir()}
    assert {'config.json', 'model.safetensors', 'tokenizer.model', 'tokenizer_config.json', 'README.md', 'mergekit_moe_config.yml'} <= files, files
    ft.test_eq((tmp_path / 'hub' / 'mergekit_moe_config.yml').read_text(), cfg.read_text())
    card = (tmp_path / 'hub' / 'README.md').read_text()
    assert card.startswith('---\nbase_model:') and str(M['-c']) in card and '4 experts, 2 used per token' in card, card

@pytest.mark.peers
@pytest.mark.parametrize('mode', ['random', 'uniform_random'])
def test_random_gates_like_mergekit(run_cli, tmp_path, mode):
    "mergekit draws from torch's unseeded generator: the same shapes and distribution, the same expert tensors"
    cfg = tmp_path / 'moe.yml'; cfg.write_text(moe_yaml(mode))
    mk = mergekit_moe(cfg, tmp_path / 'mk')
    ft.test_eq(run_cli('moe', cfg, tmp_path / 'en', '--layout', 'fused', '--seed', '3', '--quiet').returncode, 0)
    en = load_model(tmp_path / 'en')
    ft.test_eq(sorted(mk.names), sorted(en.names))
    for n in mk.names:
        if n.endswith('gate.weight'):
            ft.test_eq(mk[n].shape, en[n].shape)
            bound = 128 ** -0.5   # uniform_random: torch.nn.Linear's init, U(-1/sqrt(hidden), 1/sqrt(hidden))
            mean, std = (0, 1) if mode == 'random' else (0, bound / 3 ** 0.5)
            # mergekit's draws are unseeded: bound the sample mean and std at 6 standard errors (a false alarm
            # about once in 10^8 runs); the standard error of a sample std is at most std/sqrt(2n) for these two laws
            for g in (mk[n], en[n]):
                se = std / g.size ** 0.5
                assert abs(float(g.mean()) - mean) < 6 * se and abs(float(g.std()) - std) < 6 * se / 2 ** 0.5, (n, g.size, g.mean(), g.std())
                if mode == 'uniform_random': assert np.abs(g).max() <= bound
        else: assert np.array_equal(mk[n], en[n]), n
    ft.test_eq(run_cli('moe', cfg, tmp_path / 'again', '--layout', 'fused', '--seed', '3', '--quiet').returncode, 0)
    assert np.array_equal(load_model(tmp_path / 'again')['model.layers.1.mlp.gate.weight'], en['model.layers.1.mlp.gate.weight'])

@pytest.mark.peers
@pytest.mark.parametrize('layout', ['mixtral', 'fused'])
def test_transformers_runs_it(run_cli, peers, tmp_path, layout):
    cfg = tmp_path / 'moe.yml'; cfg.write_text(moe_yaml(experts_per_token=3))
    ft.test_eq(run_cli('moe', cfg, tmp_path / 'en', '--layout', layout, '--shard-size', '1MB', '--quiet').returncode, 0)
    assert (tmp_path / 'en' / 'model.safetensors.index.json').is_file()
    r = peers.run('moe_run.py', tmp_path / 'en')
    ft.test_eq((r['cls'], r['n_experts'], r['top_k'], r['gates'], r['router_logits']), ('MixtralForCausalLM', 4, 3, [[4, 128], [4, 128]], [9, 4]))
    assert r['finite']
    mergekit_moe(cfg, tmp_path / 'mk')
    np.testing.assert_allclose(r['logits'], peers.run('moe_run.py', tmp_path / 'mk')['logits'], rtol=0, atol=1e-5)

@pytest.mark.peers
@pytest.mark.parametrize('mode', ['hidden', 'hidden_avg'])
def test_hidden_gates_equal_mergekit(peers, tmp_path, mode):
    "gate_mode hidden runs the base in transformers (the moe-hidden extra): run entrenar in the peer venv, which has torch"
    cfg = tmp_path / 'moe.yml'; cfg.write_text(moe_yaml(mode))
    mk = mergekit_moe(cfg, tmp_path / 'mk')
    r = subprocess.run([str(peers.python), '-c', 'import sys; from entrenar.cli import main; sys.exit(main())', 'moe', str(cfg),
                        str(tmp_path / 'en'), '--layout', 'fused', '--quiet'], capture_output=True, text=True, timeout=600,
                       env={**os.environ, 'PYTHONPATH': str(ROOT), 'HF_HUB_OFFLINE': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    en = load_model(tmp_path / 'en')
    assert_same(mk, {n: en[n] for n in en.names}, 1e-6)
    assert not np.array_equal(en['model.layers.0.mlp.gate.weight'], en['model.layers.1.mlp.gate.weight'])   # per layer, unlike cheap_embed

@pytest.mark.peers
def test_qwen2_moe_with_shared_expert(run_cli, peers, tmp_path):
    cfg = tmp_path / 'moe.yml'; cfg.write_text(moe_yaml(shared=True))
    mk = mergekit_moe(cfg, tmp_path / 'mk')
    r = run_cli('moe', cfg, tmp_path / 'en')
    assert r.returncode == 0, r.stderr
    assert 'Qwen2-MoE' in r.stdout
    en = load_model(tmp_path / 'en')
    assert_same(mk, {n: en[n] for n in en.names}, 1e-6)
    out = peers.run('moe_run.py', tmp_path / 'en')
    ft.test_eq((out['cls'], out['n_experts'], out['top_k']), ('Qwen2MoeForCausalLM', 4, 2))
    np.testing.assert_allclose(out['logits'], peers.run('moe_run.py', tmp_path / 'mk')['logits'], rtol=0, atol=1e-5)

@pytest.mark.peers
def test_llama_cpp_converts_and_runs_it(run_cli, peers, tmp_path):
    "The default (Hub Mixtral) layout is what llama.cpp's convert_hf_to_gguf.py reads; llama.cpp then runs it as transformers does"
    cfg = tmp_path / 'moe.yml'; cfg.write_text(moe_yaml())
    ft.test_eq(run_cli('moe', cfg, tmp_path / 'en', '--quiet').returncode, 0)
    gguf = peers.convert(tmp_path / 'en', tmp_path / 'en.gguf', 'f32')
    got, ref = peers.run('llama_run.py', gguf, 'the cat sat on', 6), peers.run('hf_run.py', tmp_path / 'en', 'the cat sat on', 6)
    ft.test_eq((got['prompt_tokens'], got['generated']), (ref['prompt_tokens'], ref['generated']))
    np.testing.assert_allclose(got['logits'], ref['logits'], rtol=0, atol=2e-3)

def _copy(src, dst, **config):
    shutil.copytree(src, dst)
    c = json.loads((dst / 'config.json').read_text()); c.update(config)
    (dst / 'config.json').write_text(json.dumps(c))
    return dst

@pytest.mark.parametrize('field,value', [('hidden_size', 256), ('model_type', 'qwen2'), ('num_hidden_layers', 3)])
def test_mismatched_expert_named_with_base(run_cli, tmp_path, field, value):
    odd = _copy(M['-b'], tmp_path / 'odd', **{field: value})
    cfg = tmp_path / 'moe.yml'; cfg.write_text(moe_yaml(experts=[M['-a'], odd, M['-c'], M['']]))
    line = one_error_line(run_cli('moe', cfg, tmp_path / 'out'))
    assert f"{field} differs: {value!r} in {odd}" in line and f"in the base {M['']}" in line, line
    assert not (tmp_path / 'out').exists()

def test_missing_tokenizer_named(run_cli, tmp_path):
    base = tmp_path / 'base'; base.mkdir()
    for n in ('config.json', 'model.safetensors'): shutil.copy(M[''] / n, base / n)
    cfg = tmp_path / 'moe.yml'; cfg.write_text(moe_yaml(base=base))
    line = one_error_line(run_cli('moe', cfg, tmp_path / 'out'))
    assert f"the base {base} has no tokenizer" in line and 'cheap_embed' in line, line
    assert not (tmp_path / 'out').exists()
    cfg.write_text(moe_yaml('random', base=base))   # random gates need no tokenizer
    ft.test_eq(run_cli('moe', cfg, tmp_path / 'out', '--quiet').returncode, 0)

@pytest.mark.parametrize('yaml_text,expect', [
    (moe_yaml(experts_per_token=5), 'experts_per_token is 5 but there are only 4 experts'),
    (moe_yaml().replace('gate_mode: cheap_embed', 'gate_mode: magic'), "unknown gate_mode 'magic'"),
    (moe_yaml() + 'shared_experts:\n  - source_model: x\n  - source_model: y\n', 'Qwen2-MoE output takes one shared expert, got 2'),
    (moe_yaml().replace('dtype: float32', 'dtype: float8'), "unknown dtype 'float8'"),
    (moe_yaml(experts=[M['-a']] * 4).replace('"once upon a time"]', '"x"]'), 'every expert is the same model'),
    (moe_yaml() + 'architecture: deepseek\n', "architecture 'deepseek'"),
    (moe_yaml(shared=True).replace('    positive_prompts: ["a shared prompt for all"]\n', ''), 'shared_experts[0]'),
])
def test_bad_config(run_cli, tmp_path, yaml_text, expect):
    cfg = tmp_path / 'moe.yml'; cfg.write_text(yaml_text)
    line = one_error_line(run_cli('moe', cfg, tmp_path / 'out'))
    assert expect in line, line
    assert not (tmp_path / 'out').exists()

PROMPTS = ["the cat sat on the mat", "hello world", " leading space", "Two  spaces\nand a newline", "", "ünïcode 日本語",
           "<s> a special token inside", "</s>", "trailing space ", "tabs\tand\r\nreturns", "x", "ALL CAPS 123 !?"]

@pytest.mark.peers
def test_sentencepiece_tokens_equal_transformers(peers):
    "cheap_embed's token ids from tokenizer.model (sentencepiece) are transformers' ids"
    from entrenar.moe import prompt_token_ids
    ft.test_eq(prompt_token_ids(M[''], PROMPTS), peers.run('tokenize_prompts.py', M[''], json.dumps(PROMPTS)))

@pytest.mark.peers
def test_tokenizer_json_tokens_equal_transformers(peers, tmp_path):
    "with a tokenizer.json (transformers' own file), the tokenizers package gives transformers' ids"
    expected = peers.run('tokenize_prompts.py', M[''], json.dumps(PROMPTS), tmp_path / 'tok')
    assert (tmp_path / 'tok' / 'tokenizer.json').is_file()
    code = ("import json, sys; from entrenar.moe import prompt_token_ids; "
            "print(json.dumps(prompt_token_ids(sys.argv[1], json.loads(sys.argv[2]))))")
    r = subprocess.run([str(peers.python), '-c', code, str(tmp_path / 'tok'), json.dumps(PROMPTS)], capture_output=True, text=True,
                       timeout=300, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    ft.test_eq(json.loads(r.stdout), expected)

def test_output_inside_an_input_refused(run_cli, tmp_path):
    cfg = tmp_path / 'moe.yml'; cfg.write_text(moe_yaml('random'))
    line = one_error_line(run_cli('moe', cfg, M['-a']))
    assert 'is also an input' in line, line

def test_unknown_field_named(run_cli, tmp_path):
    cfg = tmp_path / 'moe.yml'; cfg.write_text(moe_yaml() + 'gate_mdoe: random\n')
    line = one_error_line(run_cli('moe', cfg, tmp_path / 'out'))
    assert "unknown fields in the MoE config: ['gate_mdoe']" in line and str(cfg) in line, line

def test_noise_and_residual_scale(run_cli, tmp_path):
    "mergekit's noise_scale (seeded here) and residual_scale (on down_proj)"
    text = moe_yaml('random').replace(f"  - source_model: {M['-b']}\n", f"  - source_model: {M['-b']}\n    residual_scale: 0.5\n    noise_scale: 0.01\n")
    cfg = tmp_path / 'moe.yml'; cfg.write_text(text)
    ft.test_eq(run_cli('moe', cfg, tmp_path / 'out', '--quiet').returncode, 0)
    out, b = load_model(tmp_path / 'out'), load_model(M['-b'])
    w2, down = out['model.layers.0.block_sparse_moe.experts.1.w2.weight'], b['model.layers.0.mlp.down_proj.weight']
    noise = w2 / 0.5 - down
    assert 0.008 < noise.std() < 0.012 and abs(noise.mean()) < 0.002, (noise.std(), noise.mean())
    w1 = out['model.layers.0.block_sparse_moe.experts.1.w1.weight'] - b['model.layers.0.mlp.gate_proj.weight']
    assert 0.008 < w1.std() < 0.012
    assert np.array_equal(out['model.layers.0.block_sparse_moe.experts.0.w1.weight'], load_model(M['-a'])['model.layers.0.mlp.gate_proj.weight'])
