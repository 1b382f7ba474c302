"""`entrenar fetch` against huggingface_hub's own `hf download`, on one local Hub server, in one run.

Both fetch model.safetensors (SIZE_MB of float32) + config.json from a server on 127.0.0.1 that answers like the Hub
(the one in tests/test_hub_server.py: LFS redirect to a second "CDN" origin). Each side runs in its own subprocess under
`/usr/bin/time -v` (wall time and peak RSS): a cold fetch into an empty cache, then a warm one (cache hit). entrenar
does more than `hf download` on a cold fetch: it hashes the new LFS blob against the SHA-256 the Hub announced, and
reads config.json; the ratio shows what that costs.

    python benchmarks/hub/bench_fetch.py [SIZE_MB] [REPEATS]
"""
import os, re, subprocess, sys, tempfile, time
from pathlib import Path

import numpy as np
from safetensors.numpy import save as st_save

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT/"tests"))
from test_hub_server import LocalHub  # noqa: E402

BIN = Path(sys.executable).parent


def timed(cmd, env):
    "Run `cmd` under /usr/bin/time -v: (wall seconds, peak RSS MiB, stdout)"
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0: raise SystemExit(f"{cmd[0]} failed:\n{r.stderr[-2000:]}")
    rss_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", r.stderr)[1])
    return wall, rss_kb / 1024, r.stdout


def main(size_mb=256, repeats=2):
    hub = LocalHub()
    weights = st_save({"w": np.random.default_rng(0).standard_normal(size_mb * 2**18, dtype=np.float32)}, metadata={"format": "pt"})
    hub.add("org/bench", {"model.safetensors": weights, "config.json": b'{"architectures": ["LlamaForCausalLM"]}'})
    del weights
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    tmp = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp/"home"), HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    sides = {
        "entrenar fetch": lambda d: [str(BIN/"entrenar"), "fetch", "org/bench", "--cache-dir", str(d)],
        "hf download": lambda d: [str(BIN/"hf"), "download", "org/bench", "model.safetensors", "config.json", "--cache-dir", str(d)],
    }
    res = {name: {"cold": [], "warm": [], "rss": []} for name in sides}
    for i in range(repeats):
        for name, cmd in sides.items():  # alternate sides so machine load falls on both
            cache = tmp/f"{name.split()[0]}-{i}"
            for kind in ("cold", "warm"):
                wall, rss, _ = timed(cmd(cache), env)
                res[name][kind].append(wall); res[name]["rss"].append(rss)
    hub.close()
    base = res["hf download"]
    print(f"model.safetensors {size_mb} MiB + config.json, local Hub server, best of {repeats}")
    print(f"{'tool':<16} {'cold s':>8} {'warm s':>8} {'peak RSS MiB':>13} {'cold ratio':>11} {'warm ratio':>11}")
    for name, r in res.items():
        print(f"{name:<16} {min(r['cold']):>8.2f} {min(r['warm']):>8.2f} {max(r['rss']):>13.0f} "
              f"{min(r['cold'])/min(base['cold']):>11.2f} {min(r['warm'])/min(base['warm']):>11.2f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
