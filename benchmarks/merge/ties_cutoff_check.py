"""Where entrenar's TIES and mergekit's differ, it is only among elements tied at the top-k cut-off.

TIES keeps the top k = density * n entries of each task vector by magnitude. When several entries equal the k-th
largest magnitude, which of them are kept is arbitrary: mergekit takes torch's argsort order, entrenar takes
positions in order (MERGE-SEMANTICS.md: "the only place results may legitimately differ"). Task vectors of
bfloat16 checkpoints are heavily quantised, so such ties are common (about 2% of a tensor sits at the cut-off).
This script runs mergekit's own sparsify/get_mask code (in its venv) and entrenar's on one tensor of the
benchmark's models, in float32, and counts differing elements that no cut-off tie explains (expect 0).

    python benchmarks/merge/ties_cutoff_check.py --workdir /tmp/emb-big [--tensor NAME]
"""
import argparse, os, subprocess, sys, tempfile, textwrap
from pathlib import Path
import numpy as np
from entrenar.io import load_model
from entrenar.merge import merge_tensors

MERGEKIT_SIDE = textwrap.dedent("""
    import sys, numpy as np, torch
    from mergekit.sparsify import sparsify, SparsificationMethod
    from mergekit.merge_methods.generalized_task_arithmetic import get_mask
    d = np.load(sys.argv[1]); base, xs = torch.from_numpy(d['base']), [torch.from_numpy(x) for x in d['xs']]
    w, density = float(sys.argv[3]), float(sys.argv[4])
    deltas = torch.stack([sparsify(x - base, density=density, method=SparsificationMethod.magnitude) for x in xs]) * w
    mask = get_mask(deltas, method='sum')
    divisor = (torch.full((len(xs),) + (1,) * base.dim(), w) * mask).sum(0); divisor[divisor == 0] = 1
    np.save(sys.argv[2], (base + (deltas * mask).sum(0) / divisor).numpy())
""")

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--workdir', default=os.path.join(tempfile.gettempdir(), 'entrenar-merge-bench'))
    ap.add_argument('--tensor', default='model.layers.3.mlp.up_proj.weight')
    ap.add_argument('--density', type=float, default=0.5)
    ap.add_argument('--mergekit-python', default=os.environ.get('MERGEKIT_PYTHON', '/work/mk-venv/bin/python'))
    args = ap.parse_args()
    folder = Path(args.workdir)
    names = ['base'] + sorted(p.name for p in folder.glob('ft*'))
    if not (folder / 'base').exists(): sys.exit(f"no benchmark models in {folder}: run bench.py --keep first")
    base, *xs = [load_model(folder / n, lazy=True).get_parameter(args.tensor).astype(np.float32) for n in names]
    w = 1 / len(xs)
    with tempfile.TemporaryDirectory() as tmp:
        np.savez(Path(tmp) / 'in.npz', base=base, xs=np.stack(xs))
        subprocess.run([args.mergekit_python, '-c', MERGEKIT_SIDE, Path(tmp) / 'in.npz', Path(tmp) / 'mk.npy', str(w), str(args.density)], check=True)
        mk = np.load(Path(tmp) / 'mk.npy')
    en = merge_tensors('ties', xs, base=base, weight=w, density=args.density)
    differ = (en != mk).ravel()
    n, k = base.size, max(1, int(args.density * base.size))
    at_cutoff = np.zeros(n, bool)
    for x in xs:
        a = np.abs(x - base).ravel()
        at_cutoff |= a == np.partition(a, n - k)[n - k]
    print(f"{args.tensor}: {differ.mean():.3%} of elements differ (max {np.abs(en - mk).max():.3g}); "
          f"{at_cutoff.mean():.3%} are tied at some model's cut-off; differences not explained by a cut-off tie: {int((differ & ~at_cutoff).sum())}")
    sys.exit(1 if (differ & ~at_cutoff).any() else 0)

if __name__ == '__main__': main()
