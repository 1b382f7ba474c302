"Merges and quantizations on a real Dask `LocalCluster` (worker processes on loopback): same bytes as one process, killed workers, bad inputs"
import hashlib, logging, os, sys, threading, time
from pathlib import Path
import numpy as np
import pytest
import fastcore.test as ft
from conftest import MODELS
distributed = pytest.importorskip('distributed')
import cloudpickle
from distributed import Client, LocalCluster, WorkerPlugin
from entrenar.errors import MergeError, QuantizeError
from entrenar.io import Model, SaveConfig, load_model, save_model
from entrenar.merge import merge_files
from entrenar.quantize import load_quantized, quantize_model

BASE, A, B, C = (MODELS / f'tiny-llama{k}' for k in ('', '-a', '-b', '-c'))
W = 'model.layers.1.mlp.down_proj.weight'
cloudpickle.register_pickle_by_value(sys.modules[__name__])   # the workers cannot import this file

def digests(folder):
    "file name -> SHA-256 of every file in a folder"
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in Path(folder).iterdir()}

def leftovers(folder, word):
    return [p.name for p in Path(folder).iterdir() if word in p.name]

@pytest.fixture(scope='module')
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host='127.0.0.1', dashboard_address=':0',
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as c:
        yield c

@pytest.fixture(scope='module')
def sharded(tmp_path_factory):
    "The tiny Llamas as sharded checkpoints (inputs are read lazily, shard by shard, on the workers)"
    d = tmp_path_factory.mktemp('inputs')
    for src in (BASE, A, B, C): save_model(load_model(src), d / src.name, SaveConfig().with_shard_size('500kB'))
    return d

DARE = dict(method='dare_ties', weight=[0.5, 0.3, 0.2], density=0.4, seed=1234, shard_size='200kB')

def test_dare_ties_same_bytes_as_one_process(client, sharded, tmp_path):
    ins = [sharded / m.name for m in (A, B, C)]
    merge_files(ins, tmp_path / 'cluster' / 'dare', base=sharded / BASE.name, client=client, **DARE)
    merge_files(ins, tmp_path / 'local' / 'dare', base=sharded / BASE.name, workers=2, **DARE)
    got = digests(tmp_path / 'cluster' / 'dare')
    assert len(got) >= 10 and 'model.safetensors.index.json' in got, sorted(got)   # many tasks, index included
    ft.test_eq(got, digests(tmp_path / 'local' / 'dare'))
    merge_files(ins, tmp_path / 'seed' / 'dare', base=sharded / BASE.name, client=client, **{**DARE, 'seed': 1235})
    assert digests(tmp_path / 'seed' / 'dare') != got   # the seed matters
    ft.test_eq(leftovers(tmp_path, 'entrenar'), [])

def test_ties_file_output_with_shards(client, tmp_path):
    for d in ('cluster', 'local'):
        merge_files([BASE, A, B], tmp_path / d / 'ties.safetensors', method='ties', density=0.5, shard_size='700kB',
                    client=client if d == 'cluster' else None)
    ft.test_eq(digests(tmp_path / 'cluster'), digests(tmp_path / 'local'))
    ft.test_eq(sorted(digests(tmp_path / 'cluster')), ['ties-00001-of-00003.safetensors', 'ties-00002-of-00003.safetensors',
                                                       'ties-00003-of-00003.safetensors', 'ties.safetensors.index.json'])

@pytest.mark.parametrize('args', [dict(bits=4), dict(bits=8, method='asymmetric', granularity='channel', include_1d=True)])
def test_quantize_same_bytes_as_one_process(client, sharded, tmp_path, args):
    src = sharded / A.name
    rep = quantize_model(src, tmp_path / 'cluster' / 'q', shard_size='60kB', client=client, **args)
    ref = quantize_model(src, tmp_path / 'local' / 'q', shard_size='60kB', **args)
    got = digests(tmp_path / 'cluster' / 'q')
    assert len(got) >= 4, sorted(got)
    ft.test_eq(got, digests(tmp_path / 'local' / 'q'))
    ft.test_eq(rep.rows, ref.rows); ft.test_eq(rep.settings, ref.settings)
    back = load_quantized(tmp_path / 'cluster' / 'q')
    ft.test_eq(back.names, load_model(src, lazy=True).names)

