"""Importance matrices against llama.cpp's own tools: llama-imatrix's files (GGUF and legacy .dat) read back, entrenar's
compute_imatrix equal to llama-imatrix's on the same model and text, entrenar's files accepted by llama-quantize, and
quantizing with an imatrix byte-identical to llama-quantize --imatrix; a mismatched imatrix is refused before writing.
"""
import os, subprocess
import numpy as np
import pytest
import fastcore.test as ft
from conftest import MODELS, one_error_line
from entrenar.gguf import GgufFile
from entrenar.imatrix import Imatrix, read_imatrix, write_imatrix
from test_gguf_llama_cpp import _variant, differences

pytestmark = pytest.mark.peers
TINY, CORPUS, CTX = MODELS / 'tiny-llama', MODELS / 'tokenizer-corpus.txt', 128
BLK = {f'blk.{i}.{k}.weight' for i in range(2) for k in ('attn_q', 'attn_k', 'attn_v', 'attn_output', 'ffn_gate', 'ffn_up', 'ffn_down')}

@pytest.fixture(scope='module')
def work(tmp_path_factory): return tmp_path_factory.mktemp('imatrix')

@pytest.fixture(scope='module')
def tiny_gguf(work, run_cli):
    ft.test_eq(run_cli('convert', TINY, work / 'tiny.gguf', '--type', 'f32', '--quiet').returncode, 0)
    return work / 'tiny.gguf'

def llama_imatrix(peers, model_gguf, out, *extra):
    return peers.tool('llama-imatrix', '-m', model_gguf, '-f', CORPUS, '-c', CTX, '-t', 2, '--no-ppl', '-o', out, *extra)

@pytest.fixture(scope='module')
def oracle(peers, work, tiny_gguf):
    "llama-imatrix on the tiny model and the tokenizer corpus, in both layouts"
    llama_imatrix(peers, tiny_gguf, work / 'oracle.gguf')
    llama_imatrix(peers, tiny_gguf, work / 'oracle.dat', '--output-format', 'dat')
    return work / 'oracle.gguf', work / 'oracle.dat'

def test_reads_both_layouts(oracle):
    g, d = read_imatrix(oracle[0]), read_imatrix(oracle[1])
    ft.test_eq((set(g.names), set(d.names)), (BLK, BLK))
    ft.test_eq((g.chunk_size, g.datasets), (CTX, [str(CORPUS)]))
    for n in BLK:
        ft.test_eq(g[n].shape, (256 if 'ffn_down' in n else 128,))
        assert (g[n] > 0).all(), n
        np.testing.assert_allclose(d[n], g[n], rtol=1e-5)   # the legacy layout stores mean * ncall in float32
    ft.test_eq(g['blk.0.attn_q.weight'], g['blk.0.attn_v.weight'])   # one input, one entry's worth of data

