"JSON/YAML layouts other writers produce: key order, a `data` key nested in metadata, block-style YAML, big integers"
import json
import numpy as np
import fastcore.test as ft
from entrenar.io import Model, ModelMetadata, load_model, save_model

def _model():
    meta = ModelMetadata('x').with_custom('data', [1, 2, 3]).with_custom('note', '"data": [9]')
    return Model(meta, {'w': np.arange(4, dtype=np.float32), 'ids': np.array([2**63 - 1, -2**63, 7], np.int64)})

def test_nested_data_key_and_any_key_order(tmp_path):
    m = _model()
    save_model(m, tmp_path / 'a.json')
    d = json.loads((tmp_path / 'a.json').read_text())
    for order in (('data', 'parameters', 'metadata'), ('parameters', 'data', 'metadata')):
        (tmp_path / 'b.json').write_text(json.dumps({k: d[k] for k in order}, indent=1))
        b = load_model(tmp_path / 'b.json')
        ft.test_eq(b.metadata.custom, m.metadata.custom)
        ft.test_eq(b.get_parameter('w'), m.get_parameter('w'))
        ft.test_eq(b.get_parameter('ids'), m.get_parameter('ids'))

def test_yaml_block_style_as_serde_yaml_writes(tmp_path):
    text = ("metadata:\n  name: seed\n  architecture: mlp\n  version: 0.1.0\n  training_config: null\n  custom: {}\n"
            "parameters:\n- name: w\n  shape:\n  - 4\n  dtype: f32\n  requires_grad: true\n"
            "data:\n- 1.0\n- -2.5\n- .inf\n- 1.0e-07\n")
    (tmp_path / 'r.yaml').write_text(text)
    ft.test_eq(load_model(tmp_path / 'r.yaml').get_parameter('w'), np.array([1, -2.5, np.inf, 1e-7], np.float32))

def test_large_text_tensor_in_blocks(tmp_path):
    a = np.random.default_rng(0).standard_normal(3_000_000).astype(np.float32)   # ~33 MB of text: more than one block
    save_model(Model(None, {'a': a, 'b': a[:5]}), tmp_path / 'big.json')
    b = load_model(tmp_path / 'big.json')
    assert b.get_parameter('a').tobytes() == a.tobytes()
    assert b.get_parameter('b').tobytes() == a[:5].tobytes()
