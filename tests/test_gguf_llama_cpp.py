"""GGUF against the real tools: llama.cpp runs entrenar's files as transformers runs the checkpoint, llama.cpp's converter
and llama-quantize write the same bytes, and GGUF files written by llama.cpp (K-quants, a published SmolLM2) are read back.

The peer tools come from `bash tools/peers.sh` (tools/test.sh runs it); without them these tests skip loudly, in CI they fail.
"""
import json, shutil
import numpy as np
import pytest
import fastcore.test as ft
from conftest import MODELS
from entrenar.gguf import GgufFile, gguf_model
from entrenar.io import Model, ModelMetadata, load_model, save_model

pytestmark = pytest.mark.peers
TINY = MODELS / "tiny-llama"
PROMPT = 'Merge the models, then quantize them'

def differences(ours, theirs) -> list:
    "Everything that differs between two GGUF files: tensor set, types, bytes, metadata keys, values and value types"
    a, b = GgufFile(ours), GgufFile(theirs)
    out = [f"tensors only in one: {sorted(set(a.tensors) ^ set(b.tensors))}"] if set(a.tensors) != set(b.tensors) else []
    for n in set(a.tensors) & set(b.tensors):
        if a.type_of(n) != b.type_of(n): out.append(f"{n}: {a.type_of(n)} vs {b.type_of(n)}")
        elif bytes(a.tensors[n].data) != bytes(b.tensors[n].data): out.append(f"{n}: bytes differ")
    if set(a.keys) != set(b.keys): out.append(f"keys only in one: {sorted(set(a.keys) ^ set(b.keys))}")
    for k in set(a.keys) & set(b.keys):
        if a.get(k) != b.get(k): out.append(f"{k}: {str(a.get(k))[:60]} vs {str(b.get(k))[:60]}")
        elif a.reader.fields[k].types != b.reader.fields[k].types: out.append(f"{k}: value types differ")
    return out

@pytest.fixture(scope='module')
def hf_reference(peers):
    "transformers on the source checkpoint: prompt tokens, 12 greedy tokens, last-position logits"
    return peers.run('hf_run.py', TINY, PROMPT, 12)

@pytest.mark.parametrize('kind', ['f32', 'f16', 'bf16', 'q8_0'])
def test_llama_cpp_generates_what_transformers_generates(peers, run_cli, tmp_path, hf_reference, kind):
    out = tmp_path / f'tiny-{kind}.gguf'
    ft.test_eq(run_cli('convert', TINY, out, '--type', kind, '--quiet').returncode, 0)
    got = peers.run('llama_run.py', out, PROMPT, 12)
    ft.test_eq(got['prompt_tokens'], hf_reference['prompt_tokens'])   # the tokenizer inside the GGUF
    ft.test_eq(got['generated'], hf_reference['generated'])
    atol = {'f32': 1e-3, 'f16': 5e-3, 'bf16': 2e-2, 'q8_0': 2e-2}[kind]
    np.testing.assert_allclose(got['logits'], hf_reference['logits'], atol=atol)

@pytest.mark.parametrize('kind', ['q4_0', 'q4_1', 'q5_0', 'q5_1'])
def test_llama_cpp_runs_the_low_bit_types(peers, run_cli, tmp_path, hf_reference, kind):
    "A random tiny model's greedy text is too fragile for 4-5 bits; the logits still follow transformers'"
    out = tmp_path / f'tiny-{kind}.gguf'
    ft.test_eq(run_cli('quantize', TINY, '--type', kind.upper(), '--output', out, '--quiet').returncode, 0)
    got = peers.run('llama_run.py', out, PROMPT, 4)
    ft.test_eq(got['prompt_tokens'], hf_reference['prompt_tokens'])
    assert np.corrcoef(got['logits'], hf_reference['logits'])[0, 1] > 0.9

@pytest.fixture(scope='module')
def converted(peers, tmp_path_factory):
    "llama.cpp's convert_hf_to_gguf.py on the tiny model, per output type"
    d, cache = tmp_path_factory.mktemp('converter'), {}
    def get(kind):
        if kind not in cache: cache[kind] = peers.convert(TINY, d / f'conv-{kind}.gguf', kind)
        return cache[kind]
    return get

@pytest.mark.parametrize('kind', ['f32', 'f16', 'bf16', 'q8_0'])
def test_equals_llama_cpp_converter(converted, run_cli, tmp_path, kind):
    out = tmp_path / f'ours-{kind}.gguf'
    ft.test_eq(run_cli('convert', TINY, out, '--type', kind, '--quiet').returncode, 0)
    ft.test_eq(differences(out, converted(kind)), [])