@pytest.fixture(scope='module')
def ours(peers, work):
    "entrenar's compute_imatrix (torch + transformers, in the peer environment) on the same model and text"
    code = ('import sys; from entrenar.imatrix import compute_imatrix, write_imatrix; '
            'write_imatrix(sys.argv[1], compute_imatrix(sys.argv[2], open(sys.argv[3]).read(), ctx=int(sys.argv[4]), dataset=sys.argv[3]))')
    r = subprocess.run([str(peers.python), '-c', code, str(work / 'ours.gguf'), str(TINY), str(CORPUS), str(CTX)], capture_output=True, text=True,
                       env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert r.returncode == 0, r.stderr[-3000:]
    return work / 'ours.gguf'

def test_compute_imatrix_equals_llama_imatrix(oracle, ours):
    a, b = read_imatrix(ours), read_imatrix(oracle[0])
    ft.test_eq((set(a.names), a.chunk_count, a.chunk_size), (set(b.names), b.chunk_count, b.chunk_size))
    for n in BLK:
        ft.test_eq(a.counts[n], b.counts[n])   # the same tokens
        rel = np.abs(a[n] - b[n]).max() / np.abs(b[n]).max()
        assert rel < 2e-3, (n, rel)   # float32 runtimes that add in different orders

def test_llama_quantize_reads_our_imatrix(peers, work, tiny_gguf, ours):
    out = peers.tool('llama-quantize', '--imatrix', ours, tiny_gguf, work / 'lq.gguf', 'Q4_K_M', '2')
    assert 'loaded 14 importance matrix entries' in out, out[-2000:]

@pytest.fixture(scope='module')
def wide(peers, work, run_cli):
    "A random Llama with rows of 256 (the K-quants proper), its F32 GGUF, and llama-imatrix's imatrix for it"
    m = _variant(work / 'wide', 'LlamaForCausalLM', 1, False, False, h=256, layers=8, outliers=True)
    ft.test_eq(run_cli('convert', m, work / 'wide.gguf', '--type', 'f32', '--quiet').returncode, 0)
    llama_imatrix(peers, work / 'wide.gguf', work / 'wide-imatrix.gguf')
    return m, work / 'wide.gguf', work / 'wide-imatrix.gguf'

@pytest.mark.parametrize('kind', ['q4_k_m', 'q2_k', 'q3_k_s', 'q3_k_l', 'q5_k_m', 'q6_k', 'q4_0', 'q4_1', 'q5_0', 'q5_1', 'q8_0'])
def test_quantize_with_imatrix_equals_llama_quantize(peers, run_cli, tmp_path, wide, kind):
    "ggml's weighted searches given the same imatrix: every tensor's type and bytes"
    model, f32, im = wide
    peers.tool('llama-quantize', '--imatrix', im, f32, tmp_path / 'theirs.gguf', kind.upper(), '2')
    r = run_cli('quantize', model, '--type', kind, '--imatrix', im, '--output', tmp_path / 'ours.gguf', '--quiet')
    ft.test_eq((r.returncode, r.stderr), (0, ''))
    ft.test_eq(differences(tmp_path / 'ours.gguf', tmp_path / 'theirs.gguf'), [])

def test_imatrix_lowers_the_error_that_matters(run_cli, tmp_path, wide):
    "Error weighted by the calibration activations (what the next layer sees): lower with the imatrix, on every quantized matrix"
    model, _, im_path = wide
    im = read_imatrix(im_path)
    for args, out in [((), 'plain.gguf'), (('--imatrix', im_path), 'imatrix.gguf')]:
        ft.test_eq(run_cli('quantize', model, '--type', 'q3_k_s', *args, '--output', tmp_path / out, '--quiet').returncode, 0)
    ref, plain, weighted = (GgufFile(p) for p in (wide[1], tmp_path / 'plain.gguf', tmp_path / 'imatrix.gguf'))
    for n in im.names:
        act = im[n]
        err = lambda f: float((((f.array(n) - ref.array(n)) ** 2) * act).sum())
        assert err(weighted) < err(plain), n

def test_mismatched_imatrix_is_refused_before_writing(run_cli, tmp_path, wide, oracle):
    "Another model's imatrix: missing entries, or entries of the wrong length, named; exit 1, no file"
    r = run_cli('quantize', wide[0], '--type', 'q4_k_m', '--imatrix', oracle[0], '--output', tmp_path / 'x.gguf')
    assert one_error_line(r).endswith("tensor 'blk.2.attn_q.weight': the imatrix has no entry for this tensor (42 missing: is it for another model?)")
    tiny = read_imatrix(oracle[0])   # rows of 128, renamed to the wide model's 8 layers
    names = {n.replace('blk.0.', f'blk.{i}.'): n for n in tiny.names if n.startswith('blk.0.') for i in range(8)}
    write_imatrix(tmp_path / 'short.gguf', Imatrix({k: tiny.sums[v] for k, v in names.items()}, {k: tiny.counts[v] for k, v in names.items()}))
    r = run_cli('quantize', wide[0], '--type', 'q4_k_m', '--imatrix', tmp_path / 'short.gguf', '--output', tmp_path / 'x.gguf')
    assert one_error_line(r).endswith("tensor 'blk.0.attn_q.weight': imatrix entry of 128 values for rows of 256"), r.stderr
    assert not (tmp_path / 'x.gguf').exists()
    r = run_cli('quantize', wide[0], '--type', 'q4_k', '--imatrix', tmp_path / 'short.gguf', '--output', tmp_path / 'x.safetensors')
    assert 'write a .gguf' in one_error_line(r)
