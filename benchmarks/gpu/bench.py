"""GPU figures for issue 17: the device's copy bandwidths, then entrenar's quantize/dequantize and merge kernels against them

    python benchmarks/gpu/bench.py [--out results.json] [--rows 8192 --cols 8192] [--repeat 5] [--parts device,kernels,merge]
    python benchmarks/gpu/bench.py --dry-run        # no GPU: tiny sizes, the CPU sides only (catches typos)

Three parts, one table each, all data resident where it is computed (no transfers inside a timing):
  device   device-to-device copy (a 1 GiB float32 array: cudaMemcpy and CuPy's copy kernel; GB/s over bytes read and
           written), host-to-device and device-to-host copies from pinned (cupy.cuda.alloc_pinned_memory) and pageable
           host memory (GB/s over the bytes moved once). The best D2D figure is the "copy bandwidth" below.
  kernels  every ggml block format: `get_block_format(name).quantize(x)` and `.dequantize(q)` of a float32 matrix on the
           GPU (CuPy arrays), timed with CUDA events after a warm-up, best of --repeat; GB/s over bytes read and written,
           that as a fraction of the copy bandwidth (issue 17's goal: >= 0.5); the same calls on numpy with every CPU
           core (`entrenar.quantize.THREADS`), and whether the GPU's bytes equal the CPU's.
  merge    `merge_tensors('ties', ...)` of a base and 3 fine-tunes (float32, 64M elements each) on CuPy against numpy,
           GB/s and fraction of copy bandwidth, max difference in float32 ulps; `kth_value` of 256M float32 elements.

A row that fails prints its error and the run goes on. Results go to --out as JSON, rewritten after every row (a run
stopped by a time limit keeps what it measured). A row's repeats stop early once it has spent --row-budget seconds.
"""
import argparse, json, math, os, platform, sys, time, traceback
from pathlib import Path
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
FORMATS = ('q8_0', 'q4_0', 'q5_0', 'q4_1', 'q5_1', 'q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k')
GB = 1e9

class FakeCupy:
    "--fake-gpu: numpy posing as CuPy, so that the GPU branches' code runs on a machine without a GPU (timings meaningless)"
    __version__, float32 = 'fake', np.float32
    asarray, asnumpy, empty, empty_like = staticmethod(np.array), staticmethod(np.asarray), staticmethod(np.empty), staticmethod(np.empty_like)
    class cuda:
        class Event:
            def record(self): self.t = time.perf_counter()
            def synchronize(self): pass
        get_elapsed_time = staticmethod(lambda a, b: (b.t - a.t) * 1e3)
        class Device:
            def synchronize(self): pass
        class runtime:
            getDeviceProperties = staticmethod(lambda i: dict(name=b'fake', totalGlobalMem=0))
            runtimeGetVersion = staticmethod(lambda: 0)
    class _Pool:
        def free_all_blocks(self): pass
    get_default_memory_pool = staticmethod(lambda: FakeCupy._Pool())

class Results:
    "The JSON document, written after every row"
    def __init__(self, path, meta):
        self.path, self.doc = path, dict(meta=meta, device=[], kernels=[], merge=[], errors=[])
    def add(self, part, row):
        self.doc[part].append(row); self.save()
    def error(self, part, what, e):
        msg = f"{type(e).__name__}: {e}".strip()[:2000]
        print(f"  ! {part} {what} failed: {msg}", flush=True)
        self.doc['errors'].append(dict(part=part, what=what, error=msg, traceback=traceback.format_exc()[-4000:])); self.save()
    def save(self):
        if self.path: Path(self.path).write_text(json.dumps(self.doc, indent=1, default=str))

def best_time(fn, repeat, budget, timer):
    "Best of up to `repeat` timed calls of `fn` (after the caller's warm-up), stopping once `budget` seconds are spent"
    best, spent, out = math.inf, 0.0, None
    for _ in range(repeat):
        t0 = time.perf_counter()
        dt, out = timer(fn)
        best, spent = min(best, dt), spent + time.perf_counter() - t0
        if spent > budget: break
    return best, out

def wall_timer(fn):
    t = time.perf_counter(); out = fn(); return time.perf_counter() - t, out

def gpu_timer(cp):
    "Time `fn` between two CUDA events on the current stream (host-side work between them counts too)"
    def timer(fn):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record(); out = fn(); b.record(); b.synchronize()
        return cp.cuda.get_elapsed_time(a, b) / 1e3, out
    return timer

def fmt(v, spec='.1f', none='-', suffix=''): return none if v is None else format(v, spec) + suffix

