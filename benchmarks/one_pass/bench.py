"""Recipe to a runnable Q4_K_M GGUF: entrenar's one pass against the three-tool chain, in one run

The chain is what users run today: mergekit-yaml writes the merged checkpoint, llama.cpp's convert_hf_to_gguf.py
writes an F16 GGUF of it, llama-quantize's code (llama_model_quantize, through llama-cpp-python) writes the Q4_K_M
file. entrenar runs `entrenar merge --config recipe.yml --type q4_k_m --output merged.gguf`. Every step is its own
process; its wall time and peak RSS are measured by a small parent that does nothing else. Bytes written to disk are
the sizes of the files each side leaves (the chain's intermediates included).

The inputs: SmolLM2-135M-Instruct (a float32 checkpoint rebuilt from the published GGUF that tools/peers.sh
downloads) as the base, and two fine-tunes of it (its matrices plus small noise), merged with TIES.

    bash tools/peers.sh && .venv/bin/python benchmarks/one_pass/bench.py [--dtype bfloat16] [--folder DIR]
"""
import argparse, json, os, resource, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = Path(os.environ.get('ENTRENAR_PEERS') or ROOT / '.cache' / 'peers')
ENTRENAR = ROOT / '.venv' / 'bin' / 'entrenar'
PEER_PY = PEERS / 'venv' / 'bin' / 'python'

def measure(cmd):
    "Run `cmd` as this process's only child; print its wall time and peak RSS as JSON"
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    wall = time.perf_counter() - t0
    if r.returncode: sys.exit(f"failed: {' '.join(cmd)}\n{(r.stdout + r.stderr)[-2000:]}")
    print(json.dumps(dict(wall=wall, rss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)))

def run(cmd):
    out = subprocess.run([sys.executable, __file__, '--measure', '--', *map(str, cmd)], capture_output=True, text=True)
    if out.returncode: sys.exit(out.stdout + out.stderr)
    return json.loads(out.stdout.strip().splitlines()[-1])

def size(p:Path) -> int: return sum(f.stat().st_size for f in p.rglob('*') if f.is_file()) if p.is_dir() else p.stat().st_size

def make_inputs(d:Path, dtype:str) -> Path:
    "base/, ft1/, ft2/ (full checkpoint folders with tokenizer) and recipe.yml"
    import numpy as np
    sys.path.insert(0, str(ROOT))
    from entrenar.io import Model, load_model, save_model
    from entrenar.gguf import gguf_to_hf
    if not (d / 'recipe.yml').exists():
        src = PEERS / 'SmolLM2-135M-Instruct.Q4_1.gguf'
        if not src.exists(): sys.exit(f"{src} is missing: run bash tools/peers.sh")
        gguf_to_hf(src, d / 'base')
        m = load_model(d / 'base')
        for k in (1, 2):
            shutil.copytree(d / 'base', d / f'ft{k}', ignore=shutil.ignore_patterns('model.safetensors'))
            rng = np.random.default_rng(k)
            save_model(Model(m.metadata, [(n, x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(0.003) if x.ndim == 2 else x)
                                          for n, x in m.parameters]), d / f'ft{k}' / 'model.safetensors')
        (d / 'recipe.yml').write_text(f"merge_method: ties\nbase_model: {d / 'base'}\nmodels:\n"
                                      f"  - model: {d / 'ft1'}\n    parameters: {{weight: 0.6, density: 0.5}}\n"
                                      f"  - model: {d / 'ft2'}\n    parameters: {{weight: 0.4, density: 0.5}}\ndtype: {dtype}\n")
    return d / 'recipe.yml'

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--dtype', default='float32', help="the recipe's dtype (mergekit computes and writes in it)")
    ap.add_argument('--type', default='q4_k_m'); ap.add_argument('--folder', default=None)
    ap.add_argument('--measure', action='store_true'); ap.add_argument('cmd', nargs='*')
    args = ap.parse_args()
    if args.measure: return measure(args.cmd)
    tmp = Path(args.folder or tempfile.mkdtemp(prefix='entrenar-one-pass-'))
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        recipe = make_inputs(tmp / 'in', args.dtype)
        out = tmp / 'out'; shutil.rmtree(out, ignore_errors=True); out.mkdir()
        steps = [('mergekit-yaml', [PEERS / 'venv' / 'bin' / 'mergekit-yaml', recipe, out / 'merged', '--copy-tokenizer'], out / 'merged'),
                 ('convert_hf_to_gguf.py f16', [PEER_PY, PEERS / 'llama.cpp' / 'convert_hf_to_gguf.py', out / 'merged', '--outtype', 'f16',
                                                '--outfile', out / 'merged-f16.gguf'], out / 'merged-f16.gguf'),
                 (f'llama-quantize {args.type}', [PEER_PY, ROOT / 'tests' / 'peers' / 'llama_quantize.py', out / 'merged-f16.gguf',
                                                  out / f'chain-{args.type}.gguf', args.type], out / f'chain-{args.type}.gguf')]
        rows = []
        for name, cmd, made in steps:
            r = run(cmd); rows.append((name, r['wall'], r['rss_mb'], size(made)))
        ours = run([ENTRENAR, 'merge', '--config', recipe, '--type', args.type, '--output', out / f'entrenar-{args.type}.gguf', '--quiet'])
        one = (f'entrenar merge --type {args.type}', ours['wall'], ours['rss_mb'], size(out / f'entrenar-{args.type}.gguf'))
        n = sum(size(p) for p in (tmp / 'in' / 'base' / 'model.safetensors', tmp / 'in' / 'ft1' / 'model.safetensors', tmp / 'in' / 'ft2' / 'model.safetensors'))
        print(f"TIES of two fine-tunes of SmolLM2-135M onto the base ({args.dtype}; inputs {n / 1e9:.2f} GB) to a {args.type.upper()} GGUF; "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}\n")
        print(f"{'step':<30} {'wall s':>8} {'peak RSS MB':>12} {'MB written':>11}")
        for name, w, m, b in rows: print(f"{name:<30} {w:>8.2f} {m:>12.0f} {b / 1e6:>11.1f}")
        chain = (sum(r[1] for r in rows), max(r[2] for r in rows), sum(r[3] for r in rows))
        print(f"{'chain, all three':<30} {chain[0]:>8.2f} {chain[1]:>12.0f} {chain[2] / 1e6:>11.1f}")
        print(f"{one[0]:<30} {one[1]:>8.2f} {one[2]:>12.0f} {one[3] / 1e6:>11.1f}")
        print(f"\none pass: {one[1] / chain[0]:.2f} of the chain's time ({chain[0] / one[1]:.1f}x faster), {one[3] / chain[2]:.2f} of its bytes written "
              f"(no intermediate: {(chain[2] - rows[-1][3]) / 1e6:.0f} MB fewer), peak RSS {one[2]:.0f} MB vs {chain[1]:.0f} MB")
        sys.path.insert(0, str(ROOT))
        from entrenar.gguf import GgufFile
        a, b = GgufFile(out / f'entrenar-{args.type}.gguf'), GgufFile(steps[-1][2])
        same_types = {n: a.type_of(n) for n in a.tensors} == {n: b.type_of(n) for n in b.tensors}
        print(f"same tensors and types as the chain's file: {'yes' if same_types else 'NO'} (values differ by the chain's F16 step and "
              f"mergekit's torch arithmetic; entrenar's one pass equals entrenar's own three steps byte for byte: tests/test_one_pass.py)")
    finally:
        if not args.folder: shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__': main()
