"""The runner's read-ahead on and off, on a cold and a warm page cache: a TIES merge and llama.cpp GGUF quantizations

Three jobs, each run with read-ahead off (`READ_AHEAD = 0`) and on (the default), first on a cold page cache (every
input file written back and dropped with posix_fadvise DONTNEED just before the run) and then on a warm one (the
inputs read once before the run):

- `ties`: a TIES merge of 3 fine-tunes onto a base, 4 float32 models (made by benchmarks/distributed's `make_models`);
- `q8_0` and `q4_k_m`: `to_gguf` of SmolLM2-135M-Instruct as float32 (538 MB, rebuilt once from the GGUF that
  tools/peers.sh downloads, as benchmarks/gguf does) to llama.cpp GGUFs;
- `gguf_q4_k_m` (with `--jobs`): an F16 GGUF of that model requantized to Q4_K_M, llama-quantize's job.

Each run is its own process (one thread of work, as the command runs by default); its wall time and peak RSS
(VmHWM, which starts afresh at exec; file-backed pages of the mapped inputs included) are measured inside it. Off
and on alternate which goes first from one repeat to the next; the best of the repeats is shown. Outputs must be
byte-identical with read-ahead on and off.

    python benchmarks/pipeline/bench.py                          # 4 x 403 MB merge + 538 MB quantizations, ~3 min
    python benchmarks/pipeline/bench.py --tensors 4 --rows 512   # a quick smoke run
"""
import argparse, hashlib, importlib.util, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = Path(os.environ.get('ENTRENAR_PEERS') or ROOT / '.cache' / 'peers')

def _load(path, name):
    "A module of another benchmark folder (they are scripts, not a package)"
    spec = importlib.util.spec_from_file_location(name, path); m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
    return m

def merge_inputs(folder, tensors, rows, cols):
    "base, ft1, ft2, ft3: float32 models, fine-tunes = base + small noise"
    return _load(ROOT / 'benchmarks' / 'distributed' / 'bench.py', 'distributed_bench').make_models(
        folder, tensors, rows, cols, names=('base', 'ft1', 'ft2', 'ft3'))

def quantize_input(folder) -> Path:
    "SmolLM2-135M-Instruct as a float32 transformers checkpoint, rebuilt once from the published Q4_1 GGUF"
    d = folder / 'smollm2-135m-f32'
    if not (d / 'model.safetensors').exists():
        src = PEERS / 'SmolLM2-135M-Instruct.Q4_1.gguf'
        if not src.exists(): sys.exit(f"{src} is missing: run bash tools/peers.sh")
        from entrenar.gguf import gguf_to_hf
        gguf_to_hf(src, d)
    return d

def evict(paths):
    "Write back and drop the files' pages from the page cache; the fraction still resident is not checked here"
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try: os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally: os.close(fd)

def warm(paths):
    for p in paths:
        with open(p, 'rb') as f:
            while f.read(1 << 26): pass

def read_rate(paths, cold):
    "GB/s reading the files with read(2), from the disk (cold) or the page cache"
    if cold: evict(paths)
    t, n = time.perf_counter(), sum(p.stat().st_size for p in paths)
    warm(paths)
    return n / (time.perf_counter() - t) / 1e9

