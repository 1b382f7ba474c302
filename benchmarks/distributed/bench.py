"""entrenar merge on a Dask cluster vs the same merge in one process: scaling from 1 to 2 workers, the overhead per
task, and a paper estimate of a 400B-parameter merge on N machines from those figures. One run prints it all.

    python benchmarks/distributed/bench.py                  # 3 models of 32 x 1024 x 1024 float32 (128 MB each), ~1-2 min
    python benchmarks/distributed/bench.py --tensors 8      # a quick smoke run

Every configuration runs in its own subprocess: `merge_files(..., client=None)` (the reference: one process, one
thread), and `merge_files(..., client=connect('local:N'))` (a LocalCluster of N worker processes) for N = 1, 2. Merge times are measured with the
cluster already started (its start-up is reported apart). Peak RSS is ru_maxrss of the client process and the largest
of the worker processes (file-backed pages of memory-mapped inputs included). Each run's output is checked to be
byte-identical to the one-process run. The overhead per task is measured on a model of many tiny tensors, one task
each, where the merge itself costs next to nothing.
"""
import argparse, hashlib, json, logging, os, resource, shutil, subprocess, sys, tempfile, time
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

def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}

def run_one(args):
    "Inside a subprocess: one configuration; prints a JSON line"
    from entrenar.merge import merge_files
    base, *fts = [Path(p) for p in args.inputs]
    recipe = dict(base=base, method='dare_ties', weight=[0.6, 0.4], density=0.5, seed=1, shard_size=args.shard_size)
    out, res = Path(args.output), {}
    if args.workers == 0:
        t = time.perf_counter(); merge_files(fts, out, **recipe); res['merge_s'] = time.perf_counter() - t
        res.update(start_s=0.0, task_s=res['merge_s'], client_rss=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, worker_rss=0)
    else:
        from entrenar.distributed import connect
        t = time.perf_counter()
        with connect(f'local:{args.workers}') as client:   # what `--scheduler local:N` starts
            client.run(__import__, 'entrenar.distributed')   # workers import entrenar once; counted in the start-up
            res['start_s'] = time.perf_counter() - t
            if args.noop:
                t = time.perf_counter(); client.gather([client.submit(int, i, pure=False) for i in range(args.noop)])
                res['noop_task_s'] = (time.perf_counter() - t) / args.noop
            from distributed import get_task_stream
            with get_task_stream(client) as stream:
                t = time.perf_counter(); merge_files(fts, out, client=client, **recipe); res['merge_s'] = time.perf_counter() - t
            res['task_s'] = sum(p['stop'] - p['start'] for task in stream.data for p in task['startstops'] if p['action'] == 'compute')
            res['worker_rss'] = max(client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024).values())
        res['client_rss'] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    res['files'] = len(list(out.iterdir()))
    print(json.dumps(res))

