"""Generate the small models shipped in `models/` (deterministic: running it again gives the same bytes).

tiny-llama is a Llama-shaped model (hidden 128, 2 layers, vocab 512, float32) with random weights;
tiny-llama-{a,b,c} are three "fine-tunes" of it: the base plus small, differently seeded task vectors.
All four share a real (small) tokenizer: a SentencePiece BPE model of 512 pieces with byte fallback, laid out as
Llama's (<unk>, <s>, </s>), trained on models/tokenizer-corpus.txt, so that llama.cpp and transformers can run them on text.
"""
import io, json, sys
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
                rms_norm_eps=1e-6, max_position_embeddings=256, torch_dtype='float32', tie_word_embeddings=False,
                bos_token_id=1, eos_token_id=2)

CHAT_TEMPLATE = ("{% for m in messages %}{{ '<s>' if loop.first else '' }}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")

def tokenizer_model() -> bytes:
    "A SentencePiece BPE model trained on the corpus (deterministic: one thread, fixed input)"
    import sentencepiece as spm
    lines = [l.strip() for l in (ROOT / 'tokenizer-corpus.txt').read_text('utf-8').splitlines() if l.strip()]
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=out, vocab_size=VOCAB, model_type='bpe',
        byte_fallback=True, character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, split_digits=True,
        allow_whitespace_only_pieces=True, normalization_rule_name='identity', remove_extra_whitespaces=False, minloglevel=2)
    return out.getvalue()

def tokenizer_files() -> dict:
    "file name -> bytes, as transformers saves a Llama tokenizer"
    special = lambda t: dict(content=t, lstrip=False, normalized=False, rstrip=False, single_word=False, special=True)
    cfg = dict(add_bos_token=True, add_eos_token=False, added_tokens_decoder={str(i): special(t) for i, t in enumerate(['<unk>', '<s>', '</s>'])},
               bos_token='<s>', eos_token='</s>', unk_token='<unk>', pad_token=None, chat_template=CHAT_TEMPLATE,
               clean_up_tokenization_spaces=False, legacy=False, model_max_length=256, sp_model_kwargs={}, tokenizer_class='LlamaTokenizer')
    gen = dict(bos_token_id=1, eos_token_id=2)
    return {'tokenizer.model': tokenizer_model(), 'tokenizer_config.json': (json.dumps(cfg, indent=2) + '\n').encode(),
            'special_tokens_map.json': (json.dumps(dict(bos_token='<s>', eos_token='</s>', unk_token='<unk>'), indent=2) + '\n').encode(),
            'generation_config.json': (json.dumps(gen, indent=2) + '\n').encode()}

def write(name, params, note):
    d = ROOT / name
    d.mkdir(parents=True, exist_ok=True)
    meta = ModelMetadata(name, 'LlamaForCausalLM').with_custom('description', note).with_custom('hidden_size', HIDDEN)
    save_model(Model(meta, params), d / 'model.safetensors')
    (d / 'config.json').write_text(json.dumps(config(), indent=2) + '\n')
    for f, data in TOKENIZER.items(): (d / f).write_bytes(data)

def main():
    global TOKENIZER
    TOKENIZER = tokenizer_files()
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
