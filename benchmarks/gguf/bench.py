"""A transformers checkpoint to GGUF: entrenar against llama.cpp's convert_hf_to_gguf.py, wall time and peak RSS

Both sides convert the same checkpoint to the same output type, each in its own process (peak RSS is that process's
alone, measured by a small parent that does nothing else), one after the other, best of --repeat. The outputs'
tensors must be byte-identical (names, types and bytes).

The default checkpoint is SmolLM2-135M-Instruct rebuilt as float32 SafeTensors (538 MB) from the GGUF that
tools/peers.sh downloads; --model takes any Llama-family folder. The peer tools come from tools/peers.sh.

    .venv/bin/python benchmarks/gguf/bench.py [--model DIR] [--types f16,q8_0] [--repeat 3]
"""
import argparse, json, os, resource, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PEERS = Path(os.environ.get('ENTRENAR_PEERS') or ROOT / '.cache' / 'peers')

def measure(cmd):
    "Run `cmd` as this process's only child; print its wall time and peak RSS as JSON"
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode: sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr[-2000:]}")
    print(json.dumps(dict(wall=wall, rss_mb=resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)))

def run(cmd):
    out = subprocess.run([sys.executable, __file__, '--measure', '--', *map(str, cmd)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])

def default_model(cache:Path) -> Path:
    "SmolLM2-135M-Instruct as a float32 transformers checkpoint, rebuilt once from the published Q4_1 GGUF"
    d = cache / 'smollm2-135m-f32'
    if not (d / 'model.safetensors').exists():
        src = PEERS / 'SmolLM2-135M-Instruct.Q4_1.gguf'
        if not src.exists(): sys.exit(f"{src} is missing: run bash tools/peers.sh (or give --model)")
        subprocess.run([str(ROOT / '.venv' / 'bin' / 'entrenar'), 'convert', str(src), str(d), '--quiet'], check=True)
    return d

def same_tensors(a, b) -> bool:
    sys.path.insert(0, str(ROOT))
    from entrenar.gguf import GgufFile
    fa, fb = GgufFile(a), GgufFile(b)
    return set(fa.tensors) == set(fb.tensors) and all(fa.type_of(n) == fb.type_of(n) and bytes(fa.tensors[n].data) == bytes(fb.tensors[n].data) for n in fa.tensors)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--model', type=Path, default=None)
    ap.add_argument('--types', default='f16,q8_0')
    ap.add_argument('--repeat', type=int, default=3)
    ap.add_argument('--pre', default='smollm', help="--tokenizer-pre for entrenar (the converter finds it by hashing)")
    ap.add_argument('--measure', action='store_true', help=argparse.SUPPRESS)
    ap.add_argument('cmd', nargs='*', help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.measure: return measure(a.cmd)
    out = ROOT / 'benchmarks' / 'results' / 'gguf'; out.mkdir(parents=True, exist_ok=True)
    model = a.model or default_model(out)
    size = sum(p.stat().st_size for p in model.glob('*.safetensors'))
    print(f"checkpoint {model.name}: {size / 1e6:.0f} MB of SafeTensors; best of {a.repeat}; one process per run")
    print(f"{'type':<6}{'entrenar s':>11}{'converter s':>12}{'speed-up':>9}   {'peak RSS MB: entrenar':>21}{'converter':>10}  same tensors")
    for t in a.types.split(','):
        ours_f, theirs_f = out / f'entrenar-{t}.gguf', out / f'converter-{t}.gguf'
        ours = [run([ROOT / '.venv' / 'bin' / 'entrenar', 'quantize', model, '--type', t, '--tokenizer-pre', a.pre, '--output', ours_f, '--quiet'])
                for _ in range(a.repeat)]
        theirs = [run([PEERS / 'venv' / 'bin' / 'python', PEERS / 'llama.cpp' / 'convert_hf_to_gguf.py', model, '--outtype', t, '--outfile', theirs_f])
                  for _ in range(a.repeat)]
        w1, w2 = min(r['wall'] for r in ours), min(r['wall'] for r in theirs)
        m1, m2 = max(r['rss_mb'] for r in ours), max(r['rss_mb'] for r in theirs)
        print(f"{t:<6}{w1:>11.2f}{w2:>12.2f}{w2 / w1:>8.2f}x   {m1:>21.0f}{m2:>10.0f}  {'yes' if same_tensors(ours_f, theirs_f) else 'NO'}")

if __name__ == '__main__': main()
