"""entrenar merge vs mergekit: wall time and peak RSS on generated Llama-shaped models, side by side, in one run.

mergekit lives in its own virtual environment (never a dependency of entrenar):
    python3 -m venv /work/mk-venv && /work/mk-venv/bin/pip install torch==2.13.0 mergekit
    python benchmarks/merge/bench.py                      # 4 models of 322M parameters (bfloat16), ~2.6 GB on disk
    python benchmarks/merge/bench.py --layers 2 --vocab 8000   # a quick smoke run

Each tool runs the same YAML recipe in its own subprocess; peak RSS is that subprocess tree's maximum resident set
(ru_maxrss, file-backed pages of memory-mapped inputs included). Both sides use the same number of threads.
With --gpu, mergekit runs with --cuda and entrenar with ENTRENAR_BACKEND=cupy (both read and write on the CPU side),
after one untimed merge of tiny models per method and tool (CuPy compiles its kernels on first use and caches them).
With --gpu, each run's peak device memory is polled (nvidia-smi, every 50 ms, minus the idle figure before it),
and GB/s is the bytes read (the input model files) and written (the output files) over the wall time; --json writes
the rows. Every method of issue 17 (linear, slerp, ties, dare_ties, task_arithmetic, della) is a choice of --methods;
slerp merges the base and the first fine-tune (it takes two models), the others all 4 models.
For the deterministic methods the outputs are compared in the same run. mergekit computes TIES in the inputs'
dtype (bfloat16 here) and entrenar in float32, and bfloat16 task vectors have many ties at the top-k cut-off,
so TIES outputs differ in places; a second TIES run with `dtype: float32` on both sides checks the math itself.
"""
import argparse, json, os, resource, shutil, subprocess, sys, tempfile, threading, time
from pathlib import Path
import numpy as np, ml_dtypes
from entrenar.io import ModelWriter, TensorSpec, ModelMetadata, load_model

def llama_specs(layers, hidden, inter, vocab, dtype):
    s = [('model.embed_tokens.weight', (vocab, hidden))]
    for i in range(layers):
        p = f'model.layers.{i}.'
        s += [(p + f'self_attn.{k}_proj.weight', (hidden, hidden)) for k in 'qkvo']
        s += [(p + 'mlp.gate_proj.weight', (inter, hidden)), (p + 'mlp.up_proj.weight', (inter, hidden)), (p + 'mlp.down_proj.weight', (hidden, inter))]
        s += [(p + 'input_layernorm.weight', (hidden,)), (p + 'post_attention_layernorm.weight', (hidden,))]
    s += [('model.norm.weight', (hidden,)), ('lm_head.weight', (vocab, hidden))]
    return [TensorSpec(n, np.dtype(dtype), shape) for n, shape in s]

def make_models(folder, n_models, layers, hidden, inter, vocab, dtype):
    "A base and n-1 fine-tunes of it (base + small noise), each a folder with config.json"
    specs = llama_specs(layers, hidden, inter, vocab, dtype)
    cfg = dict(architectures=['LlamaForCausalLM'], model_type='llama', hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
               num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, vocab_size=vocab, rms_norm_eps=1e-6,
               max_position_embeddings=2048, torch_dtype=np.dtype(dtype).name, tie_word_embeddings=False)
    names = ['base'] + [f'ft{i}' for i in range(1, n_models)]
    if all((folder / n / 'model.safetensors').exists() for n in names): return names, sum(s.size for s in specs)
    writers = []
    for n in names:
        (folder / n).mkdir(parents=True, exist_ok=True); (folder / n / 'config.json').write_text(json.dumps(cfg, indent=2))
        writers.append(ModelWriter(folder / n / 'model.safetensors', specs, ModelMetadata(n, 'LlamaForCausalLM')).__enter__())
    rng = np.random.default_rng(0)
    for s in specs:
        base = rng.standard_normal(s.shape, dtype=np.float32) * 0.02 + (1.0 if len(s.shape) == 1 else 0.0)
        writers[0].write(s.name, base.astype(dtype))
        for w in writers[1:]:
            w.write(s.name, (base + rng.standard_normal(s.shape, dtype=np.float32) * 0.002).astype(dtype))
        del base
    for w in writers: w.__exit__(None, None, None)
    return names, sum(s.size for s in specs)

