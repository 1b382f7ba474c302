"""Quantize a GGUF with llama.cpp's own llama_model_quantize (llama-quantize's code), through llama-cpp-python.

Usage: python llama_quantize.py IN.gguf OUT.gguf TYPE   (TYPE: q4_0, q8_0, ...; runs in the peer environment)
"""
import sys
import llama_cpp as L

def main(src, dst, kind):
    p = L.llama_model_quantize_default_params()
    p.ftype = getattr(L, f'LLAMA_FTYPE_MOSTLY_{kind.upper()}')
    p.nthread = 2
    rc = L.llama_model_quantize(src.encode(), dst.encode(), p)
    return 1 if rc else 0

if __name__ == '__main__': sys.exit(main(*sys.argv[1:4]))
