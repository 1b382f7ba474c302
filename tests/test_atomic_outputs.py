"Multi-file outputs appear whole (issue 16, item 2): a sharded folder or a merge folder is the old set or the new set, never a mix"
import json, os, signal, subprocess, sys, textwrap, time
from pathlib import Path
import numpy as np
import fastcore.test as ft
from conftest import MODELS, one_error_line
from entrenar.errors import IoError
from entrenar.errors import IoError
from entrenar.io import Model, ModelMetadata, SaveConfig, load_model, save_model

BASE, A, B = (MODELS / f'tiny-llama{k}' for k in ('', '-a', '-b'))

WRITER = textwrap.dedent('''
    import sys, time, numpy as np
    from entrenar.io import Model, ModelMetadata, SaveConfig, save_model
    out, rounds = sys.argv[1], int(sys.argv[2])
    for i in range(rounds):   # versions alternate between 3 and 2 shards; every tensor of version v holds v
        v = i % 7 + 1
        m = Model(ModelMetadata(f'v{v}'), {f'layers.{k}.weight': np.full((128, 128), v, np.float32) for k in range(6)})
        save_model(m, out, SaveConfig().with_shard_size('150KB' if v % 2 else '250KB')); time.sleep(0.01)
''')

def test_concurrent_reader_sees_one_version(tmp_path):
    "A second process saves sharded versions into one folder over and over; every load gets one whole version"
    out = tmp_path / 'ckpt'
    save_model(Model(ModelMetadata('v0'), {f'layers.{k}.weight': np.zeros((128, 128), np.float32) for k in range(6)}), out,
               SaveConfig().with_shard_size('150KB'))
    w = subprocess.Popen([sys.executable, '-c', WRITER, str(out), '200'])
    loads, versions, starved = 0, set(), 0
    try:
        while w.poll() is None or loads == 0:
            try: m = load_model(out)
            except IoError as e:   # a folder replaced again and again under a reader: an error, never a mix
                assert 'replaced 5 times while it was read' in str(e), e; starved += 1; continue
            vals = {float(m.get_parameter(n).flat[0]) for n in m.names}
            ft.test_eq(len(m.names), 6)
            ft.test_eq(len(vals), 1)                                  # one version, never shards of two
            ft.test_eq(m.metadata.name, f'v{int(vals.pop())}')        # and the index's metadata is that version's
            versions.add(m.metadata.name); loads += 1
    finally: w.wait(60)
    ft.test_eq(w.returncode, 0)
    assert loads > 20 and len(versions) > 2 and starved < loads, (loads, versions, starved)
    ft.test_eq(sorted(p.name for p in tmp_path.iterdir()), ['ckpt'])   # no staging folder left

def test_kill_mid_save_leaves_the_old_folder(tmp_path):
    "kill -9 while a sharded folder is replaced: the old checkpoint is intact; the next save removes the dead one's folder"
    out = tmp_path / 'ckpt'
    old = Model(ModelMetadata('old'), {f'layers.{k}.weight': np.zeros((512, 512), np.float32) for k in range(4)})
    save_model(old, out, SaveConfig().with_shard_size('1MB'))
    slow = textwrap.dedent('''
        import sys, time, numpy as np
        from entrenar.io import ModelWriter, ModelMetadata, SaveConfig, TensorSpec
        specs = [TensorSpec(f'layers.{k}.weight', np.dtype(np.float32), (512, 512)) for k in range(4)]
        with ModelWriter(sys.argv[1], specs, ModelMetadata('new'), SaveConfig().with_shard_size('2MB')) as w:
            for s in specs[:3]: w.write(s.name, np.ones(s.shape, np.float32))
            print('written', flush=True); time.sleep(60)
    ''')
    p = subprocess.Popen([sys.executable, '-c', slow, str(out)], stdout=subprocess.PIPE, text=True)
    ft.test_eq(p.stdout.readline().strip(), 'written')
    os.kill(p.pid, signal.SIGKILL); p.wait()
    staging = [f.name for f in tmp_path.iterdir() if 'entrenar-tmp' in f.name]
    ft.test_eq(len(staging), 1)                                          # the dead process's folder
    back = load_model(out)
    ft.test_eq((back.metadata.name, float(back.get_parameter('layers.3.weight').max())), ('old', 0.0))
    save_model(old, out, SaveConfig().with_shard_size('1MB'))
    ft.test_eq(sorted(f.name for f in tmp_path.iterdir()), ['ckpt'])   # removed by the next save

def test_merge_checks_config_before_writing(run_cli, tmp_path):
    "A truncated config.json in the base's folder: a clear error naming it, and no output at all"
    base = tmp_path / 'base'; base.mkdir()
    for f in BASE.iterdir(): (base / f.name).write_bytes(f.read_bytes())
    (base / 'config.json').write_text((BASE / 'config.json').read_text()[:40])
    r = run_cli('merge', base, A, B, '--method', 'ties', '--output', tmp_path / 'out')
    ft.test_eq(r.returncode, 1)
    line = one_error_line(r)
    assert 'config.json' in line and 'internal error' not in line, line
    ft.test_eq(sorted(p.name for p in tmp_path.iterdir()), ['base'])

def test_merge_folder_published_whole(run_cli, tmp_path):
    "A merge into an existing folder replaces weights, config, tokenizer and card together; the user's own files stay"
    out = tmp_path / 'out'
    r = run_cli('merge', BASE, A, B, '--method', 'ties', '--shard-size', '400kB', '--output', out, '--quiet')
    ft.test_eq(r.returncode, 0)
    first = sorted(p.name for p in out.iterdir())
    tok = {f.name for f in BASE.iterdir() if f.name.startswith('tokenizer')}
    assert tok and {'config.json', 'README.md', 'mergekit_config.yml', 'model.safetensors.index.json', *tok} <= set(first), first
    (out / 'notes.txt').write_text('mine')
    r = run_cli('merge', BASE, A, '--method', 'slerp', '--output', out, '--quiet')   # one file now, no shards
    ft.test_eq(r.returncode, 0)
    names = sorted(p.name for p in out.iterdir())
    assert 'model.safetensors' in names and 'notes.txt' in names and not any('-of-' in n or n.endswith('index.json') for n in names), names
    ft.test_eq(load_model(out).metadata.custom['merge']['method'], 'slerp')
    assert 'slerp' in (out / 'README.md').read_text()
