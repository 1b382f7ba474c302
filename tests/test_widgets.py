"""The explorers in a plain Python process (no Jupyter kernel): built, driven through their widgets' values,
and checked against numbers computed here with numpy."""
import json, os, subprocess, sys
from pathlib import Path
import fastcore.test as ft

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = r"""
import json, numpy as np
from entrenar.io import load_model
from entrenar.widgets import MergeExplorer, QuantExplorer
ms = [load_model(f'models/tiny-llama{s}', lazy=True) for s in ('', '-a', '-b')]
name = 'model.layers.1.self_attn.v_proj.weight'
ex = MergeExplorer(*ms, tensor=name)
ex.weights[0].value, ex.weights[1].value, ex.weights[2].value = 2.0, 1.0, 0.0
qe = QuantExplorer('models/tiny-llama', tensor=name)
qe.bits.value = 8
print(json.dumps(dict(norm=ex.rows[0]['norm'], cos=ex.rows[0]['cosine'], table=ex.table.value,
                      q_after=qe.report.summary['bytes_after'], q_scheme=qe.report.settings['scheme'],
                      rmse=next(r['rmse'] for r in qe.report.rows if r['name'] == name), png=qe.plot.value[:4].hex())))
"""

def test_explorers_in_a_plain_process():
    out = subprocess.run([sys.executable, '-c', SCRIPT], cwd=ROOT, capture_output=True, text=True, check=True, env={**os.environ, 'MPLBACKEND': 'Agg'})
    r = json.loads(out.stdout.strip().splitlines()[-1])
    from entrenar.io import load_model
    from entrenar.quantize import quantize_tensor
    import numpy as np
    name = 'model.layers.1.self_attn.v_proj.weight'
    x0, x1 = (load_model(ROOT / f'models/tiny-llama{s}').get_parameter(name).astype(np.float64) for s in ('', '-a'))
    merged = (2 * x0 + x1) / 3                      # linear, weights 2, 1, 0, normalised
    ft.test_close(r['norm'], np.linalg.norm(merged), eps=1e-3)
    ft.test_close(r['cos'][1], (merged * x1).sum() / np.linalg.norm(merged) / np.linalg.norm(x1), eps=1e-6)
    ft.test_eq(f"{np.linalg.norm(merged):.4f}" in r['table'], True)
    tiny = load_model(ROOT / 'models/tiny-llama')
    ft.test_eq(r['q_scheme'], 'q8_0')
    ft.test_eq(r['q_after'], sum(a.size // 32 * 34 if a.ndim >= 2 else a.nbytes for _, a in tiny.parameters))
    w = tiny.get_parameter(name)
    ft.test_close(r['rmse'], float(np.sqrt(np.mean((quantize_tensor(w, 'q8_0').dequantize().astype(np.float64) - w) ** 2))), eps=1e-12)
    ft.test_eq(r['png'], '89504e47')
