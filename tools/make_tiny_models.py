"""Generate the small models shipped in `models/` (deterministic: running it again gives the same bytes).

tiny-llama is a Llama-shaped model (hidden 128, 2 layers, vocab 512, float32) with random weights;
tiny-llama-{a,b,c} are three "fine-tunes" of it: the base plus small, differently seeded task vectors.
"""
import json, sys
from pathlib import Path
import numpy as np
from entrenar.io import Model, ModelMetadata, save_model

HIDDEN, INTER, LAYERS, VOCAB = 128, 256, 2, 512
ROOT = Path(__file__).resolve().parent.parent / 'models'

def base_params(rng):
    p = {'model.embed_tokens.weight': rng.standard_normal((VOCAB, HIDDEN)) * 0.02}
    for i in range(LAYERS):
        pre = f'model.layers.{i}.'
        for n in 'qkvo': p[pre + f'self_attn.{n}_proj.weight'] = rng.standard_normal((HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)
        p[pre + 'mlp.gate_proj.weight'] = rng.standard_normal((INTER, HIDDEN)) / np.sqrt(HIDDEN)
        p[pre + 'mlp.up_proj.weight'] = rng.standard_normal((INTER, HIDDEN)) / np.sqrt(HIDDEN)
        p[pre + 'mlp.down_proj.weight'] = rng.standard_normal((HIDDEN, INTER)) / np.sqrt(INTER)
        p[pre + 'input_layernorm.weight'] = 1 + 0.05 * rng.standard_normal(HIDDEN)
        p[pre + 'post_attention_layernorm.weight'] = 1 + 0.05 * rng.standard_normal(HIDDEN)
    p['model.norm.weight'] = 1 + 0.05 * rng.standard_normal(HIDDEN)
    p['lm_head.weight'] = rng.standard_normal((VOCAB, HIDDEN)) * 0.02
    return {k: v.astype(np.float32) for k, v in p.items()}

def config():
    return dict(architectures=['LlamaForCausalLM'], model_type='llama', hidden_size=HIDDEN, intermediate_size=INTER,
                num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=4, vocab_size=VOCAB,
                rms_norm_eps=1e-6, max_position_embeddings=256, torch_dtype='float32', tie_word_embeddings=False)

def write(name, params, note):
    d = ROOT / name
    d.mkdir(parents=True, exist_ok=True)
    meta = ModelMetadata(name, 'LlamaForCausalLM').with_custom('description', note).with_custom('hidden_size', HIDDEN)
    save_model(Model(meta, params), d / 'model.safetensors')
    (d / 'config.json').write_text(json.dumps(config(), indent=2) + '\n')

def main():
    base = base_params(np.random.default_rng(20261126))
    write('tiny-llama', base, 'random Llama-shaped base model for demos and tests')
    for i, v in enumerate('abc'):
        rng = np.random.default_rng(100 + i)
        tuned = {}
        for k, w in base.items():
            delta = rng.standard_normal(w.shape).astype(np.float32) * np.float32(0.1 * w.std())
            delta *= rng.random(w.shape) < 0.6   # sparse-ish task vectors, so TIES/DARE have signs to elect
            tuned[k] = (w + delta).astype(np.float32)
        write(f'tiny-llama-{v}', tuned, f'fine-tune {v} of tiny-llama (base + a seeded task vector)')

if __name__ == '__main__': main()
