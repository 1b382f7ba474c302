"""Q4_0 and Q8_0 quantize/dequantize throughput: entrenar.quantize against gguf.quants (llama.cpp's gguf-py)

Each measurement runs in its own subprocess (so peak RSS is that side's alone) on the same float32 matrix
(standard normal, seed 0; 4096 x 4096 = 64 MiB by default). Throughput is MB of float32 input (or output,
for dequantize) per second, best of --repeat runs, by CPU time of the process (robust on a shared machine)
and by wall time. The outputs of both sides are hashed and must be identical.

    python benchmarks/quantize/bench.py [--rows 4096] [--cols 4096] [--repeat 5] [--gpu]

With --gpu, a third side runs entrenar on CuPy (the matrix already on the GPU; the time waits for the GPU to finish)
and its bytes must equal the CPU sides'.
"""
import argparse, hashlib, json, resource, subprocess, sys, time

FORMATS = ('q4_0', 'q8_0')
OPS = ('quantize', 'dequantize')

def worker(side, fmt, op, rows, cols, repeat):
    import numpy as np
    x = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32)
    if side == 'gguf':
        import gguf.quants
        t = getattr(gguf.GGMLQuantizationType, fmt.upper())
        q, dq = (lambda a: gguf.quants.quantize(a, t)), (lambda p: gguf.quants.dequantize(p, t))
    else:
        from entrenar.quantize import BLOCK_FORMATS
        f = BLOCK_FORMATS[fmt]
        q, dq = f.quantize, f.dequantize
        if side == 'entrenar-gpu':
            import cupy as cp
            from entrenar.backend import to_device
            x, sync = to_device(x, 'cupy'), cp.cuda.Device().synchronize
            q, dq = (lambda a: (f.quantize(a), sync())[0]), (lambda p: (f.dequantize(p), sync())[0])
            q(x); dq(q(x))   # compile the kernels before timing
    arg, fn = (x, q) if op == 'quantize' else (q(x), dq)
    if op == 'dequantize': del x
    cpu, wall = [], []
    for _ in range(repeat):
        c0, w0 = time.process_time(), time.perf_counter()
        out = fn(arg)
        cpu.append(time.process_time() - c0); wall.append(time.perf_counter() - w0)
    mb = rows * cols * 4 / 1e6
    if side == 'entrenar-gpu': out = cp.asnumpy(out)
    print(json.dumps(dict(cpu_mbps=mb / min(cpu), wall_mbps=mb / min(wall), rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                          sha1=hashlib.sha1(np.ascontiguousarray(out).tobytes()).hexdigest())))

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rows', type=int, default=4096); ap.add_argument('--cols', type=int, default=4096)
    ap.add_argument('--repeat', type=int, default=5)
    ap.add_argument('--gpu', action='store_true', help='also time entrenar on CuPy')
    ap.add_argument('--worker', nargs=3, metavar=('SIDE', 'FORMAT', 'OP'), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker: return worker(*a.worker, a.rows, a.cols, a.repeat)
    print(f"matrix {a.rows} x {a.cols} float32 = {a.rows * a.cols * 4 / 2**20:.0f} MiB; best of {a.repeat}; one process per cell")
    print(f"{'format':<7}{'op':<11}{'entrenar MB/s':>14}{'gguf MB/s':>11}{'ratio':>7}   {'wall: entrenar':>14}{'gguf':>7}{'ratio':>7}"
          f"   {'peak RSS MB: entrenar':>21}{'gguf':>7}  same bytes" + (f"   {'GPU wall MB/s':>13}{'vs gguf':>8}  same bytes" if a.gpu else ''))
    for fmt in FORMATS:
        for op in OPS:
            r = {}
            for side in ('entrenar', 'gguf') + (('entrenar-gpu',) if a.gpu else ()):
                p = subprocess.run([sys.executable, __file__, '--worker', side, fmt, op, '--rows', str(a.rows), '--cols', str(a.cols),
                                    '--repeat', str(a.repeat)], capture_output=True, text=True)
                if p.returncode: sys.exit(f"{side} {fmt} {op} failed:\n{p.stderr}")
                r[side] = json.loads(p.stdout.strip().splitlines()[-1])
            e, g = r['entrenar'], r['gguf']
            print(f"{fmt:<7}{op:<11}{e['cpu_mbps']:>14.0f}{g['cpu_mbps']:>11.0f}{e['cpu_mbps'] / g['cpu_mbps']:>6.2f}x   "
                  f"{e['wall_mbps']:>14.0f}{g['wall_mbps']:>7.0f}{e['wall_mbps'] / g['wall_mbps']:>6.2f}x   "
                  f"{e['rss_mb']:>21.0f}{g['rss_mb']:>7.0f}  {'yes' if e['sha1'] == g['sha1'] else 'NO'}"
                  + (f"   {r['entrenar-gpu']['wall_mbps']:>13.0f}{r['entrenar-gpu']['wall_mbps'] / g['wall_mbps']:>7.1f}x  {'yes' if r['entrenar-gpu']['sha1'] == g['sha1'] else 'NO'}" if a.gpu else ''), flush=True)

if __name__ == '__main__': main()
