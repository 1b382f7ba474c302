"""K-quants: entrenar beside ggml's C quantizer and beside llama-quantize, MB/s of float32 input and peak RSS, in one run

Part 1, blocks: one float32 matrix (standard normal, seed 0; --rows x 4096) quantized to each K type by ggml's own
ggml_quantize_chunk (the C code llama-quantize calls, through llama-cpp-python's libggml) and by entrenar, each on one
thread and on all cores, each cell in its own process (peak RSS is that process's alone). The bytes must be equal.

Part 2, end to end: a random Llama checkpoint whose rows divide into 256 (--hidden, --layers; written once as an F32
GGUF by entrenar) quantized to each mix by llama.cpp's llama-quantize (all cores) and by `entrenar quantize` from
the same F32 GGUF. Every tensor's type and bytes must be equal.

The peer tools come from tools/peers.sh.

    .venv/bin/python benchmarks/kquants/bench.py [--rows 2048] [--types q2_k,...] [--mixes q4_k_m,q6_k] [--hidden 1024] [--layers 8]
"""
import argparse, hashlib, json, os, resource, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = Path(os.environ.get('ENTRENAR_PEERS') or ROOT / '.cache' / 'peers')
OUT = ROOT / 'benchmarks' / 'results' / 'kquants'
CORES = os.cpu_count()
GGML = {'q2_k': 10, 'q3_k': 11, 'q4_k': 12, 'q5_k': 13, 'q6_k': 14, 'q4_0': 2, 'q8_0': 8}

def measure(cmd):
    "Run `cmd` as this process's only child; print its wall time, peak RSS and last output line as JSON"
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode: sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else '{}'
    try: out = json.loads(last)
    except ValueError: out = {}   # a tool that prints text (llama-quantize)
    print(json.dumps(dict(wall=wall, rss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, out=out)))

def run(cmd):
    out = subprocess.run([sys.executable, __file__, '--measure', '--', *map(str, cmd)], capture_output=True, text=True)
    if out.returncode: sys.exit(out.stdout + out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])

def entrenar_blocks(src, dst, kind, threads):
    "One cell of part 1 on entrenar's side (runs in its own process): quantize, time, write"
    import numpy as np
    sys.path.insert(0, str(ROOT))
    import entrenar.quantize as Q
    Q.THREADS = int(threads)
    x = np.load(src)
    Q.get_block_format(kind).quantize(x[:16])   # load the compiled loops (numba's disk cache) and warm the allocator, as a model's first tensor does
    t = time.perf_counter(); q = Q.get_block_format(kind).quantize(x); t = time.perf_counter() - t
    q.tofile(dst)
    print(json.dumps(dict(seconds=t)))

def digest(p): return hashlib.sha256(Path(p).read_bytes()).hexdigest()

def blocks(a):
    import numpy as np
    OUT.mkdir(parents=True, exist_ok=True)
    src = OUT / 'matrix.npy'
    x = np.random.default_rng(0).standard_normal((a.rows, 4096)).astype(np.float32)
    np.save(src, x)
    mb = x.nbytes / 1e6
    print(f"part 1: a {a.rows} x 4096 float32 matrix ({mb:.0f} MB), MB/s of input (quantize time only), {CORES} cores")
    print(f"{'type':<6}{'ggml 1 thr':>11}{'entrenar 1':>11}{'ratio':>7}{'ggml all':>10}{'entrenar all':>13}{'ratio':>7}"
          f"   {'peak RSS MB ggml / entrenar':>28}  same bytes")
    for k in a.types.split(','):
        cells = {}
        for who, thr in [('ggml', 1), ('ours', 1), ('ggml', CORES), ('ours', CORES)]:
            dst = OUT / f'{who}-{k}-{thr}.bin'
            cmd = ([PEERS / 'venv' / 'bin' / 'python', ROOT / 'tests' / 'peers' / 'ggml_quantize.py', dst, src, GGML[k], '--time', '--threads', thr]
                   if who == 'ggml' else [sys.executable, __file__, '--entrenar-blocks', src, dst, k, thr])
            r = min((run(cmd) for _ in range(a.repeat)), key=lambda r: r['out']['seconds'])
            cells[who, thr] = (mb / r['out']['seconds'], r['rss_mb'], digest(dst))
        same = len({c[2] for c in cells.values()}) == 1
        g1, e1, ga, ea = (cells[c][0] for c in [('ggml', 1), ('ours', 1), ('ggml', CORES), ('ours', CORES)])
        print(f"{k:<6}{g1:>11.1f}{e1:>11.1f}{e1 / g1:>6.2f}x{ga:>10.1f}{ea:>13.1f}{ea / ga:>6.2f}x   "
              f"{cells['ggml', CORES][1]:>13.0f} / {cells['ours', CORES][1]:<12.0f}  {'yes' if same else 'NO'}")