def measure(inputs, output, workers, shard_size, noop=0):
    cmd = [sys.executable, __file__, '--run', '--workers', str(workers), '--shard-size', str(shard_size), '--output', str(output),
           '--noop', str(noop), '--inputs', *map(str, inputs)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode: sys.exit(f"run failed ({workers} workers):\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--tensors', type=int, default=32); ap.add_argument('--rows', type=int, default=1024); ap.add_argument('--cols', type=int, default=1024)
    ap.add_argument('--shard-size', default='8MB', help='output shard size: one task per shard')
    ap.add_argument('--tiny-tensors', type=int, default=200, help='tensors (16 x 16, one task each) of the overhead run')
    ap.add_argument('--folder', default=None, help='where the generated models go (default: a temporary folder)')
    ap.add_argument('--workers-per-machine', type=int, default=32); ap.add_argument('--machine-io-gbs', type=float, default=3.0)
    ap.add_argument('--storage-gbs', type=float, default=50.0)
    # inside a subprocess
    ap.add_argument('--run', action='store_true'); ap.add_argument('--workers', type=int, default=0); ap.add_argument('--output')
    ap.add_argument('--noop', type=int, default=0); ap.add_argument('--inputs', nargs='*')
    args = ap.parse_args()
    if args.run: return run_one(args)

    tmp = Path(args.folder or tempfile.mkdtemp(prefix='entrenar-dist-bench-'))
    try:
        big = make_models(tmp / 'big', args.tensors, args.rows, args.cols)
        tiny = make_models(tmp / 'tiny', args.tiny_tensors, 16, 16)
        n_params = args.tensors * args.rows * args.cols
        rows, ref = [], None
        for workers in (0, 1, 2):
            r = measure(big, tmp / f'out-big-{workers}' / 'm', workers, args.shard_size)
            d = digest(tmp / f'out-big-{workers}' / 'm'); ref = ref or d
            r['identical'] = d == ref; rows.append((workers, r))
        t_one = rows[0][1]['merge_s']
        n_tasks = rows[0][1]['files'] - (1 if rows[0][1]['files'] > 1 else 0)
        print(f"\ndare_ties of 2 models onto a base: {args.tensors} tensors of {args.rows} x {args.cols} float32 "
              f"({n_params / 1e6:.0f}M parameters, {n_params * 4 / 1e6:.0f} MB per model), shards of {args.shard_size} -> {n_tasks} tasks\n")
        print(f"{'run':<22} {'merge s':>8} {'vs 1 proc':>9} {'in tasks s':>10} {'cluster start s':>15} {'client RSS MB':>13} {'worker RSS MB':>13} {'Mparam/s':>9}  same bytes")
        for workers, r in rows:
            name = 'one process' if workers == 0 else f'LocalCluster, {workers} worker' + ('s' if workers > 1 else '')
            print(f"{name:<22} {r['merge_s']:>8.2f} {t_one / r['merge_s']:>8.2f}x {r['task_s']:>10.2f} {r['start_s']:>15.2f} {r['client_rss'] / 1e6:>13.0f} "
                  f"{r['worker_rss'] / 1e6:>13.0f} {n_params / r['merge_s'] / 1e6:>9.1f}  {'yes' if r['identical'] else 'NO'}")
        w1, w2 = rows[1][1]['merge_s'], rows[2][1]['merge_s']
        print(f"\nscaling 1 -> 2 workers: {w1 / w2:.2f}x (this machine has {os.cpu_count()} cores, shared)")

        tiny_runs = {w: measure(tiny, tmp / f'out-tiny-{w}' / 'm', w, 1, noop=500 if w == 1 else 0) for w in (0, 1, 2)}
        n_tiny = args.tiny_tensors
        per_task = {w: (tiny_runs[w]['merge_s'] - tiny_runs[0]['merge_s']) / n_tiny for w in (1, 2)}
        print(f"\noverhead per task ({n_tiny} tensors of 16 x 16, one shard and one task each):")
        print(f"  one process: {tiny_runs[0]['merge_s']:.2f} s ({tiny_runs[0]['merge_s'] / n_tiny * 1e3:.1f} ms per shard file)")
        for w in (1, 2):
            print(f"  LocalCluster, {w} worker(s): {tiny_runs[w]['merge_s']:.2f} s -> {per_task[w] * 1e3:+.1f} ms per task over one process "
                  f"({tiny_runs[w]['merge_s'] / n_tiny * 1e3:.1f} ms per task in all)")
        print(f"  a no-op Dask task, submitted in bulk: {tiny_runs[1]['noop_task_s'] * 1e3:.2f} ms")

        rate = n_params / w1   # parameters per second per worker (one core), dare_ties in float32
        overhead = max(per_task[1], 0.0)
        P, bytes_per, n_inputs = 400e9, 2, 3    # bfloat16 base + 2 fine-tunes
        io_bytes = P * bytes_per * (n_inputs + 1)
        n_tasks_400b = int(np.ceil(P * bytes_per / 5e9))
        wpm = args.workers_per_machine
        print(f"\npaper estimate: dare_ties of 2 bfloat16 fine-tunes onto a base, 400B parameters (800 GB per model; reads "
              f"{P * bytes_per * n_inputs / 1e12:.1f} TB, writes {P * bytes_per / 1e12:.1f} TB), 5 GB shards -> {n_tasks_400b} tasks")
        print(f"assumes: {rate / 1e6:.1f} Mparam/s per worker core (measured above, 1 worker), {wpm} workers per machine, "
              f"{args.machine_io_gbs:g} GB/s of I/O per machine, {args.storage_gbs:g} GB/s for the shared storage, {overhead * 1e3:.1f} ms per task")
        print(f"{'machines':>8} {'workers':>8} {'compute h':>10} {'I/O h':>7} {'overhead s':>10} {'estimate h':>10}")
        for n in (1, 2, 4, 8, 16, 32, 64):
            workers = n * wpm
            compute = P / (rate * workers)
            io = io_bytes / min(n * args.machine_io_gbs * 1e9, args.storage_gbs * 1e9)
            over = np.ceil(n_tasks_400b / workers) * overhead
            print(f"{n:>8} {workers:>8} {compute / 3600:>10.2f} {io / 3600:>7.2f} {over:>10.2f} {max(compute, io) / 3600 + over / 3600:>10.2f}")
        print("(estimate = the larger of compute and I/O, which overlap across tasks, plus the per-task overhead; with more workers than "
              f"the {n_tasks_400b} tasks, smaller shards are needed to use them)")
    finally:
        if not args.folder: shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__': main()
