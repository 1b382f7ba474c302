"""entrenar on a Dask cluster vs the same job in one process, on models of >= 2 GB: a seeded DARE-TIES merge and a Q8_0
quantization to GGUF, with 1 and 2 workers, the throughput per worker, peak memory of the client and the workers, and
the limits of this machine (loopback transfer to the client, reading the inputs). One run prints it all.

    python benchmarks/distributed/bench.py                          # 3 models of 2.1 GB (float32), ~10 min
    python benchmarks/distributed/bench.py --tensors 4 --rows 1024  # a quick smoke run

Each configuration runs in its own subprocess: one process (`client=None`, the reference) and `connect('local:N')` (what
`--scheduler local:N` starts) for N = 1, 2. Times are measured with the cluster started (start-up reported apart). Peak
RSS is ru_maxrss of the client and the largest of the workers (file-backed pages of memory-mapped inputs included).
Every output is checked to be byte-identical to the one-process run.
"""
import argparse, hashlib, json, os, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np
from entrenar.io import ModelMetadata, ModelWriter, TensorSpec

def make_models(folder, n_tensors, rows, cols, names=('base', 'ft1', 'ft2')):
    "A base and fine-tunes of it (base + small noise), float32"
    specs = [TensorSpec(f'model.layers.{i}.mlp.up_proj.weight', np.dtype(np.float32), (rows, cols)) for i in range(n_tensors)]
    if all((folder / f'{n}.safetensors').exists() for n in names): return [folder / f'{n}.safetensors' for n in names]
    folder.mkdir(parents=True, exist_ok=True)
    writers = [ModelWriter(folder / f'{n}.safetensors', specs, ModelMetadata(n, 'bench')).__enter__() for n in names]
    rng = np.random.default_rng(0)
    for s in specs:
        base = rng.standard_normal(s.shape, dtype=np.float32) * 0.02
        writers[0].write(s.name, base)
        for w in writers[1:]: w.write(s.name, base + rng.standard_normal(s.shape, dtype=np.float32) * 0.002)
    for w in writers: w.__exit__(None, None, None)
    return [folder / f'{n}.safetensors' for n in names]

def digest(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while b := f.read(1 << 24): h.update(b)
    return h.hexdigest()

def job(kind, inputs, out, client):
    from entrenar.merge import merge_files
    from entrenar.quantize import quantize_model
    base, *fts = inputs
    if kind == 'merge': merge_files(fts, out, base=base, method='dare_ties', weight=[0.6, 0.4], density=0.5, seed=1, client=client)
    else: quantize_model(fts[0], out, format='q8_0', report=False, client=client)

def _random(mb): return np.random.default_rng(0).standard_normal(mb << 18, dtype=np.float32)

def run_one(args):
    "Inside a subprocess: one configuration; prints a JSON line"
    inputs, out, res = [Path(p) for p in args.inputs], Path(args.output), {}
    rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if args.workers == 0:
        t = time.perf_counter(); job(args.kind, inputs, out, None); res.update(seconds=time.perf_counter() - t, start_s=0.0, worker_rss=0)
    else:
        from entrenar.distributed import connect
        t = time.perf_counter()
        with connect(f'local:{args.workers}') as client:
            client.run(__import__, 'entrenar.merge'); client.run(__import__, 'entrenar.quantize')   # imports counted in the start-up
            res['start_s'] = time.perf_counter() - t
            if args.kind == 'limits':   # a no-op task's round trip, and moving 64 MB of random float32 from a worker to the client
                import distributed
                t = time.perf_counter(); client.gather([client.submit(int, i, pure=False) for i in range(300)]); res['noop_s'] = (time.perf_counter() - t) / 300
                rates = []
                for _ in range(4):
                    f = client.submit(_random, 64, pure=False); distributed.wait(f)
                    t = time.perf_counter(); f.result(); rates.append((64 << 20) / (time.perf_counter() - t) / 1e9); del f
                res['transfer_gbs'] = max(rates)
                print(json.dumps(res)); return
            from distributed import get_task_stream
            with get_task_stream(client) as stream:
                t = time.perf_counter(); job(args.kind, inputs, out, client); res['seconds'] = time.perf_counter() - t
            res['tasks'] = len(stream.data)
            res['worker_rss'] = max(client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024).values())
    res['client_rss'] = rss()
    print(json.dumps(res))

