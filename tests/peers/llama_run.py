"""Run a GGUF in llama.cpp (llama-cpp-python's low-level bindings): tokenize, greedy-decode, print JSON.

Usage: python llama_run.py MODEL.gguf PROMPT N_TOKENS   (runs in the peer environment, not entrenar's)
"""
import ctypes, json, sys
import numpy as np
import llama_cpp as L

def main(path, prompt, n):
    L.llama_backend_init()
    mp = L.llama_model_default_params()
    mp.use_extra_bufts = False          # no AMX repack buffers (segfault where the VM hides AMX)
    model = L.llama_model_load_from_file(path.encode(), mp)
    if not model: print(json.dumps(dict(error='load failed'))); return 1
    vocab = L.llama_model_get_vocab(model)
    buf = (L.llama_token * 512)()
    k = L.llama_tokenize(vocab, prompt.encode(), len(prompt.encode()), buf, 512, True, False)
    toks = list(buf[:k])
    cp = L.llama_context_default_params(); cp.n_ctx = 256; cp.n_batch = 256; cp.n_threads = cp.n_threads_batch = 2
    ctx = L.llama_init_from_model(model, cp)
    n_vocab = L.llama_vocab_n_tokens(vocab)
    out, logits0, cur = [], None, list(toks)
    for step in range(n):
        arr = (L.llama_token * len(cur))(*cur)
        if L.llama_decode(ctx, L.llama_batch_get_one(arr, len(cur))) != 0: print(json.dumps(dict(error='decode failed'))); return 1
        lg = np.ctypeslib.as_array(L.llama_get_logits_ith(ctx, -1), shape=(n_vocab,)).copy()
        if logits0 is None: logits0 = lg.tolist()
        nxt = int(lg.argmax()); out.append(nxt); cur = [nxt]
    piece = ctypes.create_string_buffer(256)
    def text_of(t):
        n = L.llama_token_to_piece(vocab, t, piece, 256, 0, False)
        return piece.raw[:max(n, 0)]
    text = b''.join(text_of(t) for t in out).decode('utf-8', 'replace')
    print(json.dumps(dict(prompt_tokens=toks, generated=out, logits=logits0, text=text)))
    L.llama_free(ctx); L.llama_model_free(model)
    return 0

if __name__ == '__main__': sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
