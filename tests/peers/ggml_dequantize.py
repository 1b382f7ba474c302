"""Decode ggml blocks with ggml's own C code (to_float of ggml_get_type_traits, in llama-cpp-python's libggml).

Usage: python ggml_dequantize.py OUT.npy BLOCKS.bin GGML_TYPE N_VALUES   (runs in the peer environment)
"""
import ctypes, glob, os, sys
import numpy as np
import llama_cpp

class Traits(ctypes.Structure):
    _fields_ = [('type_name', ctypes.c_char_p), ('blck_size', ctypes.c_int64), ('blck_size_interleave', ctypes.c_int64),
                ('type_size', ctypes.c_size_t), ('is_quantized', ctypes.c_bool), ('to_float', ctypes.c_void_p), ('from_float_ref', ctypes.c_void_p)]

def main(out, src, kind, n):
    lib = ctypes.CDLL(glob.glob(os.path.join(os.path.dirname(llama_cpp.__file__), 'lib', 'libggml-base.so'))[0])
    lib.ggml_get_type_traits.restype = ctypes.POINTER(Traits)
    t = lib.ggml_get_type_traits(int(kind)).contents
    data = np.fromfile(src, np.uint8)
    if not t.to_float: y = data.view(np.float32).copy()   # F32 has no conversion
    else:
        to_float = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.POINTER(ctypes.c_float), ctypes.c_int64)(t.to_float)
        y = np.empty(int(n), np.float32)
        to_float(data.ctypes.data, y.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), int(n))
    np.save(out, y)
    print('{"type": "%s"}' % t.type_name.decode())

if __name__ == '__main__': main(*sys.argv[1:5])
