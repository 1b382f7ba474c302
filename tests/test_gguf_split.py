"""Split GGUF sets (`STEM-00001-of-0000N.gguf`), written and read by `entrenar` and by llama.cpp's own tools.

Against the real `llama-gguf-split` (built by tools/peers.sh) and llama.cpp's loader (llama-cpp-python): entrenar's split
of the tiny model is byte for byte what `llama-gguf-split --split` makes of entrenar's unsplit file; `--merge` of
entrenar's set is the unsplit file plus the three `split.*` keys llama-gguf-split keeps (with split.count 0); llama.cpp
runs entrenar's set from its first part with the unsplit file's logits; entrenar reads llama-gguf-split's sets as the
unsplit file. Then the CLI on sets, the broken sets, and writes that stop half-way.
"""
import json, os, shutil, signal, struct, subprocess, sys
import numpy as np
import pytest
import fastcore.test as ft
from conftest import MODELS, one_error_line
from entrenar.gguf import GgufFile, gguf_model, split_paths

TINY = MODELS / 'tiny-llama'

@pytest.fixture(scope='session')
def gguf_split(peers):
    "llama.cpp's llama-gguf-split (a failure in CI when it is missing, else a loud skip)"
    if not (peers.bin / 'llama-gguf-split').exists():
        msg = "peer tool llama-gguf-split missing: run `bash tools/peers.sh`"
        if os.environ.get('CI'): pytest.fail(msg)
        pytest.skip(msg)
    return lambda *args: peers.tool('llama-gguf-split', *args)

@pytest.fixture(scope='module')
def unsplit(run_cli, tmp_path_factory):
    "entrenar's unsplit GGUF of the tiny model, by type"
    d, made = tmp_path_factory.mktemp('unsplit'), {}
    def get(kind):
        if kind not in made:
            made[kind] = d / f'tiny-{kind}.gguf'
            r = run_cli('quantize', TINY, '--type', kind, '--output', made[kind], '--quiet')
            assert r.returncode == 0, r.stderr
        return made[kind]
    return get

def _parts(folder, stem):
    return sorted(p.name for p in folder.glob(f'{stem}-*-of-*.gguf'))

# (type, option, value, parts): by tensor count, by size (llama-gguf-split reads M and G only: F32 is 1.8 MB), and a
# set of one part (F16 is 0.9 MB: under 1M, llama-gguf-split still writes tiny-00001-of-00001.gguf with the split keys)
CASES = [('q4_0', '--split-max-tensors', '5', 5), ('q4_k_m', '--split-max-tensors', '8', 3),
         ('f32', '--split-max-size', '1M', 2), ('f16', '--split-max-size', '1M', 1)]

@pytest.mark.parametrize('kind,option,value,n', CASES)
def test_split_is_byte_identical_to_llama_gguf_split(gguf_split, unsplit, run_cli, tmp_path, kind, option, value, n):
    r = run_cli('quantize', TINY, '--type', kind, '--output', tmp_path / 'ours.gguf', option, value)
    assert r.returncode == 0, r.stderr
    gguf_split('--split', option, value, unsplit(kind), tmp_path / 'theirs')
    ours, theirs = _parts(tmp_path, 'ours'), _parts(tmp_path, 'theirs')
    ft.test_eq(len(ours), n)
    ft.test_eq([p.replace('ours', 'theirs') for p in ours], theirs)
    for a, b in zip(ours, theirs): ft.test_eq((tmp_path / a).read_bytes(), (tmp_path / b).read_bytes())
    assert f"wrote {n} files: {tmp_path / ours[0]}" in r.stdout

