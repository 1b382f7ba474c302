"""Load a mixture-of-experts checkpoint with transformers and run it (runs in the peer environment).

Usage: python moe_run.py CHECKPOINT_DIR
Prints JSON: the model class, the config's expert counts, each layer's router shape, the router logits' shape
and the last token's logits.
"""
import json, sys
import torch, transformers

def main(path):
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    cfg = model.config
    n_experts = getattr(cfg, 'num_local_experts', None) or getattr(cfg, 'num_experts', None)
    ids = torch.tensor([[1, 273, 438, 296, 325, 266, 438, 437, 478]])
    with torch.no_grad(): out = model(ids, output_router_logits=True)
    router = out.router_logits[0]   # (tokens, experts) of layer 0
    gates = [tuple(layer.mlp.gate.weight.shape) for layer in model.model.layers]
    print(json.dumps(dict(cls=type(model).__name__, n_experts=n_experts, top_k=cfg.num_experts_per_tok, gates=gates,
                          router_logits=list(router.shape), logits=out.logits[0, -1].tolist(),
                          finite=bool(torch.isfinite(out.logits).all()))))

if __name__ == '__main__': main(sys.argv[1])
