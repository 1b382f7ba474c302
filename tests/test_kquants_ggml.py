"""K-quants against ggml's own C code and llama-quantize: Q2_K..Q6_K bytes equal ggml's quantize_row_*_ref on every block
(random, heavy-tailed, outliers, zero, constant, subnormal, huge, real SmolLM2 weights), decode to ggml's values bit for bit,
and the named mixes (Q4_K_M, ...) equal llama_model_quantize tensor for tensor, byte for byte; llama.cpp runs them.
"""
import numpy as np
import pytest
import fastcore.test as ft
from entrenar import kquants
from entrenar.gguf import GgufFile
from entrenar.quantize import get_block_format
from test_gguf_llama_cpp import PROMPT, _variant, differences

pytestmark = pytest.mark.peers
K_TYPES = ['q2_k', 'q3_k', 'q4_k', 'q5_k', 'q6_k']

def _hard_rows(rng, smollm2) -> np.ndarray:
    "Super-blocks (n, 256) that exercise every branch of ggml's searches"
    rows = [rng.standard_normal((64, 256)), rng.standard_t(2, (64, 256)) * 0.02,      # normal, heavy-tailed
            np.zeros((2, 256)), np.full((1, 256), 0.5), np.full((1, 256), -0.25),     # zero and constant blocks
            np.full((1, 256), 1e-40), rng.standard_normal((2, 256)) * 1e-39,          # subnormals
            rng.standard_normal((2, 256)) * 1e4, np.abs(rng.standard_normal((2, 256))), -np.abs(rng.standard_normal((2, 256)))]
    out = rng.standard_normal((8, 256)); out[np.arange(8), rng.integers(0, 256, 8)] = 60.   # one outlier per block
    half = rng.standard_normal((4, 256)); half[:, :128] = 0                                  # whole sub-blocks of zeros
    big = rng.standard_normal((2, 256)); big[:, 3] = 1e6                                     # a sub-scale beyond float16
    real = np.concatenate([GgufFile(smollm2).array(n).reshape(-1, 256)[:96] for n in ('blk.0.attn_q.weight', 'blk.29.ffn_down.weight')])
    return np.concatenate(rows + [out, half, big, real]).astype(np.float32)

@pytest.fixture(scope='module')
def hard_rows(peers):
    return _hard_rows(np.random.default_rng(5), peers.smollm2)

@pytest.mark.parametrize('compiled', [True, False])
@pytest.mark.parametrize('kind', K_TYPES)
def test_blocks_equal_ggml(peers, tmp_path, hard_rows, kind, compiled, monkeypatch):
    "Both paths: numba's compiled loops (numpy's default) and the array code (CuPy's, and numpy's with COMPILED off)"
    monkeypatch.setattr(kquants, 'COMPILED', compiled)
    fmt, x = get_block_format(kind), hard_rows
    np.save(tmp_path / 'x.npy', x)
    peers.run('ggml_quantize.py', tmp_path / 'ref.bin', tmp_path / 'x.npy', fmt.ggml_type)
    ref = np.fromfile(tmp_path / 'ref.bin', np.uint8).reshape(len(x), fmt.type_size)
    with np.errstate(all='ignore'): ours = fmt.quantize(x)
    bad = np.flatnonzero((ours != ref).any(axis=1))
    ft.test_eq(bad.tolist(), [])
    peers.run('ggml_dequantize.py', tmp_path / 'y.npy', tmp_path / 'ref.bin', fmt.ggml_type, x.size)
    with np.errstate(all='ignore'): y = fmt.dequantize(ref)
    ft.test_eq(y.reshape(-1).view(np.uint32), np.load(tmp_path / 'y.npy').view(np.uint32))   # inf and nan included

@pytest.fixture(scope='module')
def wide(tmp_path_factory):
    "A random Llama with rows of 256 (real K-quants), 8 layers, 4 query heads per KV head, tied embeddings, outliers"
    return _variant(tmp_path_factory.mktemp('kq') / 'wide', 'LlamaForCausalLM', 1, True, False, h=256, layers=8, outliers=True)

MIXES = ['q2_k', 'q3_k_s', 'q3_k_m', 'q3_k_l', 'q4_k_s', 'q4_k_m', 'q5_k_s', 'q5_k_m', 'q6_k']