class KillMidTask(WorkerPlugin):
    "Kill the first worker that starts an entrenar task, while the task computes (once: a marker file remembers)"
    name = 'kill-mid-task'
    def __init__(self, marker): self.marker = str(marker)
    def transition(self, key, start, finish, **kwargs):
        if finish != 'executing' or 'entrenar-' not in str(key) or os.path.exists(self.marker): return
        open(self.marker, 'w').write(f'killed {key}')
        threading.Thread(target=self.kill, daemon=True).start()
    def kill(self): time.sleep(0.05); os._exit(1)

def test_killed_worker_is_retried_same_bytes(client, tmp_path):
    "A worker dies in the middle of a task: Dask runs the task again elsewhere, and the output is the same"
    rng = np.random.default_rng(0)
    big = {f'model.layers.{i}.mlp.up_proj.weight': rng.standard_normal((2048, 1024), np.float32) for i in range(8)}
    for k, name in enumerate(('base', 'x', 'y')):
        save_model(Model(None, {n: a + k * 0.01 * rng.standard_normal(a.shape, np.float32) for n, a in big.items()}), tmp_path / f'{name}.safetensors')
    ins = [tmp_path / 'x.safetensors', tmp_path / 'y.safetensors']
    recipe = dict(base=tmp_path / 'base.safetensors', method='dare_ties', weight=[0.6, 0.4], density=0.3, seed=5, shard_size='20MB')
    merge_files(ins, tmp_path / 'local' / 'm', **recipe)
    marker, out = tmp_path / 'killed', tmp_path / 'cluster'
    client.register_plugin(KillMidTask(marker))
    try: merge_files(ins, out / 'm', client=client, **recipe)
    finally: client.unregister_worker_plugin(KillMidTask.name)
    assert marker.read_text().startswith('killed entrenar-'), marker.read_text()   # a worker died in the middle of a task
    ft.test_eq(digests(out / 'm'), digests(tmp_path / 'local' / 'm'))
    ft.test_eq(sorted(p.name for p in out.iterdir()), ['m'])   # no temporary folder left
    client.wait_for_workers(2, timeout=60)

@pytest.mark.parametrize('out', ['m.json', 'm.yaml', 'm.safetensors', 'folder'])
def test_every_merge_output_same_bytes(client, tmp_path, out):
    for d in ('cluster', 'local'):
        merge_files([A, B, C], tmp_path / d / out, base=BASE, client=client if d == 'cluster' else None, **{**DARE, 'shard_size': None})
    where = (lambda d: tmp_path / d / out) if out == 'folder' else (lambda d: tmp_path / d)
    ft.test_eq(digests(where('cluster')), digests(where('local')))

@pytest.mark.parametrize('out,args', [('q.gguf', dict(format='q4_k')), ('q.gguf', dict(bits=4)), ('q.json', dict(bits=4, method='asymmetric')),
                                      ('q.json', dict(bits=8, granularity='channel')), ('q.safetensors', dict(format='q6_k'))])
def test_every_quantize_output_same_bytes(client, sharded, tmp_path, out, args):
    src = sharded / A.name
    rep = quantize_model(src, tmp_path / 'cluster' / out, client=client, **args)
    ref = quantize_model(src, tmp_path / 'local' / out, **args)
    ft.test_eq(digests(tmp_path / 'cluster'), digests(tmp_path / 'local'))
    ft.test_eq(rep.rows, ref.rows)

def test_bad_input_fails_the_run_naming_the_tensor(client, tmp_path):
    full = load_model(A)
    bad = tmp_path / 'nan.safetensors'
    save_model(Model(full.metadata, [(n, np.where(np.arange(x.size).reshape(x.shape) == 7, np.nan, x).astype(x.dtype) if n == W else x)
                                     for n, x in full.parameters]), bad)
    with ft.ExceptionExpected(MergeError, regex=f"tensor '{W}': holds NaN or infinite values"):
        merge_files([bad, B], tmp_path / 'merged', method='ties', base=BASE, shard_size='100kB', client=client)
    with ft.ExceptionExpected(QuantizeError, regex=f"tensor '{W}': 1 NaN or inf values"):
        quantize_model(bad, tmp_path / 'q', bits=4, shard_size='100kB', client=client)
    ft.test_eq(sorted(p.name for p in tmp_path.iterdir()), ['nan.safetensors'])   # nothing else, no temporary folder
    try: merge_files([bad, B], tmp_path / 'merged', method='ties', base=BASE, shard_size='100kB', client=client)
    except MergeError as e: ft.test_eq((e.tensor, type(e)), (W, MergeError))   # the error's fields survive the trip

