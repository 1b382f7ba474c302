"""entrenar quantize on the GPU (ENTRENAR_BACKEND=cupy) against llama.cpp's llama-quantize (CPU), GGUF to GGUF

    python benchmarks/gpu/quantize_vs_llama.py [--gpu] [--type q4_k_m] [--layers 8 --hidden 2048 --intermediate 5632]
        [--llama-quantize PATH] [--json out.json]

The input: a generated Llama-shaped float32 checkpoint (the shipped tiny Llama's tokenizer, so its vocabulary of 512;
8 layers of hidden 2048 by default, 411M parameters) written as an F32 GGUF by `entrenar convert` (untimed). Then,
each in its own process, timed from start to exit with peak RSS (ru_maxrss of the process tree) and, with --gpu, peak
device memory (nvidia-smi every 50 ms, less the idle figure):
  llama-quantize IN.gguf OUT.gguf TYPE THREADS      (llama.cpp's CPU tool, every core)
  entrenar quantize IN.gguf --type TYPE --output OUT.gguf    on CuPy (--gpu) and on numpy (every core)
GB/s is the input file's bytes plus the output file's over the wall time. The outputs are compared tensor by tensor
(type and bytes) with llama-quantize's. With --gpu, entrenar first quantizes a tiny model untimed (CuPy compiles its
kernels on first use and caches them on disk).
"""
import argparse, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
import importlib.util
_spec = importlib.util.spec_from_file_location('merge_bench', ROOT / 'benchmarks' / 'merge' / 'bench.py')
_mb = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(_mb)
make_models, measure, files_size = _mb.make_models, _mb.measure, _mb.files_size

def find_llama_quantize(arg):
    for p in [arg, ROOT / '.whl' / 'bin' / 'llama-quantize', Path(os.environ.get('ENTRENAR_PEERS', ROOT / '.cache' / 'peers')) / 'bin' / 'llama-quantize',
              Path('/work/main/.cache/peers/bin/llama-quantize'), shutil.which('llama-quantize')]:
        if p and Path(p).is_file() and os.access(p, os.X_OK): return Path(p)

def lib_env(exe:Path) -> dict:
    "LD_LIBRARY_PATH with the lib/ beside bin/ (libgomp carried by tools/gpu-wheels.sh) when the system lacks a library"
    r = subprocess.run(['ldd', str(exe)], capture_output=True, text=True)
    if 'not found' not in r.stdout: return {}
    lib = exe.parent.parent / 'lib'
    return dict(LD_LIBRARY_PATH=f"{lib}:{os.environ.get('LD_LIBRARY_PATH', '')}".rstrip(':'))

def make_checkpoint(folder:Path, layers, hidden, inter):
    "A float32 Llama-shaped checkpoint with the tiny Llama's tokenizer (vocabulary 512)"
    import numpy as np
    tok = ROOT / 'models' / 'tiny-llama'
    make_models(folder, 1, layers, hidden, inter, 512, np.dtype(np.float32))
    base = folder / 'base'
    cfg = json.loads((base / 'config.json').read_text()); cfg.update(bos_token_id=1, eos_token_id=2)
    (base / 'config.json').write_text(json.dumps(cfg, indent=2))
    for f in ('tokenizer.model', 'tokenizer_config.json', 'special_tokens_map.json', 'generation_config.json'):
        if (tok / f).exists(): shutil.copy(tok / f, base / f)
    return base