@pytest.mark.parametrize('mix', MIXES)
def test_mixes_equal_llama_quantize(peers, run_cli, tmp_path, wide, mix):
    "Every tensor's type and bytes, and the metadata, as llama_model_quantize writes them from the same F32 GGUF"
    f32 = tmp_path / 'f32.gguf'
    ft.test_eq(run_cli('convert', wide, f32, '--type', 'f32', '--quiet').returncode, 0)
    theirs, ours = tmp_path / f'llama-quantize-{mix}.gguf', tmp_path / f'ours-{mix}.gguf'
    peers.run('llama_quantize.py', f32, theirs, mix)
    ft.test_eq(run_cli('quantize', wide, '--type', mix.upper(), '--output', ours, '--quiet').returncode, 0)
    ft.test_eq(differences(ours, theirs), [])
    if mix == 'q4_k_m':
        types = set(GgufFile(ours).type_counts())
        assert {'Q4_K', 'Q6_K', 'F32'} <= types, types   # a mix, not one type

def test_fallbacks_equal_llama_quantize_and_are_said(peers, run_cli, tmp_path):
    "The shipped tiny model: rows of 128 do not divide into 256; the fallback types are llama-quantize's, and the summary says so"
    from conftest import MODELS
    tiny = MODELS / 'tiny-llama'
    ft.test_eq(run_cli('convert', tiny, tmp_path / 'f32.gguf', '--type', 'f32', '--quiet').returncode, 0)
    peers.run('llama_quantize.py', tmp_path / 'f32.gguf', tmp_path / 'theirs.gguf', 'q3_k_m')
    r = run_cli('quantize', tiny, '--type', 'q3_k_m', '--output', tmp_path / 'ours.gguf')
    ft.test_eq(r.returncode, 0)
    assert 'fallbacks: 13 tensors' in r.stdout and 'q3_k -> q4_0 (9)' in r.stdout, r.stdout   # llama.cpp: '13 of 21 tensor(s) required fallback'
    ft.test_eq(differences(tmp_path / 'ours.gguf', tmp_path / 'theirs.gguf'), [])

@pytest.mark.parametrize('mix', ['q4_k_m', 'q2_k'])
def test_llama_cpp_runs_the_mixes(peers, run_cli, tmp_path, wide, mix):
    "llama.cpp loads and evaluates our K-quant files; their logits follow transformers' on the float checkpoint"
    out = tmp_path / f'{mix}.gguf'
    ft.test_eq(run_cli('quantize', wide, '--type', mix, '--output', out, '--quiet').returncode, 0)
    got, ref = peers.run('llama_run.py', out, PROMPT, 4), peers.run('hf_run.py', wide, PROMPT, 4)
    ft.test_eq(got['prompt_tokens'], ref['prompt_tokens'])
    r = np.corrcoef(got['logits'], ref['logits'])[0, 1]
    assert r > (0.85 if mix == 'q4_k_m' else 0.5), r   # a random 8-layer model with outliers: error compounds

def _importances(rng, n) -> dict:
    "Importance vectors that exercise ggml's weighted searches: flat, wide, with zero runs, sparse, one per sub-block"
    z = np.exp(rng.standard_normal(n) * 2); z[rng.random(n) < 0.3] = 0; z[:16] = 0; z[40:72] = 0
    s = np.exp(rng.standard_normal(n) * 2); s[rng.random(n) < 0.9] = 0
    one = np.zeros(n); one[rng.integers(0, 16, n // 16) + np.arange(0, n, 16)] = 1
    return {k: v.astype(np.float32) for k, v in dict(ones=np.ones(n), wide=np.exp(rng.standard_normal(n) * 2), zeros=z, sparse=s,
                                                      very_wide=np.exp(rng.standard_normal(n) * 6), one_per_16=one).items()}

@pytest.mark.parametrize('kind', ['q4_0', 'q4_1', 'q5_0', 'q5_1', *K_TYPES])
def test_weighted_blocks_equal_ggml(peers, tmp_path, hard_rows, kind):
    "With an importance vector: ggml_quantize_chunk(..., imatrix), the `_impl` searches, on rows of 512 (statistics span a row)"
    fmt = get_block_format(kind)
    x = hard_rows[:len(hard_rows) // 2 * 2].reshape(-1, 512)
    np.save(tmp_path / 'x.npy', x)
    for name, w in _importances(np.random.default_rng(3), 512).items():
        np.save(tmp_path / 'w.npy', w)
        peers.run('ggml_quantize.py', tmp_path / 'ref.bin', tmp_path / 'x.npy', fmt.ggml_type, tmp_path / 'w.npy')
        ref = np.fromfile(tmp_path / 'ref.bin', np.uint8).reshape(len(x), -1)
        ours = fmt.quantize(x, w)
        bad = np.flatnonzero((ours.reshape(-1, fmt.type_size) != ref.reshape(-1, fmt.type_size)).any(axis=1))
        ft.test_eq((name, bad.tolist()), (name, []))