def test_entrenar_splits_by_size_as_llama_gguf_split_does(unsplit, tmp_path):
    """Small sizes (entrenar's K) cut by llama-gguf-split's rule, each boundary checked against the padded tensor sizes;
    a tensor bigger than the limit (token_embd, 262,144 bytes, against 100K) gets a part of its own, where
    llama-gguf-split would stop if it came first"""
    import gguf
    from entrenar.gguf import split_tensors, to_gguf
    src = GgufFile(unsplit('f32'))
    for size in ('100K', '200K', '300K', 262_176):
        out = tmp_path / f'{size}.gguf'
        to_gguf(unsplit('f32'), out, 'f32', split_max_size=size)
        sizes = [int(src.tensors[t].n_bytes) for t in src.tensors]
        limit = int(size[:-1]) * 1000 if isinstance(size, str) else size
        parts = split_tensors(sizes, limit)
        files = split_paths(out, parts[-1] + 1)
        held = [sum(-(-s // 32) * 32 for s, p in zip(sizes, parts) if p == i) for i in range(len(files))]
        assert all(h <= limit or parts.count(i) == 1 for i, h in enumerate(held)), held
        for i in range(len(files) - 1):   # the next part's first tensor would not have fitted
            first = sizes[parts.index(i + 1)]
            assert held[i] + -(-first // 32) * 32 > limit
        got = [[t.name for t in gguf.GGUFReader(p).tensors] for p in files]
        ft.test_eq([len(g) for g in got], [parts.count(i) for i in range(len(files))])
        ft.test_eq(sum(got, []), list(src.tensors))

def test_merge_of_our_set_is_our_file_plus_the_split_keys(gguf_split, unsplit, run_cli, tmp_path):
    import gguf
    one = unsplit('q4_0')
    assert run_cli('quantize', TINY, '--type', 'q4_0', '--output', tmp_path / 'set.gguf', '--split-max-size', '100K').returncode == 0
    gguf_split('--merge', tmp_path / 'set-00001-of-00004.gguf', tmp_path / 'merged.gguf')
    merged, ours = (tmp_path / 'merged.gguf').read_bytes(), one.read_bytes()
    # llama-gguf-split --merge copies the first part's metadata, split.* keys included (split.count set to 0, which
    # moves it last). Rebuild that from our file: the key count + 3, the keys after the last one, the padding again.
    r = gguf.GGUFReader(one)
    fields = [f for k, f in r.fields.items() if not k.startswith('GGUF.')]
    end_kv = fields[-1].offset + sum(p.nbytes for p in fields[-1].parts)
    last = r.tensors[-1].field
    end_ti = last.offset + sum(p.nbytes for p in last.parts)
    key = lambda k, vtype, fmt, v: struct.pack('<Q', len(k)) + k.encode() + struct.pack('<I', vtype) + struct.pack(fmt, v)
    keys = key('split.no', 2, '<H', 0) + key('split.tensors.count', 5, '<i', len(r.tensors)) + key('split.count', 2, '<H', 0)
    n_kv = struct.unpack_from('<Q', ours, 16)[0]
    head = ours[:16] + struct.pack('<Q', n_kv + 3) + ours[24:end_kv] + keys + ours[end_kv:end_ti]
    head += bytes(-len(head) % 32)
    ft.test_eq(merged, head + ours[r.data_offset:])
    # and entrenar reads the merged file (split.count 0) as one file, the same model
    m = GgufFile(tmp_path / 'merged.gguf')
    ft.test_eq((m.parts, list(m.tensors)), ([tmp_path / 'merged.gguf'], list(GgufFile(one).tensors)))

def test_llama_cpp_runs_our_set_from_its_first_part(peers, unsplit, run_cli, tmp_path):
    assert run_cli('quantize', TINY, '--type', 'q8_0', '--output', tmp_path / 'set.gguf', '--split-max-tensors', '6').returncode == 0
    ft.test_eq(len(_parts(tmp_path, 'set')), 4)
    whole = peers.run('llama_run.py', unsplit('q8_0'), 'Hello world', 8)
    split = peers.run('llama_run.py', tmp_path / 'set-00001-of-00004.gguf', 'Hello world', 8)
    assert 'error' not in split, split
    ft.test_eq((split['prompt_tokens'], split['generated']), (whole['prompt_tokens'], whole['generated']))
    ft.test_eq(split['logits'], whole['logits'])

def test_llama_cpp_refuses_a_set_opened_at_a_later_part_and_so_does_entrenar(peers, run_cli, tmp_path):
    assert run_cli('quantize', TINY, '--type', 'q8_0', '--output', tmp_path / 'set.gguf', '--split-max-tensors', '11').returncode == 0
    r = subprocess.run([str(peers.python), str(peers.scripts / 'llama_run.py'), str(tmp_path / 'set-00002-of-00002.gguf'), 'Hello', '1'],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and 'model must be loaded with the first split' in r.stderr, r.stderr
    line = one_error_line(run_cli('info', tmp_path / 'set-00002-of-00002.gguf'))
    assert 'part 2 of a split GGUF of 2 parts: open its first part, set-00001-of-00002.gguf' in line

@pytest.mark.parametrize('kind,option,value', [('q4_k_m', '--split-max-tensors', '4'), ('f32', '--split-max-size', '1M')])
def test_we_read_llama_gguf_splits_sets_as_the_unsplit_file(gguf_split, unsplit, tmp_path, kind, option, value):
    gguf_split('--split', option, value, unsplit(kind), tmp_path / 'theirs')
    s, one = GgufFile(tmp_path / _parts(tmp_path, 'theirs')[0]), GgufFile(unsplit(kind))
    ft.test_eq(len(s.parts), len(_parts(tmp_path, 'theirs')))
    ft.test_eq(list(s.tensors), list(one.tensors))
    for n in one.tensors:
        ft.test_eq((s.type_of(n), s.shape(n)), (one.type_of(n), one.shape(n)))
        ft.test_eq(bytes(np.asarray(s.tensors[n].data)), bytes(np.asarray(one.tensors[n].data)))
        ft.test_eq(s.array(n), one.array(n))
    a, b = gguf_model(s.path), gguf_model(one.path)
    ft.test_eq(a.names, b.names)
    for n in a.names: ft.test_eq(a[n], b[n])
    ft.test_eq({k: s.get(k) for k in one.keys}, {k: one.get(k) for k in one.keys})

def test_cli_reads_a_set_as_one_model(gguf_split, unsplit, run_cli, tmp_path):
    gguf_split('--split', '--split-max-tensors', '7', unsplit('q4_0'), tmp_path / 'big')
    first = tmp_path / 'big-00001-of-00003.gguf'
    info, one = json.loads(run_cli('info', first, '--json').stdout), json.loads(run_cli('info', unsplit('q4_0'), '--json').stdout)
    ft.test_eq(info['files'], [str(tmp_path / f'big-0000{i}-of-00003.gguf') for i in (1, 2, 3)])
    ft.test_eq({k: v for k, v in info.items() if k not in ('files', 'path')}, {k: v for k, v in one.items() if k != 'path'})
    text = run_cli('info', first, '--tensors').stdout
    assert 'files:        3 (a split set)' in text and 'output.weight' in text
    # requantized as one file: the same bytes as requantizing the unsplit file (split.* keys are not copied)
    for src, out in ((first, 'small.gguf'), (unsplit('q4_0'), 'small-ref.gguf')):
        r = run_cli('quantize', src, '--type', 'q8_0', '--output', tmp_path / out, '--quiet')
        assert r.returncode == 0, r.stderr
    ft.test_eq((tmp_path / 'small.gguf').read_bytes(), (tmp_path / 'small-ref.gguf').read_bytes())
    # requantized from a set into a set
    assert run_cli('quantize', first, '--type', 'q8_0', '--output', tmp_path / 'again.gguf', '--split-max-size', '150K', '--quiet').returncode == 0
    again = GgufFile(tmp_path / _parts(tmp_path, 'again')[0])
    ft.test_eq(list(again.tensors), list(GgufFile(tmp_path / 'small.gguf').tensors))
    # convert and dequantize from the set: the tensors of the unsplit file
    for cmd, a, b in (('convert', 'hf-set', 'hf-one'), ('convert', 's.safetensors', 'o.safetensors'), ('dequantize', 'd.safetensors', 'e.safetensors')):
        out = ['--output'] if cmd == 'dequantize' else []
        assert run_cli(cmd, first, *out, tmp_path / a, '--quiet').returncode == 0
        assert run_cli(cmd, unsplit('q4_0'), *out, tmp_path / b, '--quiet').returncode == 0
        from entrenar.io import load_model
        x, y = load_model(tmp_path / a), load_model(tmp_path / b)
        ft.test_eq(x.names, y.names)
        for n in x.names: ft.test_eq(x[n], y[n])

def test_output_names(run_cli, tmp_path):
    "out.gguf and out-00001-of-00009.gguf both give out-0000i-of-0000n.gguf, the real count"
    for name in ('out.gguf', 'out-00001-of-00009.gguf'):
        d = tmp_path / name.replace('.', '_'); d.mkdir()
        r = run_cli('convert', TINY, d / name, '--type', 'q8_0', '--split-max-tensors', '10', '--quiet')
        assert r.returncode == 0, r.stderr
        ft.test_eq(sorted(p.name for p in d.iterdir()), [f'out-0000{i}-of-00003.gguf' for i in (1, 2, 3)])
    ft.test_eq(split_paths('dir/stem', 2)[1].as_posix(), 'dir/stem-00002-of-00002.gguf')   # llama-gguf-split's way: a stem

def test_bad_split_options_are_one_error_line(run_cli, tmp_path):
    for args, msg in ((('--split-max-size', '1.5G'), "cannot read the split size '1.5G'"),
                      (('--split-max-size', '2GB'), "cannot read the split size '2GB'"),
                      (('--split-max-tensors', '0'), 'whole number from 1')):
        assert msg in one_error_line(run_cli('quantize', TINY, '--type', 'q4_0', '--output', tmp_path / 'a.gguf', *args))
    r = run_cli('quantize', TINY, '--type', 'q4_0', '--output', tmp_path / 'a.gguf', '--split-max-size', '1M', '--split-max-tensors', '3')
    assert r.returncode == 2 and 'not allowed with argument' in r.stderr
    line = one_error_line(run_cli('quantize', TINY, '--format', 'q4_0', '--output', tmp_path / 'a.safetensors', '--split-max-size', '1M'))
    assert 'split a llama.cpp GGUF: name a .gguf output' in line
    line = one_error_line(run_cli('quantize', TINY, '--type', 'q4_0', '--tensors-only', '--output', tmp_path / 'a.gguf', '--split-max-size', '1M'))
    assert 'drop --tensors-only' in line
    assert '2,000,000,000 bytes' in ' '.join(run_cli('quantize', '--help').stdout.split())
    ft.test_eq(sorted(tmp_path.iterdir()), [])

def test_output_that_would_overwrite_a_part_of_the_input(run_cli, tmp_path):
    assert run_cli('quantize', TINY, '--type', 'f16', '--output', tmp_path / 'm.gguf', '--split-max-tensors', '11', '--quiet').returncode == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    line = one_error_line(run_cli('quantize', tmp_path / 'm-00001-of-00002.gguf', '--type', 'q4_0', '--output', tmp_path / 'm.gguf',
                                  '--split-max-tensors', '11'))
    assert 'is also an input' in line
    ft.test_eq({p.name: p.read_bytes() for p in tmp_path.iterdir()}, before)

def test_broken_sets_name_the_file(run_cli, tmp_path):
    assert run_cli('quantize', TINY, '--type', 'q8_0', '--output', tmp_path / 'a.gguf', '--split-max-tensors', '8', '--quiet').returncode == 0
    assert run_cli('quantize', TINY, '--type', 'q8_0', '--output', tmp_path / 'b.gguf', '--split-max-tensors', '6', '--quiet').returncode == 0
    a = [tmp_path / f'a-0000{i}-of-00003.gguf' for i in (1, 2, 3)]
    keep = a[2].read_bytes()
    a[2].unlink()
    line = one_error_line(run_cli('info', a[0]))
    assert f"{a[2]}: part 3 of 3 of the split GGUF a-00001-of-00003.gguf is missing" in line
    shutil.copy(tmp_path / 'b-00003-of-00004.gguf', a[2])   # a part of another set
    assert f"{a[2]}: belongs to a split GGUF of 4 parts, not of 3" in one_error_line(run_cli('info', a[0]))
    shutil.copy(a[1], a[2])                                 # the wrong split.no
    assert f"{a[2]}: says it is part 2, but its name makes it part 3 of 3" in one_error_line(run_cli('convert', a[0], tmp_path / 'x.safetensors'))
    a[2].write_bytes(keep[:len(keep) // 2])                  # cut short: io's bounded checks, for every part
    line = one_error_line(run_cli('quantize', a[0], '--type', 'q4_0', '--output', tmp_path / 'y.gguf'))
    assert str(a[2]) in line and 'run past the end of the file' in line
    a[2].write_bytes(keep)
    ft.test_eq(len(GgufFile(a[0]).tensors), 21)
    assert not (tmp_path / 'x.safetensors').exists() and not (tmp_path / 'y.gguf').exists()

_STOP = """
import os, signal, sys
from pathlib import Path
from entrenar.gguf import to_gguf
import entrenar.gguf as g
real, seen = g.encode_gguf_tensor, []
def encode(*a, **k):
    seen.append(1)
    if len(seen) == 10: os.kill(os.getpid(), getattr(signal, sys.argv[3]))
    return real(*a, **k)
g.encode_gguf_tensor = encode
to_gguf(sys.argv[1], Path(sys.argv[2]) / 'out.gguf', 'q8_0', split_max_tensors=4)
"""

def test_ctrl_c_half_way_leaves_nothing(tmp_path):
    "A real SIGINT at the tenth tensor (two parts complete, three to come): no part, no temporary file"
    out = tmp_path / 'out'
    r = subprocess.run([sys.executable, '-c', _STOP, TINY, out, 'SIGINT'], capture_output=True, text=True, timeout=300)
    assert r.returncode != 0 and 'KeyboardInterrupt' in r.stderr, r.stderr
    ft.test_eq(list(out.iterdir()), [])

def test_killed_half_way_leaves_only_temporaries_that_the_next_write_removes(tmp_path):
    out = tmp_path / 'out'
    r = subprocess.run([sys.executable, '-c', _STOP, TINY, out, 'SIGKILL'], capture_output=True, text=True, timeout=300)
    ft.test_eq(r.returncode, -signal.SIGKILL)
    left = sorted(p.name for p in out.iterdir())
    ft.test_eq(len(left), 6)
    assert all(n.startswith('.out-0000') and '.entrenar-tmp-' in n for n in left), left
    from entrenar.gguf import to_gguf
    to_gguf(TINY, out / 'out.gguf', 'q8_0', split_max_tensors=4)
    ft.test_eq(sorted(p.name for p in out.iterdir()), [f'out-0000{i}-of-00006.gguf' for i in range(1, 7)])

def test_tensors_encoded_in_other_processes_make_the_same_set(tmp_path):
    "encode_gguf_tensor runs in worker processes (pickled there and back), GgufSink writes here: the bytes write_gguf writes"
    import json as _json
    from concurrent.futures import ProcessPoolExecutor
    from entrenar.gguf import GgufSink, encode_gguf_tensor, plan_gguf, write_gguf
    from entrenar.io import load_model
    m, config = load_model(TINY, lazy=True), _json.loads((TINY / 'config.json').read_text())
    plan = plan_gguf(m, config, 'q4_k_m', TINY)
    write_gguf(plan, m.get_parameter, tmp_path / 'a' / 'm.gguf', split_max_size='100K')
    with ProcessPoolExecutor(2) as pool, GgufSink(plan, tmp_path / 'b' / 'm.gguf', split_max_size='100K') as sink:
        jobs = [pool.submit(encode_gguf_tensor, e, m.get_parameter(e[0])) for e in plan.tensors]
        for e, job in zip(plan.tensors, jobs): sink.write(e[1], job.result()[0])
    a, b = sorted((tmp_path / 'a').iterdir()), sorted((tmp_path / 'b').iterdir())
    ft.test_eq([p.name for p in a], [p.name for p in b])
    for x, y in zip(a, b): ft.test_eq(x.read_bytes(), y.read_bytes())