@pytest.mark.parametrize('kind', ['q4_0', 'q4_1', 'q5_0', 'q5_1', 'q8_0'])
def test_equals_llama_quantize(peers, converted, run_cli, tmp_path, kind):
    "The converter's F32 file through llama_model_quantize (llama-quantize's code) = entrenar from the checkpoint = entrenar requantizing that F32 file"
    theirs = tmp_path / f'llama-quantize-{kind}.gguf'
    peers.run('llama_quantize.py', converted('f32'), theirs, kind)
    ours = tmp_path / f'ours-{kind}.gguf'
    ft.test_eq(run_cli('quantize', TINY, '--type', kind, '--output', ours, '--quiet').returncode, 0)
    ft.test_eq(differences(ours, theirs), [])
    again = tmp_path / f'requantized-{kind}.gguf'
    ft.test_eq(run_cli('quantize', converted('f32'), '--type', kind, '--output', again, '--quiet').returncode, 0)
    ft.test_eq(differences(again, theirs), [])

def test_reads_k_quants_as_ggml_decodes_them(peers, run_cli, tmp_path):
    "Q2_K..Q6_K and IQ4_NL files made by llama-quantize: every tensor decodes to ggml's own values, and converts back for transformers"
    wide = _variant(tmp_path / 'wide', 'LlamaForCausalLM', 4, False, False, h=256, layers=1, outliers=True)   # rows of 256: real K-quants
    f32 = peers.convert(wide, tmp_path / 'wide-f32.gguf', 'f32')
    seen = set()
    for kind in ('q2_k', 'q3_k_m', 'q4_k_m', 'q5_k_m', 'q6_k', 'iq4_nl'):
        out = tmp_path / f'wide-{kind}.gguf'
        peers.run('llama_quantize.py', f32, out, kind)
        f = GgufFile(out)
        for name, t in f.tensors.items():
            seen.add(f.type_of(name))
            raw = tmp_path / 'blocks.bin'
            np.asarray(t.data).reshape(-1).view(np.uint8).tofile(raw)
            peers.run('ggml_dequantize.py', tmp_path / 'ref.npy', raw, int(t.tensor_type), int(t.n_elements))
            ft.test_eq(f.array(name).reshape(-1).view(np.uint32), np.load(tmp_path / 'ref.npy').view(np.uint32))
        r = run_cli('info', out)
        assert 'architecture: llama' in r.stdout and kind.split('_')[0].upper() in r.stdout, r.stdout
    assert {'Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K', 'IQ4_NL'} <= seen, seen
    ft.test_eq(run_cli('convert', tmp_path / 'wide-q4_k_m.gguf', tmp_path / 'wide-hf', '--quiet').returncode, 0)
    got = peers.run('hf_run.py', tmp_path / 'wide-hf', PROMPT, 4)
    ft.test_eq(len(got['generated']), 4)

def test_smollm2_a_gguf_nobody_here_wrote(peers, run_cli, tmp_path):
    "SmolLM2-135M-Instruct Q4_1 as published: described, decoded as ggml decodes, converted, and run by transformers as llama.cpp runs it"
    r = run_cli('info', peers.smollm2)
    ft.test_eq(r.returncode, 0)
    for line in ('architecture: llama', 'Q4_1        210 tensors', 'llama.block_count: 30', 'tokenizer.pre: "smollm"', 'tokenizer.merges: 48900'):
        assert line in r.stdout, (line, r.stdout)
    f = GgufFile(peers.smollm2)
    for name in ('blk.0.attn_q.weight', 'blk.29.ffn_down.weight', 'token_embd.weight'):
        t = f.tensors[name]
        np.asarray(t.data).reshape(-1).view(np.uint8).tofile(tmp_path / 'blocks.bin')
        peers.run('ggml_dequantize.py', tmp_path / 'ref.npy', tmp_path / 'blocks.bin', int(t.tensor_type), int(t.n_elements))
        ft.test_eq(f.array(name).reshape(-1).view(np.uint32), np.load(tmp_path / 'ref.npy').view(np.uint32))
    ft.test_eq(run_cli('convert', peers.smollm2, tmp_path / 'smol', '--quiet').returncode, 0)
    hf = peers.run('hf_run.py', tmp_path / 'smol', 'The capital of France is', 4)
    ll = peers.run('llama_run.py', peers.smollm2, 'The capital of France is', 4)
    ft.test_eq(hf['prompt_tokens'], ll['prompt_tokens'])   # the rebuilt tokenizer.json tokenizes as llama.cpp does
    ft.test_eq(hf['generated'][:3], ll['generated'][:3])   # llama.cpp quantizes activations too; the first tokens agree
    assert np.corrcoef(hf['logits'], ll['logits'])[0, 1] > 0.99

def test_readme_main_job_ends_in_a_file_llama_cpp_runs(peers, run_cli, tmp_path):
    "Merge the shipped fine-tunes, quantize the merge to GGUF as the demo does, run it"
    out = tmp_path / 'merged'
    ft.test_eq(run_cli('merge', *(MODELS / f'tiny-llama-{v}' for v in 'abc'), '--base', TINY, '--method', 'ties',
                       '--density', '0.5', '--output', out, '--quiet').returncode, 0)
    for f in ('tokenizer.model', 'tokenizer_config.json', 'generation_config.json'): assert (out / f).exists(), f
    ft.test_eq(run_cli('quantize', out, '--bits', '4', '--method', 'symmetric', '--output', tmp_path / 'm.gguf', '--quiet').returncode, 0)
    got = peers.run('llama_run.py', tmp_path / 'm.gguf', PROMPT, 4)
    ft.test_eq(len(got['generated']), 4)