def recipe(method, folder, names):
    base, fts = str(folder / names[0]), [str(folder / n) for n in names[1:]]
    if method == 'slerp':
        return f"merge_method: slerp\nbase_model: {base}\nmodels:\n  - model: {base}\n  - model: {fts[0]}\nparameters:\n  t: [0.2, 0.8]\n"
    per = {'linear': '{weight: %.2f}', 'ties': '{weight: %.2f, density: 0.5}', 'dare_ties': '{weight: %.2f, density: 0.5}',
           'task_arithmetic': '{weight: %.2f}', 'della': '{weight: %.2f, density: 0.5, epsilon: 0.1}'}[method]
    models = ([base] if method == 'linear' else []) + fts
    lines = [f"merge_method: {method}"] + ([] if method == 'linear' else [f"base_model: {base}"]) + ["models:"]
    lines += [f"  - model: {m}\n    parameters: " + per % (1 / len(models)) for m in models]
    return '\n'.join(lines) + '\n'

MEASURE = "import resource, subprocess, sys, time; t = time.perf_counter(); r = subprocess.run(sys.argv[1:]); " \
          "print(r.returncode, time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024)"

class DevicePeak:
    "Peak GPU memory in use (MiB, GPU 0) while the `with` block runs, less the figure just before: nvidia-smi every 50 ms"
    def __init__(self, enabled=True):
        self.enabled, self.peak, self.samples = enabled and shutil.which('nvidia-smi') is not None, None, 0
    @staticmethod
    def used_now():
        r = subprocess.run(['nvidia-smi', '-i', '0', '--query-gpu=memory.used', '--format=csv,noheader,nounits'], capture_output=True, text=True)
        return int(r.stdout.split()[0])
    def __enter__(self):
        if not self.enabled: return self
        try: self.idle, self.top = self.used_now(), 0
        except Exception: self.enabled = False; return self   # no reading: the row goes on without the figure
        self.proc = subprocess.Popen(['nvidia-smi', '-i', '0', '--query-gpu=memory.used', '--format=csv,noheader,nounits', '-lms', '50'],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        def read():
            for line in self.proc.stdout:
                try: self.top, self.samples = max(self.top, int(line.split()[0])), self.samples + 1
                except (ValueError, IndexError): pass
        self.thread = threading.Thread(target=read, daemon=True); self.thread.start()
        return self
    def __exit__(self, *exc):
        if not self.enabled: return
        self.proc.terminate(); self.proc.wait(); self.thread.join(2)
        self.peak = max(0, self.top - self.idle) if self.samples else None

def measure(cmd, log, env=None, gpu=False):
    "Run `cmd` in its own measuring subprocess: (wall seconds, peak RSS bytes of its process tree, peak device MiB or None)"
    with DevicePeak(gpu) as dev:
        out = subprocess.run([sys.executable, '-c', MEASURE, *map(str, cmd)], capture_output=True, text=True, env={**os.environ, **(env or {})})
    lines = out.stdout.strip().splitlines()
    if out.returncode or not lines or lines[-1].split()[0] != '0':
        raise RuntimeError(f"failed: {' '.join(map(str, cmd))}\n{out.stderr[-3000:]}")
    rc, wall, rss = lines[-1].split()
    log.write(out.stderr)
    return float(wall), int(rss), dev.peak

def files_size(path) -> int:
    "Bytes of a file, or of every file under a folder"
    p = Path(path)
    return sum(f.stat().st_size for f in p.rglob('*') if f.is_file()) if p.is_dir() else p.stat().st_size

def bytes_read(method, folder, names) -> int:
    "The model files a method's recipe reads: slerp the base and the first fine-tune, the others every model"
    used = names[:2] if method == 'slerp' else names
    return sum(files_size(folder / n / 'model.safetensors') for n in used)

def compare(a, b):
    "Max |a - b| over all tensors, that as a multiple of the output dtype's rounding step at the tensor's largest value, and the fraction of elements that differ"
    ma, mb = load_model(a, lazy=True), load_model(b, lazy=True)
    assert sorted(ma.names) == sorted(mb.names), 'tensor names differ'
    worst, worst_ulp, n_diff, n = 0.0, 0.0, 0, 0
    for name in ma.names:
        x, y = ma.get_parameter(name).astype(np.float32), mb.get_parameter(name).astype(np.float32)
        d = np.abs(x - y); eps = float(ml_dtypes.finfo(ma.spec(name).dtype).eps)
        worst = max(worst, float(d.max())); worst_ulp = max(worst_ulp, float(d.max()) / (float(np.abs(y).max()) * eps))
        n_diff += int(np.count_nonzero(d)); n += d.size
    return worst, worst_ulp, n_diff / n

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--workdir', default=os.path.join(tempfile.gettempdir(), 'entrenar-merge-bench'))
    ap.add_argument('--models', type=int, default=4); ap.add_argument('--layers', type=int, default=20)
    ap.add_argument('--hidden', type=int, default=1024); ap.add_argument('--intermediate', type=int, default=2816)
    ap.add_argument('--vocab', type=int, default=32000); ap.add_argument('--dtype', default='bfloat16')
    ap.add_argument('--methods', default='linear,slerp,ties,dare_ties', help='any of linear,slerp,ties,dare_ties,task_arithmetic,della')
    ap.add_argument('--json', default=None, help='write the rows as JSON here')
    ap.add_argument('--no-compare', action='store_true', help="don't compare the outputs (saves reading them)")
    ap.add_argument('--warm-up', default='all', choices=['all', 'entrenar', 'none'],
                    help="--gpu: untimed tiny merges first; 'entrenar': one per method for entrenar (CuPy's kernel cache), one for mergekit")
    ap.add_argument('--threads', type=int, default=os.cpu_count() or 1, help='threads for both tools')
    ap.add_argument('--mergekit', default=os.environ.get('MERGEKIT_YAML', '/work/mk-venv/bin/mergekit-yaml'))
    ap.add_argument('--entrenar', default=str(Path(sys.executable).parent / 'entrenar'))
    ap.add_argument('--gpu', action='store_true', help='merge on the GPU: mergekit --cuda, entrenar on CuPy')
    ap.add_argument('--keep', action='store_true', help='keep the generated models for another run')
    ap.add_argument('--check-float32', action=argparse.BooleanOptionalAction, default=True, help='also compare TIES computed in float32 on both sides')
    args = ap.parse_args()
    entrenar = [args.entrenar] if Path(args.entrenar).exists() else [sys.executable, '-c', 'import sys; from entrenar.cli import main; sys.exit(main())']
    gpu_mk, gpu_en = (['--cuda'], dict(ENTRENAR_BACKEND='cupy')) if args.gpu else ([], None)
    if not Path(args.mergekit).exists(): sys.exit(f"mergekit-yaml not found at {args.mergekit}: install it in its own venv (see the docstring)")
    folder = Path(args.workdir); folder.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(getattr(ml_dtypes, args.dtype, None) or args.dtype)
    t = time.perf_counter()
    names, n_params = make_models(folder, args.models, args.layers, args.hidden, args.intermediate, args.vocab, dtype)
    os.sync()   # fresh models: let their write-back finish before anything is timed
    print(f"{args.models} models of {n_params / 1e6:.0f}M parameters ({dtype.name}, {n_params * dtype.itemsize / 1e9:.2f} GB each) "
          f"ready in {time.perf_counter() - t:.0f} s; {args.threads} threads per tool; entrenar --workers {args.threads}" + ("; on the GPU" if args.gpu else ""))
    env_threads = dict(OMP_NUM_THREADS=str(args.threads))
    os.environ.update(env_threads)
    rows, log = [], open(folder / 'bench.log', 'w')
    if args.gpu and args.warm_up != 'none':   # CuPy compiles each kernel on first use and caches it on disk: warm that cache (and CUDA) on tiny models first
        small = folder / 'warm-up'; small_names, _ = make_models(small, args.models, 1, 128, 256, 512, dtype)
        for i, method in enumerate(args.methods.split(',')):
            (small / f'{method}.yml').write_text(recipe(method, small, small_names))
            try:
                if args.warm_up == 'all' or i == 0: measure([args.mergekit, small / f'{method}.yml', small / 'out-mk', '--quiet', '--cuda'], log)
                measure([*entrenar, 'merge', '--config', small / f'{method}.yml', '--output', small / 'out-en', '--quiet'], log, gpu_en)
            except Exception as e: print(f"warm-up of {method} failed: {e}", flush=True)
            for o in ('out-mk', 'out-en'): subprocess.run(['rm', '-rf', str(small / o)])
    side = ' --cuda' if args.gpu else ''
    print(f"\n| method | mergekit{side} s | entrenar s | speed-up | GB/s mergekit | GB/s entrenar | mergekit peak RSS | entrenar peak RSS | RSS ratio"
          + (" | mergekit device MiB | entrenar device MiB" if args.gpu else '') + " | outputs |")
    print("|---|---|---|---|---|---|---|---|---|" + ("---|---|" if args.gpu else '') + "---|")
    rows = []
    for method in args.methods.split(','):
        mk_out, en_out = folder / f'out-mk-{method}', folder / f'out-en-{method}'
        try:
            (folder / f'{method}.yml').write_text(recipe(method, folder, names))
            n_in = bytes_read(method, folder, names)
            mk = measure([args.mergekit, folder / f'{method}.yml', mk_out, '--quiet', '--random-seed', '0', '-j', args.threads, *gpu_mk], log, gpu=args.gpu)
            en = measure([*entrenar, 'merge', '--config', folder / f'{method}.yml', '--output', en_out, '--quiet', '--workers', args.threads], log, gpu_en, gpu=args.gpu)
            mk_b, en_b = n_in + files_size(mk_out), n_in + files_size(en_out)
            if method in ('dare_ties', 'della'): verdict = 'random masks (not comparable bit for bit)'
            elif args.no_compare: verdict = 'not compared'
            else:
                worst, ulp, frac = compare(en_out, mk_out)
                verdict = f"max abs diff {worst:.2g} ({ulp:.2g} ulp of the largest value), {frac:.2%} of elements differ"
            row = dict(method=method, gpu=args.gpu, mergekit_s=mk[0], entrenar_s=en[0], speedup=mk[0] / en[0], mergekit_bytes=mk_b, entrenar_bytes=en_b,
                       mergekit_gbps=mk_b / mk[0] / 1e9, entrenar_gbps=en_b / en[0] / 1e9, mergekit_rss=mk[1], entrenar_rss=en[1],
                       mergekit_device_mib=mk[2], entrenar_device_mib=en[2], outputs=verdict)
            rows.append(row)
            dev = f" | {mk[2] if mk[2] is not None else '-'} | {en[2] if en[2] is not None else '-'}" if args.gpu else ''
            print(f"| {method} | {mk[0]:.1f} | {en[0]:.1f} | {mk[0] / en[0]:.1f}x | {row['mergekit_gbps']:.2f} | {row['entrenar_gbps']:.2f} | "
                  f"{mk[1] / 2**30:.2f} GiB | {en[1] / 2**30:.2f} GiB | {en[1] / mk[1]:.2f}{dev} | {verdict} |", flush=True)
        except Exception as e:
            rows.append(dict(method=method, error=str(e)[-3000:])); print(f"| {method} | failed: {str(e)[-1500:]} |", flush=True)
        for o in (mk_out, en_out): subprocess.run(['rm', '-rf', str(o)])
        if args.json: Path(args.json).write_text(json.dumps(dict(n_params=n_params, dtype=dtype.name, models=args.models, rows=rows), indent=1))
    if args.check_float32:   # mergekit computes TIES in the inputs' dtype; cast both sides' inputs to float32 to compare the math
        text = recipe('ties', folder, names) + 'dtype: float32\n'
        (folder / 'ties32.yml').write_text(text)
        mk_out, en_out = folder / 'out-mk-ties32', folder / 'out-en-ties32'
        measure([args.mergekit, folder / 'ties32.yml', mk_out, '--quiet', '-j', args.threads, *gpu_mk], log)
        measure([*entrenar, 'merge', '--config', folder / 'ties32.yml', '--output', en_out, '--quiet', '--workers', args.threads], log, gpu_en)
        worst, ulp, frac = compare(en_out, mk_out)
        print(f"\nties with `dtype: float32` (both compute in float32): max abs diff {worst:.2g} ({ulp:.2g} ulp), {frac:.4%} of elements differ")
        for o in (mk_out, en_out): subprocess.run(['rm', '-rf', str(o)])
    if not args.keep:
        for n in names: subprocess.run(['rm', '-rf', str(folder / n)])

if __name__ == '__main__': main()