def measure(kind, inputs, output, workers):
    cmd = [sys.executable, __file__, '--run', '--kind', kind, '--workers', str(workers), '--output', str(output),
           '--inputs', *map(str, inputs)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode: sys.exit(f"run failed ({kind}, {workers} workers):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])

def read_rate(paths):
    "GB/s reading the inputs (from the page cache when they fit in memory, as here)"
    t, n = time.perf_counter(), 0
    for p in paths:
        with open(p, 'rb') as f:
            while b := f.read(1 << 26): n += len(b)
    return n / (time.perf_counter() - t) / 1e9

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--tensors', type=int, default=32); ap.add_argument('--rows', type=int, default=4096); ap.add_argument('--cols', type=int, default=4096)
    ap.add_argument('--folder', default=None, help='where the generated models go (default: a temporary folder)')
    ap.add_argument('--run', action='store_true'); ap.add_argument('--kind'); ap.add_argument('--workers', type=int, default=0)
    ap.add_argument('--output'); ap.add_argument('--inputs', nargs='*')
    args = ap.parse_args()
    if args.run: return run_one(args)

    tmp = Path(args.folder or tempfile.mkdtemp(prefix='entrenar-dist-bench-'))
    try:
        inputs = make_models(tmp / 'in', args.tensors, args.rows, args.cols)
        size = inputs[0].stat().st_size
        gbs = read_rate(inputs)
        print(f"{args.tensors} tensors of {args.rows} x {args.cols} float32: {size / 1e9:.2f} GB per model; "
              f"reading the inputs: {gbs:.1f} GB/s (page cache); {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n")
        jobs = dict(merge=('dare_ties of 2 fine-tunes onto a base', 3 * size, size, 'm.safetensors'),
                    quantize=('Q8_0 of one model to GGUF', size, size * 34 // 128, 'q.gguf'))
        limits = measure('limits', inputs, tmp / 'none', 1)
        for kind, (what, read, written, name) in jobs.items():
            rows, ref = [], None
            for workers in (0, 1, 2):
                out = tmp / f'{kind}-{workers}' / name
                r = measure(kind, inputs, out, workers)
                d = digest(out); ref = ref or d; r['same'] = d == ref
                rows.append((workers, r)); shutil.rmtree(out.parent)
            print(f"{what}: reads {read / 1e9:.1f} GB, writes {written / 1e9:.2f} GB")
            print(f"{'run':<22} {'seconds':>8} {'vs 1 proc':>9} {'tasks':>6} {'start s':>8} {'client RSS MB':>13} {'worker RSS MB':>13} "
                  f"{'MB/s read per worker':>20}  same bytes")
            t1 = rows[0][1]['seconds']
            for workers, r in rows:
                name_ = 'one process' if workers == 0 else f'LocalCluster, {workers} worker' + ('s' if workers > 1 else '')
                per = read / r['seconds'] / max(workers, 1) / 1e6
                print(f"{name_:<22} {r['seconds']:>8.2f} {t1 / r['seconds']:>8.2f}x {r.get('tasks', 0):>6} {r['start_s']:>8.2f} "
                      f"{r['client_rss'] / 1e6:>13.0f} {r['worker_rss'] / 1e6:>13.0f} {per:>20.0f}  {'yes' if r['same'] else 'NO'}")
            print(f"scaling 1 -> 2 workers: {rows[1][1]['seconds'] / rows[2][1]['seconds']:.2f}x\n")
        print(f"limits: a Dask task round trip {limits['noop_s'] * 1e3:.1f} ms; worker -> client transfer {limits['transfer_gbs']:.2f} GB/s "
              f"(loopback); every output byte crosses to the client once, every input byte is read by a worker from the shared file system")
    finally:
        if not args.folder: shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__': main()
