"""Quantize rows with ggml's own C code (ggml_quantize_chunk, what llama-quantize calls), through llama-cpp-python's libggml.

Usage: python ggml_quantize.py OUT.bin IN.npy GGML_TYPE [IMATRIX.npy] [--time]   (runs in the peer environment)
IN.npy is a 2-d float32 array (rows, n_per_row); IMATRIX.npy a float32 vector of n_per_row importance weights.
With --time, prints the seconds ggml took, on one thread, as JSON.
"""
import ctypes, glob, json, os, sys, time
import numpy as np
import llama_cpp

def main(out, src, kind, *rest):
    lib = ctypes.CDLL(glob.glob(os.path.join(os.path.dirname(llama_cpp.__file__), 'lib', 'libggml-base.so'))[0])
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    files = [r for r in rest if not r.startswith('--')]
    x = np.ascontiguousarray(np.load(src), np.float32)
    rows, n = x.shape
    w = np.ascontiguousarray(np.load(files[0]), np.float32) if files else None
    dst = np.zeros(rows * lib.ggml_row_size(int(kind), n), np.uint8)
    t = time.perf_counter()
    size = lib.ggml_quantize_chunk(int(kind), x.ctypes.data, dst.ctypes.data, 0, rows, n, None if w is None else w.ctypes.data)
    t = time.perf_counter() - t
    dst[:size].tofile(out)
    if '--time' in rest: print(json.dumps({'seconds': t}))

if __name__ == '__main__': main(*sys.argv[1:])
