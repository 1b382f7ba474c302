"""Every finite positive float32 bit pattern, printed by `entrenar.numfmt` and by orjson, compared byte for byte.

    python benchmarks/io/exhaustive_numfmt.py [LO] [HI]     # bit patterns LO..HI-1; default all 2**31

About 5 minutes per 2**30 patterns on one core; run halves in two processes to use two. Negative values differ
from positive ones only by the sign, which the kernel writes before the digits.
"""
import sys, time
import numpy as np, orjson
from entrenar.numfmt import format_float32

def main(lo=0, hi=1 << 31, step=1 << 24):
    t0, bad = time.time(), 0
    for s in range(lo, hi, step):
        v = np.arange(s, min(s + step, hi), dtype=np.uint64).astype(np.uint32).view(np.float32)
        v = v[np.isfinite(v)]
        if not v.size: continue
        ref, ours = orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY)[1:-1], format_float32(v)
        if ref != ours:
            r, o = ref.split(b','), ours.split(b',')
            first = [i for i in range(len(r)) if i >= len(o) or r[i] != o[i]][:5]
            print('MISMATCH', [(hex(int(v[i:i + 1].view(np.uint32)[0])), r[i], o[i] if i < len(o) else None) for i in first], flush=True)
            bad += 1
    print(f"bit patterns {lo}..{hi}: {bad} chunks differ; {time.time() - t0:.0f} s", flush=True)
    return bad

if __name__ == '__main__': sys.exit(1 if main(*map(int, sys.argv[1:3])) else 0)
