"""Quantize rows with ggml's own C code (ggml_quantize_chunk, what llama-quantize calls), through llama-cpp-python's libggml.

Usage: python ggml_quantize.py OUT.bin IN.npy GGML_TYPE [IMATRIX.npy] [--time] [--threads N]   (runs in the peer environment)
IN.npy is a 2-d float32 array (rows, n_per_row); IMATRIX.npy a float32 vector of n_per_row importance weights.
With --time, prints the seconds ggml took as JSON. --threads N splits the rows between N threads, as llama-quantize
does (ctypes releases the GIL during the call); the bytes do not depend on it.
"""
import ctypes, glob, json, os, sys, time
from concurrent.futures import ThreadPoolExecutor
import numpy as np
import llama_cpp

def main(out, src, kind, *rest):
    lib = ctypes.CDLL(glob.glob(os.path.join(os.path.dirname(llama_cpp.__file__), 'lib', 'libggml-base.so'))[0])
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    threads = int(rest[rest.index('--threads') + 1]) if '--threads' in rest else 1
    rest = [r for i, r in enumerate(rest) if r != '--threads' and (i == 0 or rest[i - 1] != '--threads')]
    files = [r for r in rest if not r.startswith('--')]
    x = np.ascontiguousarray(np.load(src), np.float32)
    rows, n = x.shape
    w = np.ascontiguousarray(np.load(files[0]), np.float32) if files else None
    dst = np.zeros(rows * lib.ggml_row_size(int(kind), n), np.uint8)
    step = -(-rows // threads)
    part = lambda r0: lib.ggml_quantize_chunk(int(kind), x.ctypes.data, dst.ctypes.data, r0 * n, min(step, rows - r0), n,
                                              None if w is None else w.ctypes.data)
    t = time.perf_counter()
    with ThreadPoolExecutor(threads) as ex: size = sum(ex.map(part, range(0, rows, step)))
    t = time.perf_counter() - t
    dst[:size].tofile(out)
    if '--time' in rest: print(json.dumps({'seconds': t}))

if __name__ == '__main__': main(*sys.argv[1:])