def _variant(folder, cls, n_kv, tied, bias, rope=None, h=128, layers=2, outliers=False):
    "A small random checkpoint of a Llama-family class: grouped-query attention, tied embeddings, q/k/v biases, weight outliers"
    rng = np.random.default_rng(11)
    ff, v, heads = 2 * h, 512, 4
    kv = h // heads * n_kv
    p = {'model.embed_tokens.weight': rng.standard_normal((v, h)) * 0.05, 'model.norm.weight': 1 + 0.05 * rng.standard_normal(h)}
    if not tied: p['lm_head.weight'] = rng.standard_normal((v, h)) * 0.05
    for i in range(layers):
        pre = f'model.layers.{i}.'
        for n, s in [('self_attn.q_proj', (h, h)), ('self_attn.k_proj', (kv, h)), ('self_attn.v_proj', (kv, h)), ('self_attn.o_proj', (h, h)),
                     ('mlp.gate_proj', (ff, h)), ('mlp.up_proj', (ff, h)), ('mlp.down_proj', (h, ff))]:
            w = p[pre + n + '.weight'] = rng.standard_normal(s) / np.sqrt(s[1])
            if outliers: w[rng.random(s) < 0.001] *= 20
        if bias:
            for n, s in [('q_proj', h), ('k_proj', kv), ('v_proj', kv)]: p[pre + f'self_attn.{n}.bias'] = 0.1 * rng.standard_normal(s)
        p[pre + 'input_layernorm.weight'] = p[pre + 'post_attention_layernorm.weight'] = 1 + 0.05 * rng.standard_normal(h)
    folder.mkdir()
    save_model(Model(ModelMetadata(folder.name, cls), {k: v.astype(np.float32) for k, v in p.items()}), folder / 'model.safetensors')
    model_type = {'LlamaForCausalLM': 'llama', 'MistralForCausalLM': 'mistral', 'Qwen2ForCausalLM': 'qwen2'}[cls]
    cfg = json.loads((TINY / 'config.json').read_text()) | dict(architectures=[cls], model_type=model_type, num_key_value_heads=n_kv,
                                                                tie_word_embeddings=tied, rope_theta=50000.0, hidden_size=h,
                                                                intermediate_size=ff, num_hidden_layers=layers)
    if rope: cfg['rope_scaling'] = rope
    (folder / 'config.json').write_text(json.dumps(cfg))
    for f in ('tokenizer.model', 'tokenizer_config.json', 'special_tokens_map.json'): shutil.copy(TINY / f, folder / f)
    return folder

LLAMA3_ROPE = dict(rope_type='llama3', factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0, original_max_position_embeddings=16)

@pytest.mark.parametrize('cls,n_kv,tied,bias,rope', [('LlamaForCausalLM', 2, True, False, None), ('MistralForCausalLM', 1, False, False, None),
                                                      ('Qwen2ForCausalLM', 2, True, True, None), ('LlamaForCausalLM', 4, False, False, LLAMA3_ROPE)])
def test_the_llama_family_runs_as_in_transformers(peers, run_cli, tmp_path, cls, n_kv, tied, bias, rope):
    "Grouped-query attention (the k permutation by kv heads), tied embeddings, Qwen2's biases, Llama 3's rotary scaling: llama.cpp generates what transformers does, and back"
    src = _variant(tmp_path / cls, cls, n_kv, tied, bias, rope)
    if rope:   # the rope_freqs tensor as llama.cpp's converter computes it
        ft.test_eq(run_cli('convert', src, tmp_path / 'ours-f16.gguf', '--type', 'f16', '--quiet').returncode, 0)
        ft.test_eq(differences(tmp_path / 'ours-f16.gguf', peers.convert(src, tmp_path / 'conv-f16.gguf', 'f16')), [])
    ft.test_eq(run_cli('convert', src, tmp_path / 'm.gguf', '--type', 'f32', '--quiet').returncode, 0)
    got, ref = peers.run('llama_run.py', tmp_path / 'm.gguf', PROMPT, 12), peers.run('hf_run.py', src, PROMPT, 12)
    ft.test_eq((got['prompt_tokens'], got['generated']), (ref['prompt_tokens'], ref['generated']))
    np.testing.assert_allclose(got['logits'], ref['logits'], atol=5e-3 * max(1, np.abs(ref['logits']).max()))   # llama.cpp keeps the KV cache in F16
    assert len(set(ref['generated'])) > 2, ref['generated']   # a model that says something, not one token again and again
    ft.test_eq(run_cli('convert', tmp_path / 'm.gguf', tmp_path / 'back', '--quiet').returncode, 0)
    a, b = load_model(src), load_model(tmp_path / 'back')
    ft.test_eq(sorted(a.names), sorted(b.names))
    for n in a.names: ft.test_eq(a[n].tobytes(), b[n].tobytes())
