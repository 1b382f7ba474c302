"""Write three tiny Llamas with different vocabularies (runs in the peer environment, with transformers).

Usage: python vocab_models.py MODELS_DIR OUT_DIR
OUT_DIR/base: MODELS_DIR/tiny-llama, its tokenizer saved as tokenizer.json; OUT_DIR/a: tiny-llama-a with two plain and one
special token added; OUT_DIR/b: tiny-llama-b with two other tokens added (one shared with a) and two of its base pieces'
ids swapped (rows too), so its rows are not in the base's order.
"""
import json, sys
from pathlib import Path
import torch, transformers
from safetensors.torch import load_file, save_file

def main(models, out):
    torch.manual_seed(0)
    for name, src, plain, special in [('base', 'tiny-llama', [], []), ('a', 'tiny-llama-a', ['zebra', 'okapi'], ['<tool>']),
                                      ('b', 'tiny-llama-b', ['okapi', 'narwhal'], ['<think>'])]:
        tok = transformers.AutoTokenizer.from_pretrained(Path(models) / src)
        model = transformers.AutoModelForCausalLM.from_pretrained(Path(models) / src, dtype=torch.float32)
        if plain: tok.add_tokens(plain)
        if special: tok.add_special_tokens({'additional_special_tokens': special})
        model.resize_token_embeddings(len(tok))
        model.save_pretrained(Path(out) / name); tok.save_pretrained(Path(out) / name)
    b = Path(out) / 'b'
    d = json.loads((b / 'tokenizer.json').read_text())
    v = d['model']['vocab']; inv = {i: t for t, i in v.items()}
    v[inv[100]], v[inv[200]] = 200, 100
    (b / 'tokenizer.json').write_text(json.dumps(d, ensure_ascii=False))
    w = load_file(b / 'model.safetensors')
    for n in ('model.embed_tokens.weight', 'lm_head.weight'): w[n][[100, 200]] = w[n][[200, 100]].clone()
    save_file(w, b / 'model.safetensors', metadata={'format': 'pt'})
    print(json.dumps({n: len(transformers.AutoTokenizer.from_pretrained(Path(out) / n)) for n in ('base', 'a', 'b')}))

if __name__ == '__main__': main(sys.argv[1], sys.argv[2])
