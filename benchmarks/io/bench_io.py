"""entrenar I/O against the safetensors library, and the text formats against the seed's claims, in one run.

    python benchmarks/io/bench_io.py [--size-mb 1024] [--repeat 2] [--skip-text] [--only JSON,YAML,disk]

Every measurement runs in a fresh subprocess, so its peak RSS (ru_maxrss) is its own. Times are the best of
`--repeat` runs with the file in the page cache (the first run warms it).
"""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

TASKS = {
  # name: (setup code, timed code). `path`, `out`, `work` are set in the child.
  'safetensors lib load': ("import safetensors.numpy as st",
                           "d = st.load_file(path); s = sum(float(a.reshape(-1)[-1]) for a in d.values())"),
  'entrenar load (eager)': ("from entrenar.io import load_model",
                            "m = load_model(path); s = sum(float(a.reshape(-1)[-1]) for _, a in m)"),
  'entrenar load (lazy, read all)': ("from entrenar.io import load_model",
                            "m = load_model(path, lazy=True); s = sum(float(a.sum(dtype='float64')) for _, a in m)"),
  'safetensors lib load (read all)': ("import safetensors.numpy as st",
                           "d = st.load_file(path); s = sum(float(a.sum(dtype='float64')) for a in d.values())"),
  'safetensors lib save': ("import safetensors.numpy as st; from entrenar.io import load_model; d = dict(load_model(path))",
                           "st.save_file(d, out)"),
  'entrenar save': ("from entrenar.io import load_model, save_model; m = load_model(path)",
                    "save_model(m, out)"),
  'entrenar save JSON': ("from entrenar.io import load_model, save_model; m = load_model(path)", "save_model(m, work + '/m.json')"),
  'entrenar load JSON': ("from entrenar.io import load_model", "m = load_model(work + '/m.json')"),
  'entrenar save YAML': ("from entrenar.io import load_model, save_model; m = load_model(path)", "save_model(m, work + '/m.yaml')"),
  'entrenar load YAML': ("from entrenar.io import load_model", "m = load_model(work + '/m.yaml')"),
  # the floor under any save of the JSON file: its bytes written through a temporary file, fsynced and renamed
  'disk: write JSON bytes': ("import os; size = os.path.getsize(work + '/m.json'); chunk = bytes(min(size, 1 << 27))",
                             "fd = os.open(work + '/raw.tmp', os.O_WRONLY | os.O_CREAT | os.O_TRUNC)\n"
                             "for i in range(0, size, len(chunk)): os.write(fd, memoryview(chunk)[:size - i])\n"
                             "os.fsync(fd); os.close(fd); os.replace(work + '/raw.tmp', work + '/raw.bin')"),
}
SEED_CLAIMS = {'entrenar save JSON': 30, 'entrenar load JSON': 25, 'entrenar save YAML': 45, 'entrenar load YAML': 40}  # seconds per GB

CHILD = '''
import json, resource, sys, time
path, out, work = sys.argv[1], sys.argv[2], sys.argv[3]
{setup}
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
{timed}
dt = time.perf_counter() - t
print(json.dumps(dict(seconds=dt, maxrss_kb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)))
'''

def run_task(name, path, out, work):
    setup, timed = TASKS[name]
    r = subprocess.run([sys.executable, '-c', CHILD.format(setup=setup, timed=timed), str(path), str(out), str(work)],
                       capture_output=True, text=True)
    if r.returncode: raise SystemExit(f"{name} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])

def make_model(path, size_mb):
    import numpy as np
    from entrenar.io import Model, ModelMetadata, save_model
    n = max(1, round(size_mb / 64))
    rng = np.random.default_rng(0)
    params = {f'model.layers.{i}.mlp.weight': rng.standard_normal((4096, 4096), dtype=np.float32) for i in range(n)}
    save_model(Model(ModelMetadata('bench', 'mlp'), params), path)
    return n * 64 * 2**20

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--size-mb', type=int, default=1024)
    ap.add_argument('--repeat', type=int, default=2)
    ap.add_argument('--skip-text', action='store_true')
    ap.add_argument('--workdir', default=None)
    ap.add_argument('--only', default='', help='comma-separated words: run only the tasks whose names contain one (e.g. JSON,disk)')
    a = ap.parse_args()
    work = Path(a.workdir or tempfile.mkdtemp(prefix='entrenar-bench-io-'))
    path, out = work / 'model.safetensors', work / 'out.safetensors'
    nbytes = make_model(path, a.size_mb)
    print(f"model: {nbytes / 2**20:.0f} MiB of float32 in {nbytes // (64 * 2**20)} tensors of 4096x4096; {os.cpu_count()} CPUs\n")
    res = {}
    names = [n for n in TASKS if not (a.skip_text and ('JSON' in n or 'YAML' in n)) and (not a.only or any(k in n for k in a.only.split(',')))]
    for name in names:
        runs = [run_task(name, path, out, work) for _ in range(a.repeat)]
        res[name] = dict(seconds=min(r['seconds'] for r in runs), rss=max(r['maxrss_kb'] for r in runs) * 1024)
    gb = nbytes / 1e9
    print(f"{'task':<34} {'seconds':>8} {'MB/s':>8} {'peak RSS':>9} {'RSS/model':>9}")
    for name, r in res.items():
        print(f"{name:<34} {r['seconds']:>8.2f} {nbytes / 1e6 / r['seconds']:>8.0f} {r['rss'] / 2**20:>7.0f}Mi {r['rss'] / nbytes:>9.2f}")
    print("\nratios (entrenar / safetensors library; < 1 is faster):")
    for ours, theirs in [('entrenar load (eager)', 'safetensors lib load'), ('entrenar load (lazy, read all)', 'safetensors lib load (read all)'),
                         ('entrenar save', 'safetensors lib save')]:
        if ours not in res or theirs not in res: continue
        print(f"  {ours:<32} {res[ours]['seconds'] / res[theirs]['seconds']:.2f}x time, {res[ours]['rss'] / res[theirs]['rss']:.2f}x peak RSS")
    if not a.skip_text:
        print("\ntext formats against the seed's claims (scaled to this model's size):")
        for name, per_gb in SEED_CLAIMS.items():
            if name not in res: continue
            claim = per_gb * gb
            size = (work / ('m.json' if 'JSON' in name else 'm.yaml')).stat().st_size
            print(f"  {name:<22} {res[name]['seconds']:>7.2f} s vs {claim:>5.1f} s claimed: {claim / res[name]['seconds']:>5.1f}x faster; "
                  f"file {size / 1e9:.2f} GB; peak RSS {res[name]['rss'] / nbytes:.2f}x the model")
        if 'disk: write JSON bytes' in res:
            print(f"  (writing the JSON file's bytes alone, fsync included, took {res['disk: write JSON bytes']['seconds']:.2f} s on this disk)")

if __name__ == '__main__': main()