def same_bytes(a, b) -> bool:
    "Whether two arrays hold the same bytes (shapes may differ: (rows, row_bytes) against (blocks, block_bytes))"
    a, b = np.ascontiguousarray(a), np.ascontiguousarray(b)
    return a.nbytes == b.nbytes and bool(np.array_equal(a.reshape(-1).view(np.uint8), b.reshape(-1).view(np.uint8)))

# ---------------------------------------------------------------- part a: the device's copy bandwidths
def part_device(cp, res, args):
    n = args.copy_bytes
    print(f"\n## device copies ({n / 2**30:.2f} GiB; best of {args.repeat})\n")
    print(f"| copy | GB/s | counts |\n|---|---|---|")
    timer = gpu_timer(cp)
    def row(name, fn, nbytes, counts, host=False):
        try:
            fn()   # warm-up
            t, _ = best_time(fn, args.repeat, args.row_budget, wall_timer if host else timer)
            r = dict(copy=name, seconds=t, bytes=nbytes, gbps=nbytes / t / GB, counts=counts); res.add('device', r)
            print(f"| {name} | {r['gbps']:.1f} | {counts} |", flush=True)
            return r['gbps']
        except Exception as e: res.error('device', name, e); return None
    rt = cp.cuda.runtime   # cudaMemcpy with plain pointers (MemoryPointer.copy_from_host's argument type changed across CuPy versions)
    x = cp.empty(n // 4, cp.float32); x.fill(1.0); y = cp.empty_like(x)
    d2d = [row('D2D cudaMemcpy', lambda: rt.memcpy(y.data.ptr, x.data.ptr, n, rt.memcpyDeviceToDevice), 2 * n, 'read + written'),
           row('D2D copy kernel (y[...] = x)', lambda: y.__setitem__(Ellipsis, x), 2 * n, 'read + written')]
    sync = cp.cuda.Device().synchronize
    try:
        pinned = cp.cuda.alloc_pinned_memory(n); hp = np.frombuffer(pinned, np.uint8, n); hp[:] = 1
        row('H2D pinned', lambda: (rt.memcpy(x.data.ptr, hp.ctypes.data, n, rt.memcpyHostToDevice), sync()), n, 'bytes moved', host=True)
        row('D2H pinned', lambda: (rt.memcpy(hp.ctypes.data, x.data.ptr, n, rt.memcpyDeviceToHost), sync()), n, 'bytes moved', host=True)
        del hp, pinned
    except Exception as e: res.error('device', 'pinned', e)
    try:
        hv = np.ones(n, np.uint8)   # pageable, pages touched
        row('H2D pageable', lambda: (rt.memcpy(x.data.ptr, hv.ctypes.data, n, rt.memcpyHostToDevice), sync()), n, 'bytes moved', host=True)
        row('D2H pageable', lambda: (rt.memcpy(hv.ctypes.data, x.data.ptr, n, rt.memcpyDeviceToHost), sync()), n, 'bytes moved', host=True)
        del hv
    except Exception as e: res.error('device', 'pageable', e)
    del x, y; cp.get_default_memory_pool().free_all_blocks()
    best = max([g for g in d2d if g] or [0.0]) or None
    res.doc['copy_gbps'] = best
    print(f"\ncopy bandwidth (best D2D): {fmt(best)} GB/s")
    return best

# ---------------------------------------------------------------- part b: block-format kernels
def part_kernels(cp, res, args, copy_gbps):
    import entrenar.quantize as Q
    from entrenar.quantize import get_block_format
    Q.THREADS = args.threads
    R, C = args.rows, args.cols
    print(f"\n## quantize / dequantize kernels: float32 {R} x {C} ({R * C * 4 / 2**20:.0f} MiB); GPU by CUDA events, CPU "
          f"numpy with {args.threads} threads (wall); best of {args.repeat}\n")
    print("| format | op | GPU ms | GPU GB/s | of copy bw | CPU ms | CPU GB/s | GPU / CPU | same bytes | kernel GB/s | kernel of copy bw | kernel same bytes |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")
    xh = np.random.default_rng(0).standard_normal((R, C), dtype=np.float32)
    xd = cp.asarray(xh) if cp else None
    timer = gpu_timer(cp) if cp else None
    for name in args.formats:
        try: f = get_block_format(name)
        except Exception as e: res.error('kernels', name, e); continue
        if C % f.block_size: print(f"| {name} | - | columns not a multiple of {f.block_size} |"); continue
        qh = None
        for op in ('quantize', 'dequantize'):
            r = dict(format=name, op=op, rows=R, cols=C)
            try:   # CPU side first: its output is the reference
                if qh is None: f.dequantize(f.quantize(xh[:1])); qh = f.quantize(xh)   # a tiny call first: numba compiles
                fn = (lambda: f.quantize(xh)) if op == 'quantize' else (lambda: f.dequantize(qh))
                nbytes = xh.nbytes + qh.nbytes
                t, out_h = best_time(fn, args.cpu_repeat, args.row_budget, wall_timer)
                r.update(bytes=nbytes, cpu_s=t, cpu_gbps=nbytes / t / GB)
            except Exception as e: res.error('kernels', f'{name} {op} cpu', e); out_h = None; nbytes = None
            if cp is not None:
                try:
                    qd = cp.asarray(qh) if qh is not None else f.quantize(xd)
                    fn = (lambda: f.quantize(xd)) if op == 'quantize' else (lambda: f.dequantize(qd))
                    fn(); cp.cuda.Device().synchronize()   # warm-up: compiles the kernels
                    nbytes = nbytes or (xd.nbytes + qd.nbytes)
                    t, out_d = best_time(fn, args.repeat, args.row_budget, timer)
                    r.update(bytes=nbytes, gpu_s=t, gpu_gbps=nbytes / t / GB)
                    if copy_gbps: r['of_copy'] = r['gpu_gbps'] / copy_gbps
                    if out_h is not None: r['same_bytes'] = same_bytes(cp.asnumpy(out_d), out_h)
                    if 'cpu_s' in r: r['gpu_over_cpu'] = r['cpu_s'] / t
                    del out_d
                    if args.direct: direct_kernel(cp, res, args, r, name, op, xd, qd, out_h, nbytes, copy_gbps, timer)
                    del qd
                except Exception as e: res.error('kernels', f'{name} {op} gpu', e)
            res.add('kernels', r)
            same = {True: 'yes', False: 'NO'}.get(r.get('same_bytes'), '-')
            ksame = {True: 'yes', False: 'NO'}.get(r.get('kernel_same_bytes'), '-')
            print(f"| {name} | {op} | {fmt(r.get('gpu_s') and r['gpu_s'] * 1e3, '.2f')} | {fmt(r.get('gpu_gbps'))} | {fmt(r.get('of_copy'), '.1%')} | "
                  f"{fmt(r.get('cpu_s') and r['cpu_s'] * 1e3, '.1f')} | {fmt(r.get('cpu_gbps'), '.2f')} | {fmt(r.get('gpu_over_cpu'), '.1f', suffix='x')} | {same} | "
                  f"{fmt(r.get('kernel_gbps'))} | {fmt(r.get('kernel_of_copy'), '.1%')} | {ksame} |", flush=True)
        if cp is not None: cp.get_default_memory_pool().free_all_blocks()

LEGACY = ('q8_0', 'q4_0', 'q5_0', 'q4_1', 'q5_1')

def direct_kernel(cp, res, args, r, name, op, xd, qd, out_h, nbytes, copy_gbps, timer):
    "The CUDA kernels themselves (entrenar.cuda_blocks / cuda_kquants), where present: the figure without the dispatch"
    import importlib
    mod, fn_name = (('entrenar.cuda_blocks', 'quantize_blocks') if name in LEGACY else ('entrenar.cuda_kquants', 'quantize_kquant')) \
                   if op == 'quantize' else ('entrenar.cuda_blocks', 'dequantize_blocks')
    try: kernel = getattr(importlib.import_module(mod), fn_name)
    except (ImportError, AttributeError): return
    try:
        fn = (lambda: kernel(name, xd)) if op == 'quantize' else (lambda: kernel(name, qd))
        fn(); cp.cuda.Device().synchronize()
        t, out = best_time(fn, args.repeat, args.row_budget, timer)
        r.update(kernel=f'{mod}.{fn_name}', kernel_s=t, kernel_gbps=nbytes / t / GB)
        if copy_gbps: r['kernel_of_copy'] = r['kernel_gbps'] / copy_gbps
        if out_h is not None: r['kernel_same_bytes'] = same_bytes(cp.asnumpy(out), out_h)
    except Exception as e: res.error('kernels', f'{name} {op} {mod}.{fn_name}', e)

# ---------------------------------------------------------------- part c: merge kernels
def ulps32(a, b):
    "Max distance between two float32 arrays in units in the last place (of the larger magnitude at each element)"
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    step = np.spacing(np.maximum(np.abs(a), np.abs(b)))
    with np.errstate(invalid='ignore', divide='ignore'): d = np.where(a == b, 0, np.abs(a - b) / step)
    return float(np.nanmax(d)) if d.size else 0.0

def part_merge(cp, res, args, copy_gbps):
    from entrenar.merge import merge_tensors, kth_value
    n, k = args.merge_elements, args.models
    print(f"\n## merge kernels: TIES of a base and {k - 1} fine-tunes, float32 {n / 2**20:.0f}M elements each; "
          f"kth_value of {args.kth_elements / 2**20:.0f}M; best of {args.repeat}\n")
    print("| kernel | GPU ms | GPU GB/s | of copy bw | CPU ms | CPU GB/s | GPU / CPU | GPU vs CPU |\n|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    base = rng.standard_normal(n, dtype=np.float32) * np.float32(0.02)
    xs = [base + rng.standard_normal(n, dtype=np.float32) * np.float32(0.002) for _ in range(k - 1)]
    params = dict(weight=[1.0 / (k - 1)] * (k - 1), density=0.5)
    timer = gpu_timer(cp) if cp else None
    def show(r):
        res.add('merge', r)
        print(f"| {r['kernel']} | {fmt(r.get('gpu_s') and r['gpu_s'] * 1e3, '.2f')} | {fmt(r.get('gpu_gbps'))} | {fmt(r.get('of_copy'), '.1%')} | "
              f"{fmt(r.get('cpu_s') and r['cpu_s'] * 1e3, '.1f')} | {fmt(r.get('cpu_gbps'), '.2f')} | {fmt(r.get('gpu_over_cpu'), '.1f', suffix='x')} | {r.get('check', '-')} |", flush=True)
    nbytes = (k + 1) * n * 4   # k inputs read, one output written
    r, out_h = dict(kernel='ties', elements=n, models=k, bytes=nbytes), None
    try:
        merge_tensors('ties', [x[:4096] for x in xs], base=base[:4096], **params)   # numba compiles
        t, out_h = best_time(lambda: merge_tensors('ties', xs, base=base, **params), args.cpu_repeat, args.row_budget, wall_timer)
        r.update(cpu_s=t, cpu_gbps=nbytes / t / GB)
    except Exception as e: res.error('merge', 'ties cpu', e)
    if cp is not None:
        try:
            bd, xd = cp.asarray(base), [cp.asarray(x) for x in xs]
            fn = lambda: merge_tensors('ties', xd, base=bd, **params)
            fn(); cp.cuda.Device().synchronize()
            t, out_d = best_time(fn, args.repeat, args.row_budget, timer)
            r.update(gpu_s=t, gpu_gbps=nbytes / t / GB)
            if copy_gbps: r['of_copy'] = r['gpu_gbps'] / copy_gbps
            if 'cpu_s' in r: r['gpu_over_cpu'] = r['cpu_s'] / t
            if out_h is not None:
                u = ulps32(cp.asnumpy(out_d), out_h); r['max_ulps'] = u; r['check'] = f"max {u:.2g} ulp" + ('' if u <= 1 else ' (GOAL: <= 1)')
            del bd, xd, out_d
        except Exception as e: res.error('merge', 'ties gpu', e)
    show(r); del xs, base
    m = args.kth_elements; rank = m // 2
    r = dict(kernel='kth_value', elements=m, rank=rank, bytes=m * 4)
    vh = np.abs(rng.standard_normal(m, dtype=np.float32))
    try:
        t, kh = best_time(lambda: kth_value(vh, rank), args.cpu_repeat, args.row_budget, wall_timer)
        r.update(cpu_s=t, cpu_gbps=m * 4 / t / GB)
    except Exception as e: res.error('merge', 'kth_value cpu', e); kh = None
    if cp is not None:
        try:
            vd = cp.asarray(vh)
            fn = lambda: kth_value(vd, rank)
            fn(); cp.cuda.Device().synchronize()
            t, kd = best_time(fn, args.repeat, args.row_budget, timer)
            r.update(gpu_s=t, gpu_gbps=m * 4 / t / GB)
            if copy_gbps: r['of_copy'] = r['gpu_gbps'] / copy_gbps
            if 'cpu_s' in r: r['gpu_over_cpu'] = r['cpu_s'] / t
            kd = float(kd); below, upto = int((vd < kd).sum()), int((vd <= kd).sum())
            r['check'] = ('rank ok' if below <= rank < upto else f'WRONG RANK ({below}..{upto})') + ('' if kh is None else (', = CPU' if kd == float(kh) else ', != CPU'))
            del vd
        except Exception as e: res.error('merge', 'kth_value gpu', e)
    show(r)
    if cp is not None:   # the CUDA kernel itself, where the integration has not routed merge.kth_value to it yet
        try:
            import entrenar.cuda_merge as CM
            if getattr(CM, 'kth_value', None) is not None:
                vd = cp.asarray(vh); fn = lambda: CM.kth_value(vd, rank)
                fn(); cp.cuda.Device().synchronize()
                t, kd = best_time(fn, args.repeat, args.row_budget, timer)
                r = dict(kernel='cuda_merge.kth_value', elements=m, rank=rank, bytes=m * 4, gpu_s=t, gpu_gbps=m * 4 / t / GB)
                if copy_gbps: r['of_copy'] = r['gpu_gbps'] / copy_gbps
                kd = float(kd); below, upto = int((vd < kd).sum()), int((vd <= kd).sum())
                r['check'] = 'rank ok' if below <= rank < upto else f'WRONG RANK ({below}..{upto})'
                show(r); del vd
        except ImportError: pass
        except Exception as e: res.error('merge', 'cuda_merge.kth_value', e)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--out', default=None, help='write the results as JSON here')
    ap.add_argument('--parts', default='device,kernels,merge')
    ap.add_argument('--formats', default=','.join(FORMATS))
    ap.add_argument('--rows', type=int, default=8192); ap.add_argument('--cols', type=int, default=8192)
    ap.add_argument('--repeat', type=int, default=5, help='GPU timings: best of this many')
    ap.add_argument('--cpu-repeat', type=int, default=2, help='CPU timings: best of this many')
    ap.add_argument('--row-budget', type=float, default=3.0, help="stop a row's repeats after this many seconds")
    ap.add_argument('--threads', type=int, default=os.cpu_count() or 1, help='CPU threads for the numpy side')
    ap.add_argument('--copy-bytes', type=int, default=1 << 30)
    ap.add_argument('--models', type=int, default=4, help='TIES inputs: the base and models-1 fine-tunes')
    ap.add_argument('--merge-elements', type=int, default=64 << 20); ap.add_argument('--kth-elements', type=int, default=256 << 20)
    ap.add_argument('--direct', action=argparse.BooleanOptionalAction, default=True,
                    help='also time entrenar.cuda_blocks / cuda_kquants directly, where present')
    ap.add_argument('--fake-gpu', action='store_true', help=argparse.SUPPRESS)   # with --dry-run: numpy poses as CuPy (a test of this script)
    ap.add_argument('--dry-run', '--cpu-only', action='store_true', help='no GPU: tiny sizes, the CPU sides only')
    args = ap.parse_args()
    args.formats = [f.strip() for f in args.formats.split(',') if f.strip()]
    parts = set(args.parts.split(','))
    if args.dry_run:
        args.rows, args.cols, args.merge_elements, args.kth_elements, args.repeat, args.cpu_repeat = 64, 1024, 1 << 18, 1 << 20, 2, 1
        cp = FakeCupy() if args.fake_gpu else None
    else:
        import cupy as cp
    meta = dict(argv=sys.argv, host=platform.node(), cpus=os.cpu_count(), threads=args.threads, python=sys.version.split()[0],
                numpy=np.__version__, time=time.strftime('%Y-%m-%d %H:%M:%S'))
    if cp is not None:
        props = cp.cuda.runtime.getDeviceProperties(0)
        meta.update(cupy=cp.__version__, gpu=props['name'].decode(), gpu_memory_gib=props['totalGlobalMem'] / 2**30, cuda_runtime=cp.cuda.runtime.runtimeGetVersion())
    print(' '.join(f"{k}={v}" for k, v in meta.items() if k != 'argv'))
    res = Results(args.out, meta)
    t0 = time.perf_counter()
    copy_gbps = None
    if 'device' in parts and cp is not None and not args.fake_gpu:
        try: copy_gbps = part_device(cp, res, args)
        except Exception as e: res.error('device', 'part', e)
    for name, part in (('kernels', part_kernels), ('merge', part_merge)):
        if name in parts:
            t = time.perf_counter()
            try: part(cp, res, args, copy_gbps)
            except Exception as e: res.error(name, 'part', e)
            print(f"({name}: {time.perf_counter() - t:.0f} s)", flush=True)
    res.doc['seconds'] = time.perf_counter() - t0; res.save()
    print(f"\ndone in {res.doc['seconds']:.0f} s; {len(res.doc['errors'])} errors" + (f"; results in {args.out}" if args.out else ''))
    return 1 if res.doc['errors'] else 0

if __name__ == '__main__': sys.exit(main())
