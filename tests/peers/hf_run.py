"""Run a transformers checkpoint: tokenize, greedy-decode, print JSON (runs in the peer environment).

Usage: python hf_run.py CHECKPOINT_DIR PROMPT N_TOKENS
"""
import json, sys
from pathlib import Path
import torch, transformers

def main(path, prompt, n):
    cfg = Path(path) / 'tokenizer_config.json'
    cls = json.loads(cfg.read_text()).get('tokenizer_class') if cfg.exists() else None
    # the class the checkpoint declares (AutoTokenizer of transformers 5 picks it by model_type, e.g. Qwen2's for any qwen2 model)
    tok = (getattr(transformers, cls, None) or transformers.AutoTokenizer).from_pretrained(path)
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = tok(prompt, return_tensors='pt').input_ids
    with torch.no_grad():
        logits0 = model(ids).logits[0, -1].tolist()
        out = model.generate(ids, max_new_tokens=n, do_sample=False, min_new_tokens=n)
    print(json.dumps(dict(prompt_tokens=ids[0].tolist(), generated=out[0, ids.shape[1]:].tolist(), logits=logits0)))

if __name__ == '__main__': main(sys.argv[1], sys.argv[2], int(sys.argv[3]))