def digest(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        while b := f.read(1 << 24): h.update(b)
    return h.hexdigest()

def run_one(a):
    "Inside a subprocess: one job with read-ahead `a.read_ahead`; prints a JSON line"
    from entrenar import runner
    runner.READ_AHEAD = a.read_ahead
    inputs, out = [Path(p) for p in a.inputs], Path(a.output)
    t = time.perf_counter()
    if a.job == 'ties':
        from entrenar.merge import merge_files
        merge_files(inputs[1:], out, base=inputs[0], method='ties', weight=[0.5, 0.3, 0.2], density=0.5)
    elif a.job.startswith('gguf_'):   # requantizing a GGUF (llama-quantize's job): the GgufFile's own read-ahead
        from entrenar.gguf import to_gguf
        to_gguf(inputs[0], out, a.job[5:])
    else:
        from entrenar.gguf import to_gguf
        to_gguf(inputs[0], out, a.job, pre='smollm')
    hwm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:'))
    print(json.dumps(dict(seconds=time.perf_counter() - t, rss=hwm * 1024)))

def measure(job, inputs, output, read_ahead):
    cmd = [sys.executable, __file__, '--run', '--job', job, '--read-ahead', str(read_ahead), '--output', str(output), '--inputs', *map(str, inputs)]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode: sys.exit(f"run failed ({job}, read-ahead {read_ahead}):\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--tensors', type=int, default=24); ap.add_argument('--rows', type=int, default=2048); ap.add_argument('--cols', type=int, default=2048)
    ap.add_argument('--jobs', default='ties,q8_0,q4_k_m'); ap.add_argument('--repeat', type=int, default=1, help='runs of each row (the best is shown)')
    ap.add_argument('--folder', default=None, help='where the inputs go (default: a temporary folder)')
    ap.add_argument('--run', action='store_true'); ap.add_argument('--job'); ap.add_argument('--read-ahead', type=int)
    ap.add_argument('--output'); ap.add_argument('--inputs', nargs='*')
    a = ap.parse_args()
    if a.run: return run_one(a)
    sys.path.insert(0, str(ROOT))
    from entrenar.runner import READ_AHEAD
    tmp = Path(a.folder or tempfile.mkdtemp(prefix='entrenar-pipeline-bench-'))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        jobs = {}
        for job in a.jobs.split(','):
            if job == 'ties':
                ins = merge_inputs(tmp / 'merge', a.tensors, a.rows, a.cols); files = ins
            elif job.startswith('gguf_'):   # an F16 GGUF of the same model, requantized
                g = tmp / 'smollm2-135m-f16.gguf'
                if not g.exists():
                    from entrenar.gguf import to_gguf
                    to_gguf(quantize_input(tmp), g, 'f16', pre='smollm')
                ins, files = [g], [g]
            else:
                d = quantize_input(tmp); ins, files = [d], sorted(d.glob('*.safetensors'))
            jobs[job] = (ins, files)
        subprocess.run([sys.executable, '-c', 'import entrenar.merge, entrenar.gguf'], check=True)   # the library's files in the page cache
        every = sorted({f for _, fs in jobs.values() for f in fs})
        print(f"read-ahead {READ_AHEAD >> 20} MiB; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; reading the inputs with read(2): "
              f"{read_rate(every, True):.2f} GB/s cold, {read_rate(every, False):.2f} GB/s warm")
        print(f"{'job':<8} {'input MB':>8} {'cache':<5} {'off s':>7} {'on s':>7} {'off/on':>7} {'RSS MB off':>10} {'on':>6}  same bytes")
        for job, (ins, files) in jobs.items():
            size = sum(f.stat().st_size for f in files)
            for cache in ('cold', 'warm'):
                best, digests = {}, set()
                for i in range(a.repeat):
                    for limit in ((0, READ_AHEAD) if i % 2 == 0 else (READ_AHEAD, 0)):
                        out = tmp / 'out' / str(limit) / ('merged.safetensors' if job == 'ties' else f'{job}.gguf')
                        shutil.rmtree(out.parent, ignore_errors=True); out.parent.mkdir(parents=True)
                        (evict if cache == 'cold' else warm)(files)
                        r = measure(job, ins, out, limit)
                        digests.add(digest(out))
                        if limit not in best or r['seconds'] < best[limit]['seconds']: best[limit] = r
                off, on = best[0], best[READ_AHEAD]
                print(f"{job:<8} {size / 1e6:>8.0f} {cache:<5} {off['seconds']:>7.2f} {on['seconds']:>7.2f} {off['seconds'] / on['seconds']:>6.2f}x "
                      f"{off['rss'] / 1e6:>10.0f} {on['rss'] / 1e6:>6.0f}  {'yes' if len(digests) == 1 else 'NO'}", flush=True)
    finally:
        if not a.folder: shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__': main()