def test_cli_tcp_scheduler_and_local_cluster(client, run_cli, tmp_path):
    address = client.scheduler.address
    assert address.startswith('tcp://127.0.0.1:')
    common = ('--method', 'dare_ties', '--density', '0.5', '--seed', '3', '--shard-size', '300kB')
    r = run_cli('merge', BASE, A, B, *common, '--scheduler', address, '--output', tmp_path / 'tcp' / 'out')
    ft.test_eq((r.returncode, r.stderr), (0, ''))   # no progress bar off a terminal, no log lines
    assert 'dare_ties: merged 21 tensors' in r.stdout, r.stdout
    r = run_cli('merge', BASE, A, B, *common, '--quiet', '--output', tmp_path / 'local' / 'out')
    ft.test_eq(r.returncode, 0)
    ft.test_eq(digests(tmp_path / 'tcp' / 'out'), digests(tmp_path / 'local' / 'out'))
    r = run_cli('merge', BASE, A, B, *common, '--quiet', '--scheduler', 'local:1', '--output', tmp_path / 'one-worker' / 'out')
    ft.test_eq((r.returncode, r.stderr), (0, ''))
    ft.test_eq(digests(tmp_path / 'one-worker' / 'out'), digests(tmp_path / 'local' / 'out'))   # 1 worker, 2 workers, no cluster: same bytes
    r = run_cli('quantize', A, '--bits', '4', '--shard-size', '300kB', '--scheduler', 'local:2', '--quiet', '--output', tmp_path / 'q2' / 'q')
    ft.test_eq((r.returncode, r.stderr), (0, ''))
    r = run_cli('quantize', A, '--bits', '4', '--shard-size', '300kB', '--quiet', '--output', tmp_path / 'q1' / 'q')
    ft.test_eq(digests(tmp_path / 'q2' / 'q'), digests(tmp_path / 'q1' / 'q'))

def test_cli_errors_are_one_line(run_cli, client, tmp_path):
    r = run_cli('merge', A, B, '--method', 'linear', '--scheduler', 'local:two', '--output', tmp_path / 'x')
    ft.test_eq(r.returncode, 1)
    ft.test_eq(r.stderr.strip().splitlines(), ["error: the scheduler 'local:N' needs a number of worker processes N, got 'local:two'"])
    full = load_model(A)
    save_model(Model(full.metadata, [(n, np.full_like(x, np.inf) if n == W else x) for n, x in full.parameters]), tmp_path / 'inf.safetensors')
    r = run_cli('quantize', tmp_path / 'inf.safetensors', '--bits', '4', '--scheduler', client.scheduler.address, '--output', tmp_path / 'q.json')
    ft.test_eq(r.returncode, 1)
    assert f"tensor '{W}'" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    ft.test_eq(leftovers(tmp_path, ''), ['inf.safetensors'])

@pytest.mark.gpu
def test_gpu_workers_same_bytes_as_one_gpu_process(tmp_path):
    "Workers started with ENTRENAR_BACKEND=cupy merge on the GPU, and write what one process on the GPU writes"
    from entrenar.backend import use_backend
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host='127.0.0.1', dashboard_address=':0',
                      silence_logs=logging.ERROR, env={'ENTRENAR_BACKEND': 'cupy'}) as cluster, Client(cluster) as c:
        ft.test_eq(set(c.run(lambda: __import__('entrenar.backend').backend.get_backend()).values()), {'cupy'})
        merge_files([A, B, C], tmp_path / 'cluster' / 'dare', base=BASE, client=c, **DARE)
        quantize_model(A, tmp_path / 'cluster' / 'q', bits=4, shard_size='60kB', client=c)
    with use_backend('cupy'):
        merge_files([A, B, C], tmp_path / 'local' / 'dare', base=BASE, **DARE)
        quantize_model(A, tmp_path / 'local' / 'q', bits=4, shard_size='60kB')
    for name in ('dare', 'q'): ft.test_eq(digests(tmp_path / 'cluster' / name), digests(tmp_path / 'local' / name))

