"JSON/YAML layouts other writers produce: key order, a `data` key nested in metadata, block-style YAML, big integers"
import json
import numpy as np
import fastcore.test as ft
from entrenar.io import Model, ModelMetadata, load_model, save_model
from entrenar.errors import SerializationError

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

def test_one_pass_over_mixed_tensors(tmp_path):
    "Tensors of every parse route one after another (split across threads, 64-bit integers, through float64, complex): each gets exactly its values"
    rng = np.random.default_rng(1)
    params = {'big': rng.standard_normal(400_000).astype(np.float32),         # long enough to be read in parts
              'ids': np.array([2**63 - 1, -2**63, 7], np.int64),
              'half': rng.standard_normal((3, 5)).astype(np.float16),
              'cplx': (rng.standard_normal(300_000) + 1j * rng.standard_normal(300_000)).astype(np.complex64),
              'empty': np.zeros((0, 3), np.float32),
              'f64': rng.standard_normal(300_001) * 1e-300,                    # subnormal and tiny: float() for some
              'flag': np.array([True, False, True])}
    for ext in ('json', 'yaml'):
        back = load_model(save_model(Model(None, params), tmp_path / f'mixed.{ext}'))
        for n, a in params.items():
            b = back.get_parameter(n)
            assert (b.dtype, b.shape) == (a.dtype, a.shape) and b.tobytes() == a.tobytes(), (ext, n)

def _text_model(tmp_path, data, shapes=((4,), (3,))):
    params = ','.join(f'{{"name":"t{i}","shape":{list(s)},"dtype":"f32"}}' for i, s in enumerate(shapes))
    p = tmp_path / 'm.json'
    p.write_text(f'{{"metadata":{{"name":"x"}},"parameters":[{params}],"data":[{data}]}}')
    return p

def test_counts_and_bad_tokens_name_the_tensor(tmp_path):
    ok = load_model(_text_model(tmp_path, '1,2,3,4, 5,6,7'))
    ft.test_eq(ok.get_parameter('t1'), np.array([5, 6, 7], np.float32))
    with ft.ExceptionExpected(SerializationError, "tensor 't1': data: expected 3 numbers, found 2"): load_model(_text_model(tmp_path, '1,2,3,4,5,66'))
    with ft.ExceptionExpected(SerializationError, "data holds more values than the parameters' shapes need"): load_model(_text_model(tmp_path, '1,2,3,4,5,6,7,8'))
    with ft.ExceptionExpected(SerializationError, "tensor 't1': data: number 1 is not a number: 'x'"): load_model(_text_model(tmp_path, '1,2,3,4,5,x,7'))
    with ft.ExceptionExpected(SerializationError, "tensor 't0': data ends before this tensor's values"): load_model(_text_model(tmp_path, '1, 2, 3, 4   ', ((4,), (0,), (1,))))
    big = np.random.default_rng(2).standard_normal(300_000).astype(np.float32)
    toks = [repr(float(v)) for v in big]; toks[250_000] = '1..5'
    with ft.ExceptionExpected(SerializationError, "tensor 't0': data: number 250000 is not a number: '1..5'"):
        load_model(_text_model(tmp_path, ','.join(toks + ['1', '2', '3']), ((300_000,), (3,))))

def test_write_behind_sends_windows_to_disk_and_keeps_every_byte(tmp_path):
    "The write-behind of big text files: full windows are flushed and dropped from the page cache, the file is intact"
    from entrenar.io import _WriteBehind, _sync_file_range
    data = np.random.default_rng(0).integers(0, 256, 5 << 20, dtype=np.uint8).tobytes()
    with open(tmp_path / 'f.bin', 'wb') as f:
        wb = _WriteBehind(f, step=1 << 20)
        for i in range(0, len(data), 300_000): f.write(data[i:i + 300_000]); wb()
        if _sync_file_range() is not None: ft.test_eq(wb.done, 4 << 20)   # 5 MiB written: windows 0-3 done, 4 in flight
    assert (tmp_path / 'f.bin').read_bytes() == data

def test_big_json_round_trip_through_write_behind(tmp_path):
    "A tensor whose text spans several 64 MB windows saves and loads bit for bit"
    a = np.random.default_rng(1).standard_normal(13_000_000).astype(np.float32)
    save_model(Model(None, {'w': a}), tmp_path / 'big.json')
    assert (tmp_path / 'big.json').stat().st_size > 128 << 20
    assert load_model(tmp_path / 'big.json').get_parameter('w').tobytes() == a.tobytes()
