"""Check that `entrenar merge` gives mergekit's tensors, method by method, on the shipped tiny Llama and its fine-tunes.

mergekit lives in its own virtual environment (it is not a dependency of entrenar):
    python3 -m venv /work/mk-venv && /work/mk-venv/bin/pip install torch==2.13.0 mergekit
    python benchmarks/merge/compare_mergekit.py [--mergekit /work/mk-venv/bin/mergekit-yaml]
Prints one row per method: max |entrenar - mergekit| over all tensors, and whether it is within float rounding.
Random methods (dare_ties, dare_linear, della) cannot match torch's RNG bit for bit: their rows compare the
fraction of changed elements instead.
"""
import argparse, os, subprocess, sys, tempfile, textwrap
from pathlib import Path
import numpy as np
from entrenar.io import load_model

ROOT = Path(__file__).resolve().parents[2]
M = {k: str(ROOT / 'models' / f'tiny-llama{k}') for k in ('', '-a', '-b', '-c')}

def models_recipe(method, params='', per=None, base=True, models=('-a', '-b', '-c')):
    per = per or {}
    lines = [f"merge_method: {method}"] + ([f"base_model: {M['']}"] if base else []) + ["models:"]
    for k in models:
        lines.append(f"  - model: {M[k]}")
        if k in per: lines.append(f"    parameters: {per[k]}")
    if params: lines.append(f"parameters: {params}")
    return '\n'.join(lines) + '\n'

W = {'-a': '{weight: 0.5, density: 0.6}', '-b': '{weight: 0.3, density: 0.5}', '-c': '{weight: 0.2, density: 0.7}'}
RECIPES = {
    'linear': models_recipe('linear', per={'-a': '{weight: 0.5}', '-b': '{weight: 0.3}', '-c': '{weight: 0.2}'}, base=False),
    'slerp': textwrap.dedent(f"""\
        merge_method: slerp
        base_model: {M['']}
        slices:
          - sources:
              - {{model: {M['']}, layer_range: [0, 2]}}
              - {{model: {M['-a']}, layer_range: [0, 2]}}
        parameters:
          t:
            - {{filter: self_attn, value: [0.1, 0.9]}}
            - {{filter: mlp, value: [0.8, 0.3]}}
            - value: 0.4
        """),
    'nuslerp': models_recipe('nuslerp', per={'-a': '{weight: 0.7}', '-b': '{weight: 0.3}'}, models=('-a', '-b')),
    'multislerp': models_recipe('multislerp', per={'-a': '{weight: 1}', '-b': '{weight: 2}', '-c': '{weight: 3}'}),
    'karcher': models_recipe('karcher', base=False),
    'nearswap': models_recipe('nearswap', params='{t: 0.01}', models=('-a',)),
    'task_arithmetic': models_recipe('task_arithmetic', params="{lambda: 0.8}", per={k: '{weight: %s}' % w for k, w in (('-a', .5), ('-b', .3), ('-c', .2))}),
    'ties': models_recipe('ties', per=W),
    'ties_lambda_neg': models_recipe('ties', params='{lambda: 1.5, normalize: false}', per={'-a': '{weight: 0.5, density: 0.6}', '-b': '{weight: -0.3, density: 0.5}', '-c': '{weight: 0.2}'}),
    'ties_uniform_weights': models_recipe('ties', params='{weight: 0.3333333, density: 0.4}'),
    'breadcrumbs': models_recipe('breadcrumbs', params='{gamma: 0.05}', per=W),
    'breadcrumbs_ties': models_recipe('breadcrumbs_ties', params='{gamma: 0.05}', per=W),
    'model_stock': models_recipe('model_stock'),
    'model_stock_filter_wise': models_recipe('model_stock', params='{filter_wise: true}'),
    'sce': models_recipe('sce', params='{select_topk: 0.5}'),
    'passthrough': textwrap.dedent(f"""\
        merge_method: passthrough
        slices:
          - sources: [{{model: {M['']}, layer_range: [0, 1]}}]
          - sources: [{{model: {M['-a']}, layer_range: [0, 2]}}]
        """),
    'ties_dtype_int8_mask': "dtype: float16\n" + models_recipe('ties', params='{int8_mask: true, normalize: true}', per=W),
    'linear_unnormalized_bf16': "dtype: bfloat16\nout_dtype: float32\n" + models_recipe(
        'linear', params='{normalize: false}', per={'-a': '{weight: 0.5}', '-b': '{weight: 0.3}', '-c': '{weight: 0.4}'}, base=False),
    'dare_ties': models_recipe('dare_ties', per=W),
    'dare_linear': models_recipe('dare_linear', per=W),
    'della': models_recipe('della', params='{epsilon: 0.1}', per=W),
}
RANDOM = {'dare_ties', 'dare_linear', 'della'}

def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode: sys.exit(f"failed: {' '.join(map(str, cmd))}\n{r.stderr[-3000:]}")

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--mergekit', default=os.environ.get('MERGEKIT_YAML', '/work/mk-venv/bin/mergekit-yaml'))
    ap.add_argument('--entrenar', default=str(Path(sys.executable).parent / 'entrenar'))
    ap.add_argument('--only', help='comma-separated recipe names to run (default: all)')
    args = ap.parse_args()
    if not Path(args.mergekit).exists(): sys.exit(f"mergekit-yaml not found at {args.mergekit}: install mergekit in its own venv (see the docstring)")
    print(f"{'method':<24} {'tensors':>7} {'max |diff|':>11} {'max |ref|':>9}  verdict")
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, text in RECIPES.items():
            if args.only and name not in args.only.split(','): continue
            (tmp / f'{name}.yml').write_text(text)
            run([args.mergekit, tmp / f'{name}.yml', tmp / f'mk-{name}', '--random-seed', '0', '--quiet'])
            run([args.entrenar, 'merge', '--config', tmp / f'{name}.yml', '--output', tmp / f'en-{name}', '--quiet'])
            mk, en = load_model(tmp / f'mk-{name}'), load_model(tmp / f'en-{name}')
            if sorted(mk.names) != sorted(en.names):
                print(f"{name:<24} tensor names differ: {sorted(set(mk.names) ^ set(en.names))[:4]}"); bad += 1; continue
            if name in RANDOM:
                base = load_model(M[''])
                frac = lambda m: np.mean([np.mean(m.get_parameter(n) != base.get_parameter(n)) for n in m.names])
                print(f"{name:<24} {len(mk.names):>7} {'(random)':>11} {'':>9}  changed fraction: mergekit {frac(mk):.3f}, entrenar {frac(en):.3f}")
                continue
            diff = max(float(np.max(np.abs(mk.get_parameter(n).astype(np.float64) - en.get_parameter(n).astype(np.float64)))) for n in mk.names)
            ref = max(float(np.max(np.abs(mk.get_parameter(n).astype(np.float64)))) for n in mk.names)
            ok = diff <= 1e-5 * max(ref, 1.0)
            bad += not ok
            print(f"{name:<24} {len(mk.names):>7} {diff:>11.2e} {ref:>9.3f}  {'equal up to float rounding' if ok else 'DIFFERENT'}")
    sys.exit(1 if bad else 0)

if __name__ == '__main__': main()