def compare_gguf(a, b):
    "(number of tensors, names whose type differs, names whose bytes differ) between two GGUF files"
    import gguf, numpy as np
    ta, tb = ({t.name: t for t in gguf.GGUFReader(str(p)).tensors} for p in (a, b))
    if sorted(ta) != sorted(tb): return len(ta), ['tensor names differ'], []
    types = [n for n in ta if ta[n].tensor_type != tb[n].tensor_type]
    data = [n for n in ta if n not in types and not np.array_equal(np.asarray(ta[n].data).view(np.uint8), np.asarray(tb[n].data).view(np.uint8))]
    return len(ta), types, data

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--workdir', default=os.path.join(tempfile.gettempdir(), 'entrenar-quantize-vs-llama'))
    ap.add_argument('--type', default='q4_k_m')
    ap.add_argument('--layers', type=int, default=8); ap.add_argument('--hidden', type=int, default=2048)
    ap.add_argument('--intermediate', type=int, default=5632)
    ap.add_argument('--threads', type=int, default=os.cpu_count() or 1)
    ap.add_argument('--gpu', action='store_true', help='also entrenar on CuPy (ENTRENAR_BACKEND=cupy)')
    ap.add_argument('--no-cpu', action='store_true', help="skip entrenar's numpy run")
    ap.add_argument('--llama-quantize', default=None)
    ap.add_argument('--entrenar', default=str(Path(sys.executable).parent / 'entrenar'))
    ap.add_argument('--json', default=None)
    ap.add_argument('--keep', action='store_true', help='keep the generated checkpoint and GGUF')
    args = ap.parse_args()
    entrenar = [args.entrenar] if Path(args.entrenar).exists() else [sys.executable, '-c', 'import sys; from entrenar.cli import main; sys.exit(main())']
    env = dict(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])), OMP_NUM_THREADS=str(args.threads))
    os.environ.update(env)
    d = Path(args.workdir); d.mkdir(parents=True, exist_ok=True)
    log = open(d / 'bench.log', 'w')
    t = time.perf_counter()
    src = d / f'model-{args.layers}x{args.hidden}-f32.gguf'
    if not src.exists():
        base = make_checkpoint(d / 'ckpt', args.layers, args.hidden, args.intermediate)
        measure([*entrenar, 'convert', base, src, '--type', 'f32', '--quiet'], log)
        shutil.rmtree(d / 'ckpt', ignore_errors=True)
    n_in = files_size(src)
    print(f"input: {src.name}, {n_in / 1e9:.2f} GB (F32 GGUF, ready in {time.perf_counter() - t:.0f} s); {args.type.upper()}; {args.threads} threads", flush=True)
    rows, ref = [], None
    def run(tool, cmd, out, extra_env=None, gpu=False):
        nonlocal ref
        try:
            wall, rss, dev = measure(cmd, log, extra_env, gpu=gpu)
            r = dict(tool=tool, wall_s=wall, rss=rss, device_mib=dev, bytes=n_in + files_size(out), gbps=(n_in + files_size(out)) / wall / 1e9)
            if ref is None: ref = (out, wall); r['same'] = 'reference'
            else:
                n, types, data = compare_gguf(out, ref[0]); r['ratio'] = ref[1] / wall
                r['same'] = f"all {n} tensors" if not types and not data else f"{len(types)} types and {len(data)} tensors' bytes differ of {n}" + \
                            (f" (e.g. {(types + data)[0]})" if types + data else '')
            if gpu and dev is not None and dev < 64:   # e.g. a path that ignores ENTRENAR_BACKEND and quantizes on the host
                r['same'] += f'; NOTE: only {dev} MiB of device memory used: did it run on the GPU?'
        except Exception as e: r = dict(tool=tool, error=str(e)[-3000:])
        rows.append(r)
        if 'error' in r: print(f"| {tool} | failed: {r['error'][-1500:]} |", flush=True)
        else: print(f"| {tool} | {r['wall_s']:.2f} | {r.get('ratio', 1.0):.2f}x | {r['gbps']:.2f} | {r['rss'] / 2**30:.2f} GiB | "
                    f"{r['device_mib'] if r['device_mib'] is not None else '-'} | {r['same']} |", flush=True)
        if args.json: Path(args.json).write_text(json.dumps(dict(input=str(src), input_bytes=n_in, type=args.type, rows=rows), indent=1))
    lq = find_llama_quantize(args.llama_quantize)
    if args.gpu:   # warm CuPy's kernel cache on a tiny model
        small = d / 'warm-up.gguf'
        try:
            if not small.exists():
                b = make_checkpoint(d / 'warm', 1, 256, 512)
                measure([*entrenar, 'convert', b, small, '--type', 'f32', '--quiet'], log)
            measure([*entrenar, 'quantize', small, '--type', args.type, '--output', d / 'warm-out.gguf', '--quiet'], log, dict(ENTRENAR_BACKEND='cupy'))
        except Exception as e: print(f"warm-up failed: {str(e)[-1500:]}", flush=True)
    print(f"\n| tool | wall s | speed-up vs llama-quantize | GB/s | peak RSS | peak device MiB | same as llama-quantize |\n|---|---|---|---|---|---|---|")
    if lq is None: print("| llama-quantize | not found: run bash tools/peers.sh (or tools/gpu-wheels.sh) |"); ref = None
    else: run(f'llama-quantize (CPU, {args.threads} threads)', [lq, src, d / 'lq.gguf', args.type.upper(), args.threads], d / 'lq.gguf', lib_env(lq))
    if args.gpu: run('entrenar quantize (CuPy)', [*entrenar, 'quantize', src, '--type', args.type, '--output', d / 'en-gpu.gguf', '--quiet'],
                     d / 'en-gpu.gguf', dict(ENTRENAR_BACKEND='cupy'), gpu=True)
    if not args.no_cpu: run(f'entrenar quantize (numpy)', [*entrenar, 'quantize', src, '--type', args.type, '--output', d / 'en-cpu.gguf', '--quiet'],
                            d / 'en-cpu.gguf', dict(ENTRENAR_BACKEND='numpy'))
    for f in ('lq.gguf', 'en-gpu.gguf', 'en-cpu.gguf', 'warm-out.gguf'): (d / f).unlink(missing_ok=True)
    if not args.keep: shutil.rmtree(d, ignore_errors=True)
    return 1 if any('error' in r for r in rows) else 0

if __name__ == '__main__': sys.exit(main())