def end_to_end(a):
    import numpy as np, json as js, shutil
    sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / 'tests'))
    from test_gguf_llama_cpp import _variant
    from entrenar.gguf import GgufFile
    d = OUT / f'llama-{a.hidden}x{a.layers}'
    if not (d / 'model.safetensors').exists():
        shutil.rmtree(d, ignore_errors=True)
        _variant(d, 'LlamaForCausalLM', 2, False, False, h=a.hidden, layers=a.layers)
    f32 = OUT / f'llama-{a.hidden}x{a.layers}-f32.gguf'
    if not f32.exists(): subprocess.run([ROOT / '.venv' / 'bin' / 'entrenar', 'convert', d, f32, '--type', 'f32', '--quiet'], check=True)
    mb = f32.stat().st_size / 1e6
    print(f"\npart 2: llama-quantize and entrenar on the same F32 GGUF ({mb:.0f} MB; hidden {a.hidden}, {a.layers} layers), all {CORES} cores, best of {a.repeat}")
    print(f"{'mix':<8}{'llama-quantize s':>17}{'entrenar s':>11}{'speed-up':>9}{'MB/s':>7}   {'peak RSS MB llama-quantize / entrenar':>37}  same tensors")
    for m in a.mixes.split(','):
        theirs, ours = OUT / f'llama-quantize-{m}.gguf', OUT / f'entrenar-{m}.gguf'
        t = [run([PEERS / 'bin' / 'llama-quantize', f32, theirs, m.upper(), CORES]) for _ in range(a.repeat)]
        o = [run([ROOT / '.venv' / 'bin' / 'entrenar', 'quantize', f32, '--type', m, '--output', ours, '--quiet']) for _ in range(a.repeat)]
        wt, wo = min(r['wall'] for r in t), min(r['wall'] for r in o)
        fa, fb = GgufFile(ours), GgufFile(theirs)
        same = set(fa.tensors) == set(fb.tensors) and all(fa.type_of(n) == fb.type_of(n) and bytes(fa.tensors[n].data) == bytes(fb.tensors[n].data) for n in fa.tensors)
        print(f"{m:<8}{wt:>17.2f}{wo:>11.2f}{wt / wo:>8.2f}x{mb / wo:>7.0f}   {max(r['rss_mb'] for r in t):>20.0f} / {max(r['rss_mb'] for r in o):<15.0f}  {'yes' if same else 'NO'}")

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--rows', type=int, default=2048)
    ap.add_argument('--types', default='q2_k,q3_k,q4_k,q5_k,q6_k')
    ap.add_argument('--mixes', default='q4_k_m,q6_k')
    ap.add_argument('--hidden', type=int, default=1024)
    ap.add_argument('--layers', type=int, default=8)
    ap.add_argument('--repeat', type=int, default=2)
    ap.add_argument('--part', default='1,2')
    ap.add_argument('--measure', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('--entrenar-blocks', nargs=4, help=argparse.SUPPRESS)
    ap.add_argument('cmd', nargs='*', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure: return measure(a.cmd)
    if a.entrenar_blocks: return entrenar_blocks(*a.entrenar_blocks)
    if '1' in a.part: blocks(a)
    if '2' in a.part: end_to_end(a)

if __name__ == '__main__': main()
