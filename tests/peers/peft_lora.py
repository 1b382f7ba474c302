"""peft's side of the LoRA tests (runs in the peer environment, with transformers and peft).

Usage:
  python peft_lora.py make BASE ADAPTER_OUT CONFIG_JSON      # a random (non-zero) peft adapter for BASE, saved by peft
  python peft_lora.py merge BASE ADAPTER MERGED_OUT [DTYPE]  # PeftModel.from_pretrained + merge_and_unload, saved
  python peft_lora.py logits BASE ADAPTER [FINETUNE]         # last-token logits of BASE with ADAPTER (and of FINETUNE)
Prints one JSON line.
"""
import json, sys
import torch, transformers, peft

IDS = torch.tensor([[1, 17, 42, 99, 250, 3, 77, 128]])

def load(path, dtype='float32'):
    return transformers.AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))

def make(base, out, config_json):
    torch.manual_seed(0)
    cfg = peft.LoraConfig(**json.loads(config_json), init_lora_weights=False)   # random A and B: a non-zero change
    model = peft.get_peft_model(load(base), cfg)
    model.save_pretrained(out)
    print(json.dumps(dict(saved=out)))

def merge(base, adapter, out, dtype='float32'):
    model = peft.PeftModel.from_pretrained(load(base, dtype), adapter, is_trainable=False).merge_and_unload()
    model.save_pretrained(out, safe_serialization=True)
    print(json.dumps(dict(saved=out)))

def logits(base, adapter, finetune=None):
    with torch.no_grad():
        res = dict(adapter=peft.PeftModel.from_pretrained(load(base), adapter).eval()(IDS).logits[0, -1].tolist())
        if finetune: res['finetune'] = load(finetune).eval()(IDS).logits[0, -1].tolist()
    print(json.dumps(res))

if __name__ == '__main__': dict(make=make, merge=merge, logits=logits)[sys.argv[1]](*sys.argv[2:])
