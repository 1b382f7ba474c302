"""entrenar moe vs mergekit-moe: wall time and peak RSS on generated Llama-shaped experts, side by side, in one run.

mergekit lives in its own virtual environment (never a dependency of entrenar), e.g. the peers venv:
    python benchmarks/merge/bench_moe.py --mergekit-moe .cache/peers/venv/bin/mergekit-moe
    python benchmarks/merge/bench_moe.py --layers 2 --vocab 8000      # a quick smoke run

A base and 3 fine-tunes of 322M parameters each (bfloat16, 0.64 GB), made by bench.py's generator, with the shipped
tiny Llama's tokenizer; the config puts the base and the fine-tunes as 4 experts with cheap_embed routers (the gate
mode that reads the base's embeddings and tokenizer). Each tool runs in its own subprocess; peak RSS is that
subprocess tree's maximum resident set. entrenar writes --layout fused, mergekit 0.1.5's tensor layout, and the
outputs are compared tensor by tensor; it also runs with the default (per-expert, Hub Mixtral) layout.
"""
import argparse, importlib.util, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path
import numpy as np, ml_dtypes

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location('merge_bench', HERE / 'bench.py')
mb = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(mb)
TINY = HERE.parent.parent / 'models' / 'tiny-llama'
PROMPTS = [('["write a poem about the sea"]', None), ('["solve 2x + 3 = 7"]', '["write a poem about the sea"]'),
           ('["def f(x): return x"]', None), ('["the weather today"]', None)]

def moe_config(folder, names, gate_mode):
    lines = [f"base_model: {folder / names[0]}", f"gate_mode: {gate_mode}", "dtype: bfloat16", "experts_per_token: 2", "experts:"]
    for n, (pos, neg) in zip(names, PROMPTS):
        lines += [f"  - source_model: {folder / n}", f"    positive_prompts: {pos}"] + ([f"    negative_prompts: {neg}"] if neg else [])
    return '\n'.join(lines) + '\n'

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--workdir', default=os.path.join(tempfile.gettempdir(), 'entrenar-moe-bench'))
    ap.add_argument('--layers', type=int, default=20); ap.add_argument('--hidden', type=int, default=1024)
    ap.add_argument('--intermediate', type=int, default=2816); ap.add_argument('--vocab', type=int, default=32000)
    ap.add_argument('--gate-mode', default='cheap_embed')
    ap.add_argument('--mergekit-moe', default=os.environ.get('MERGEKIT_MOE', '/work/mk-venv/bin/mergekit-moe'))
    ap.add_argument('--entrenar', default=str(Path(sys.executable).parent / 'entrenar'))
    ap.add_argument('--keep', action='store_true', help='keep the generated models for another run')
    args = ap.parse_args()
    entrenar = [args.entrenar] if Path(args.entrenar).exists() else [sys.executable, '-c', 'import sys; from entrenar.cli import main; sys.exit(main())']
    if not Path(args.mergekit_moe).exists(): sys.exit(f"mergekit-moe not found at {args.mergekit_moe}: install mergekit in its own venv")
    folder = Path(args.workdir); folder.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    names, n_params = mb.make_models(folder, 4, args.layers, args.hidden, args.intermediate, args.vocab, np.dtype(ml_dtypes.bfloat16))
    for f in ('tokenizer.model', 'tokenizer_config.json', 'special_tokens_map.json'): shutil.copy(TINY / f, folder / names[0] / f)
    os.sync()
    print(f"4 models of {n_params / 1e6:.0f}M parameters (bfloat16, {n_params * 2 / 1e9:.2f} GB each) ready in {time.perf_counter() - t:.0f} s; "
          f"gate_mode {args.gate_mode}")
    cfg = folder / 'moe.yml'; cfg.write_text(moe_config(folder, names, args.gate_mode))
    log = open(folder / 'bench.log', 'w')
    outs = {k: folder / f'out-{k}' for k in ('mk', 'fused', 'mixtral')}
    for o in outs.values(): shutil.rmtree(o, ignore_errors=True)
    mk = mb.measure([args.mergekit_moe, cfg, outs['mk']], log, dict(HF_HUB_OFFLINE='1'))
    fused = mb.measure([*entrenar, 'moe', cfg, outs['fused'], '--layout', 'fused', '--quiet'], log)
    hub = mb.measure([*entrenar, 'moe', cfg, outs['mixtral'], '--quiet'], log)
    worst, ulp, frac = mb.compare(outs['fused'], outs['mk'])
    print("\n| tool | wall s | peak RSS | output |\n|---|---|---|---|")
    print(f"| mergekit-moe 0.1.5 | {mk[0]:.1f} | {mk[1] / 2**30:.2f} GiB | fused layout |")
    print(f"| entrenar moe --layout fused | {fused[0]:.1f} | {fused[1] / 2**30:.2f} GiB | max abs diff {worst:.2g} ({ulp:.2g} ulp of the largest value), {frac:.4%} of elements differ |")
    print(f"| entrenar moe (per-expert layout) | {hub[0]:.1f} | {hub[1] / 2**30:.2f} GiB | Hub Mixtral layout |")
    print(f"\nspeed-up {mk[0] / fused[0]:.1f}x (fused), {mk[0] / hub[0]:.1f}x (per-expert); RSS ratio {fused[1] / mk[1]:.2f}, {hub[1] / mk[1]:.2f}")
    for o in outs.values(): shutil.rmtree(o, ignore_errors=True)
    if not args.keep:
        for n in names: shutil.rmtree(folder / n, ignore_errors=True)

if __name__ == '__main__': main()