@pytest.mark.parametrize('type,split', [('q4_k_m', None), ('q8_0', '200K'), ('f16', None)])
def test_llama_cpp_gguf_same_bytes(client, tmp_path, type, split):
    "llama.cpp's GGUF (split or not) written from a checkpoint on the cluster: the bytes of one process"
    from entrenar.gguf import to_gguf
    for d in ('cluster', 'local'):
        (tmp_path / d).mkdir()
        rep = to_gguf(BASE, tmp_path / d / 'm.gguf', type, split_max_size=split, client=client if d == 'cluster' else None, report=True)
    ft.test_eq(digests(tmp_path / 'cluster'), digests(tmp_path / 'local'))
    if split: assert len(digests(tmp_path / 'cluster')) >= 2, sorted(digests(tmp_path / 'cluster'))

def test_cli_gguf_on_a_local_cluster(run_cli, tmp_path):
    r = run_cli('quantize', BASE, '--type', 'q4_k_m', '--scheduler', 'local:2', '--quiet', '--output', tmp_path / 'c.gguf')
    ft.test_eq((r.returncode, r.stderr), (0, ''))
    r = run_cli('quantize', BASE, '--type', 'q4_k_m', '--quiet', '--output', tmp_path / 'p.gguf')
    ft.test_eq((tmp_path / 'c.gguf').read_bytes(), (tmp_path / 'p.gguf').read_bytes())
    r = run_cli('quantize', tmp_path / 'p.gguf', '--type', 'q8_0', '--scheduler', 'local:1', '--output', tmp_path / 'r.gguf')
    assert r.returncode == 1 and 'requantized in one process' in r.stderr, r.stderr

def test_one_pass_gguf_on_the_cluster(client, tmp_path):
    "The one pass (merge straight to a Q4_K_M GGUF, and both outputs at once) on the cluster: the bytes of one process"
    recipe = dict(base=BASE, method='dare_ties', weight=[0.5, 0.3, 0.2], density=0.4, seed=7)
    for d in ('cluster', 'local'):
        c = client if d == 'cluster' else None
        merge_files([A, B, C], tmp_path / d / 'm.gguf', type='q4_k_m', client=c, **recipe)
        merge_files([A, B, C], tmp_path / d / 'both', gguf=tmp_path / d / 'both.gguf', type='q8_0', client=c, **recipe)
    for f in ('m.gguf', 'both.gguf'): ft.test_eq((tmp_path / 'cluster' / f).read_bytes(), (tmp_path / 'local' / f).read_bytes())
    ft.test_eq(digests(tmp_path / 'cluster' / 'both'), digests(tmp_path / 'local' / 'both'))

def test_workers_read_fsspec_urls(client, tmp_path):
    "Inputs named by fsspec URLs (here file://) are read by the workers themselves, through fsspec: the bytes of local paths"
    files = [m / 'model.safetensors' for m in (BASE, A, B, C)]
    urls = [f.resolve().as_uri() for f in files]
    recipe = dict(method='dare_ties', weight=[0.5, 0.3, 0.2], density=0.4, seed=3)
    merge_files(urls[1:], tmp_path / 'url.safetensors', base=urls[0], client=client, **recipe)
    merge_files(files[1:], tmp_path / 'path.safetensors', base=files[0], **recipe)
    by_url, by_path = load_model(tmp_path / 'url.safetensors'), load_model(tmp_path / 'path.safetensors')
    ft.test_eq(by_url.names, by_path.names)
    for n in by_url.names: assert np.array_equal(by_url.get_parameter(n), by_path.get_parameter(n)), n   # the same tensors (the metadata names the inputs)
    ft.test_eq(by_url.metadata.custom['merge']['base'], urls[0])
    q_url = quantize_model(urls[1], tmp_path / 'url.json', format='q4_0', client=client)
    q_path = quantize_model(files[1], tmp_path / 'path.json', format='q4_0')
    ft.test_eq(q_url.rows, q_path.rows)
    ft.test_eq(load_quantized(tmp_path / 'url.json')['lm_head.weight'].data.tobytes() == load_quantized(tmp_path / 'path.json')['lm_head.weight'].data.tobytes(), True)
