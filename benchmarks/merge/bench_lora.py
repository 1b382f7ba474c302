"""entrenar extract-lora vs mergekit-extract-lora: wall time and peak RSS on the same generated Llama-shaped pair.

mergekit lives in its own virtual environment (never a dependency of entrenar); the peer venv of the tests has it:
    python benchmarks/merge/bench_lora.py --mergekit .cache/peers/venv/bin/mergekit-extract-lora
    python benchmarks/merge/bench_lora.py --layers 2 --vocab 8000      # a quick smoke run

The pair is bench.py's base and first fine-tune (bfloat16; the fine-tune is the base plus small noise, plus a
rank-16 change to every matrix so the adapter has something to find). Each tool runs in its own measuring
subprocess (peak RSS of its process tree, file-backed pages of the memory-mapped inputs included), with the same
number of threads. The adapters are compared in the same run: B @ A per module (the signs of singular pairs are
arbitrary) and the whole tensors.
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np, ml_dtypes
sys.path.insert(0, str(Path(__file__).parent))
from bench import make_models, measure
from entrenar.io import load_model, save_model, Model

def add_low_rank(folder, rank, scale=0.01, seed=1):
    "Give the fine-tune ft1 a rank-`rank` change on every 2-D weight (beside its noise), rewriting it once"
    path = folder / 'ft1' / 'model.safetensors'
    if (folder / 'ft1' / 'low-rank').exists(): return
    m, rng = load_model(path), np.random.default_rng(seed)
    out = []
    for n, a in m.parameters:
        if a.ndim == 2 and 'embed' not in n and 'lm_head' not in n:
            u = rng.standard_normal((a.shape[0], rank), dtype=np.float32) * scale
            v = rng.standard_normal((rank, a.shape[1]), dtype=np.float32) / np.sqrt(rank)
            a = (a.astype(np.float32) + u @ v).astype(a.dtype)
        out.append((n, a))
    save_model(Model(m.metadata, out), path.with_suffix('.tmp.safetensors')); os.replace(path.with_suffix('.tmp.safetensors'), path)
    (folder / 'ft1' / 'low-rank').write_text(str(rank))

def compare(a, b):
    "Max relative difference of B @ A over the modules, and of the whole tensors, between two adapter folders"
    ta, tb = (load_model(Path(f) / 'adapter_model.safetensors', lazy=True) for f in (a, b))
    assert sorted(ta.names) == sorted(tb.names), 'tensor names differ'
    worst_product, worst_whole = 0.0, 0.0
    for n in ta.names:
        if '.lora_B.' in n: continue
        f32 = lambda t, k: t.get_parameter(k).astype(np.float32)
        if '.lora_A.' in n:
            k = n.replace('lora_A', 'lora_B')
            pa, pb = f32(ta, k) @ f32(ta, n), f32(tb, k) @ f32(tb, n)
            worst_product = max(worst_product, float(np.abs(pa - pb).max() / max(np.abs(pb).max(), 1e-30)))
        else: worst_whole = max(worst_whole, float(np.abs(f32(ta, n) - f32(tb, n)).max()))
    return worst_product, worst_whole

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--workdir', default=os.path.join(tempfile.gettempdir(), 'entrenar-lora-bench'))
    ap.add_argument('--layers', type=int, default=8); ap.add_argument('--hidden', type=int, default=1024)
    ap.add_argument('--intermediate', type=int, default=2816); ap.add_argument('--vocab', type=int, default=32000)
    ap.add_argument('--dtype', default='bfloat16'); ap.add_argument('--rank', type=int, default=32)
    ap.add_argument('--threads', type=int, default=os.cpu_count() or 1, help='threads for both tools (OMP_NUM_THREADS)')
    ap.add_argument('--mergekit', default=os.environ.get('MERGEKIT_EXTRACT_LORA', '.cache/peers/venv/bin/mergekit-extract-lora'))
    ap.add_argument('--entrenar', default=str(Path(sys.executable).parent / 'entrenar'))
    ap.add_argument('--keep', action='store_true', help='keep the generated models for another run')
    args = ap.parse_args()
    entrenar = [args.entrenar] if Path(args.entrenar).exists() else [sys.executable, '-c', 'import sys; from entrenar.cli import main; sys.exit(main())']
    if not Path(args.mergekit).exists(): sys.exit(f"mergekit-extract-lora not found at {args.mergekit} (see the docstring)")
    folder = Path(args.workdir); folder.mkdir(parents=True, exist_ok=True)
    dtype = np.dtype(getattr(ml_dtypes, args.dtype, None) or args.dtype)
    t = time.perf_counter()
    names, n_params = make_models(folder, 2, args.layers, args.hidden, args.intermediate, args.vocab, dtype)
    add_low_rank(folder, 16)
    os.sync()
    print(f"a base and a fine-tune of {n_params / 1e6:.0f}M parameters ({dtype.name}, {n_params * dtype.itemsize / 1e9:.2f} GB each) "
          f"ready in {time.perf_counter() - t:.0f} s; rank {args.rank}; {args.threads} threads per tool")
    os.environ['OMP_NUM_THREADS'] = str(args.threads)
    base, ft, log = folder / 'base', folder / 'ft1', open(folder / 'bench.log', 'w')
    mk_out, en_out = folder / 'out-mk', folder / 'out-en'
    for o in (mk_out, en_out): subprocess.run(['rm', '-rf', str(o)])
    mk = measure([args.mergekit, '--model', ft, '--base-model', base, '--out-path', mk_out, '--max-rank', args.rank], log,
                 dict(HF_HUB_OFFLINE='1'))
    en = measure([*entrenar, 'extract-lora', '--base', base, '--model', ft, '--rank', args.rank, en_out], log)
    product, whole = compare(en_out, mk_out)
    print(f"\n| tool | s | peak RSS |\n|---|---|---|")
    print(f"| mergekit-extract-lora | {mk[0]:.1f} | {mk[1] / 2**30:.2f} GiB |")
    print(f"| entrenar extract-lora | {en[0]:.1f} | {en[1] / 2**30:.2f} GiB |")
    print(f"\nspeed-up {mk[0] / en[0]:.1f}x, RSS ratio {en[1] / mk[1]:.2f}; adapters: B @ A max relative difference {product:.2g}, "
          f"whole tensors max difference {whole:.2g}")
    errors = [l for l in (en_out / 'README.md').read_text().splitlines() if l.startswith('| model.')]
    errs = [float(l.strip('|').split('|')[-1]) for l in errors]
    print(f"entrenar's reported relative errors: {len(errs)} modules, mean {np.mean(errs):.4f}, max {np.max(errs):.4f}")
    if not args.keep:
        for n in names: subprocess.run(['rm', '-rf', str(folder / n)])

if __name__ == '__main__': main()
