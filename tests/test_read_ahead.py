"""Read-ahead (issue 17): `prefetch_pages` really brings a tensor's pages into the page cache (seen with mincore over
a mapping of the file, after evicting it with posix_fadvise DONTNEED), `run_plan` asks for the next tasks' inputs
while a task runs, and merges, quantizations and GGUF files are byte-identical with read-ahead on and off.

The page-cache tests skip where the file system keeps a file's pages after DONTNEED (tmpfs, some network file
systems): there nothing can be evicted, so nothing can be seen coming back."""
import ctypes, dataclasses, hashlib, mmap, os, shutil, time
from pathlib import Path
import numpy as np
import pytest
import fastcore.test as ft
from entrenar import runner
from entrenar.io import Model, ModelMetadata, ModelWriter, TensorSpec, load_model, prefetch_pages, save_model
from entrenar.merge import Recipe, merge_files, merge_plan, merge_task, plan_merge
from entrenar.quantize import quantize_model
from entrenar.gguf import to_gguf
from entrenar.runner import DictSink, Threads, run_plan

MODELS = Path(__file__).resolve().parent.parent / 'models'
PAGE = mmap.PAGESIZE

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]

def resident(path) -> np.ndarray:
    "One flag per page of `path`: in the page cache (mincore over a fresh shared mapping, which faults nothing in)"
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        addr = _libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        assert addr not in (None, ctypes.c_void_p(-1).value), ctypes.get_errno()
        try:
            vec = (ctypes.c_ubyte * -(-size // PAGE))()
            assert _libc.mincore(ctypes.c_void_p(addr), size, vec) == 0, os.strerror(ctypes.get_errno())
            return np.frombuffer(vec, np.uint8) & 1
        finally: _libc.munmap(ctypes.c_void_p(addr), size)
    finally: os.close(fd)

def evict(*paths):
    "Write back and drop every page of `paths` from the page cache; skip the test where the file system keeps them"
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try: os.fsync(fd); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally: os.close(fd)
        if resident(p).mean() > 0.1: pytest.skip(f"this file system keeps pages after POSIX_FADV_DONTNEED ({p})")

def pages(path, name) -> slice:
    "The pages of tensor `name` in the SafeTensors file `path`"
    from entrenar.io import SafeTensorsReader
    r = SafeTensorsReader(path)
    _, _, _, begin, end = r.entries[name]
    return slice((r.data_start + begin) // PAGE, -(-(r.data_start + end) // PAGE))

def wait_resident(path, sl, timeout=10.0) -> np.ndarray:
    "Poll until every page in `sl` is resident (or `timeout` seconds pass); the flags"
    deadline = time.monotonic() + timeout
    while True:
        r = resident(path)
        if r[sl].all() or time.monotonic() > deadline: return r
        time.sleep(0.02)

def make_models(folder, names=('base', 'a', 'b'), n=6, shape=(256, 1024)):
    "A base and fine-tunes of it, float32, tensors of 1 MB (larger than the kernel's own read-around)"
    specs = [TensorSpec(f'layers.{i}.weight', np.dtype(np.float32), shape) for i in range(n)] + [TensorSpec('norm', np.dtype(np.float32), (1024,))]
    rng = np.random.default_rng(0)
    base = {s.name: rng.standard_normal(s.shape, dtype=np.float32) for s in specs}
    for i, nm in enumerate(names):
        save_model(Model(ModelMetadata(nm, 'bench'), {k: v + np.float32(0.01 * i) * rng.standard_normal(v.shape, dtype=np.float32) if i else v
                                                       for k, v in base.items()}), folder / f'{nm}.safetensors')
    return [folder / f'{nm}.safetensors' for nm in names]

def digest(p): return hashlib.sha256(Path(p).read_bytes()).hexdigest()

@pytest.fixture
def read_ahead():
    "Set `runner.READ_AHEAD` for one test"
    old = runner.READ_AHEAD
    def set_(n): runner.READ_AHEAD = n
    yield set_
    runner.READ_AHEAD = old

def test_prefetch_brings_a_tensors_pages_in(tmp_path):
    "After eviction few pages are resident; prefetch_pages of one tensor makes its pages resident and leaves the rest out"
    p = tmp_path / 'm.safetensors'
    save_model(Model(None, {f't{i}': np.full((512, 1024), i, np.float32) for i in range(8)}), p)
    evict(p)
    m = load_model(p, lazy=True)
    ft.test_eq(prefetch_pages(m, 't5'), 512 * 1024 * 4)
    sl = pages(p, 't5')
    r = wait_resident(p, sl)
    assert r[sl].all(), f"{r[sl].mean():.0%} of the tensor's pages came in"
    others = np.ones(len(r), bool); others[sl] = False
    assert r[others].mean() < 0.1, f"{r[others].mean():.0%} of the other tensors' pages are resident"
    ft.test_eq(m.get_parameter('t5').min(), 5.0)   # and the bytes read are the file's

def test_prefetch_leaves_other_models_alone(tmp_path):
    "A model in memory, a model read by URL (fsspec) and an unknown name: nothing asked, 0 bytes"
    p = tmp_path / 'm.safetensors'
    save_model(Model(None, {'w': np.ones((64, 64), np.float32)}), p)
    ft.test_eq(prefetch_pages(load_model(p), 'w'), 0)
    ft.test_eq(prefetch_pages(load_model(p.as_uri(), lazy=True), 'w'), 0)
    ft.test_eq(prefetch_pages(load_model(p, lazy=True), 'nope'), 0)
    ft.test_eq(prefetch_pages({'w': 1}, 'w'), 0)

def _plan(paths):
    recipe = Recipe.from_method('ties', ['a', 'b'], 'base', weight=[0.6, 0.4], density=0.5)
    models = {'base': load_model(paths[0], lazy=True), 'a': load_model(paths[1], lazy=True), 'b': load_model(paths[2], lazy=True)}
    return merge_plan(plan_merge(recipe, models), 'ties', models)

def test_merge_plan_names_its_reads(tmp_path):
    plan = _plan(make_models(tmp_path))
    ft.test_eq(plan.reads(plan.tasks[0]), [('a', 'layers.0.weight'), ('b', 'layers.0.weight'), ('base', 'layers.0.weight')])

@pytest.mark.parametrize('limit', [64 << 20, 0])
def test_run_plan_reads_the_next_tasks_ahead(tmp_path, limit):
    """While the first task of a merge runs, the inputs of the next ones come into the page cache with read-ahead on
    (and stay out with it off: nothing else reads them)"""
    paths = make_models(tmp_path)
    plan = _plan(paths)
    seen = {}
    def first_waits(sources, task, *args):
        if task is plan.tasks[0]:   # look at the next task's inputs, in every model, before reading anything
            sl = pages(paths[0], plan.tasks[1].name)
            seen['next'] = [wait_resident(p, sl, timeout=10 if limit else 0.5)[sl].mean() for p in paths]
        return merge_task(sources, task, *args)
    evict(*paths)
    out = DictSink()
    run_plan(dataclasses.replace(plan, work=first_waits), out, Threads(1), read_ahead=limit)
    if limit: ft.test_eq(seen['next'], [1.0, 1.0, 1.0])
    else: assert max(seen['next']) < 0.5, seen
    ft.test_eq(len(out), len(plan.tasks))

def test_merge_same_bytes_with_and_without_read_ahead(tmp_path, read_ahead):
    paths = make_models(tmp_path)
    outs = {}
    for limit, workers in ((0, 1), (runner.READ_AHEAD, 1), (3 << 20, 2)):
        read_ahead(limit); evict(*paths)
        out = tmp_path / f'{limit}-{workers}' / 'merged.safetensors'   # one name: the file's metadata holds it
        merge_files(paths[1:], out, base=paths[0], method='ties', weight=[0.6, 0.4], density=0.5, workers=workers)
        outs[limit, workers] = digest(out)
    ft.test_eq(len(set(outs.values())), 1)

def test_quantize_same_bytes_with_and_without_read_ahead(tmp_path, read_ahead):
    p = make_models(tmp_path, names=('m',))[0]
    outs = []
    for limit in (0, 2 << 20):
        read_ahead(limit); evict(p)
        out = tmp_path / f'{limit}' / 'q.gguf'
        quantize_model(p, out, format='q8_0')
        outs.append(digest(out))
    ft.test_eq(outs[0], outs[1])

def test_llama_gguf_same_bytes_with_and_without_read_ahead(tmp_path, read_ahead):
    "A Llama checkpoint to a Q4_K_M llama.cpp GGUF (the GGUF writer's plan)"
    src = tmp_path / 'tiny'; shutil.copytree(MODELS / 'tiny-llama-a', src)
    outs = []
    for limit in (0, 1 << 20):
        read_ahead(limit); evict(src / 'model.safetensors')
        out = tmp_path / f'{limit}' / 'q4km.gguf'; out.parent.mkdir()
        to_gguf(src, out, 'q4_k_m')
        outs.append(digest(out))
    ft.test_eq(outs[0], outs[1])

def test_gguf_prefetch_brings_a_tensors_pages_in(tmp_path):
    "A GGUF being requantized reads ahead too: GgufFile.prefetch (madvise WILLNEED on the reader's mapping) fills the cache"
    from entrenar.gguf import GgufFile
    src = to_gguf(MODELS / 'tiny-llama-a', tmp_path / 'f32.gguf', 'f32').path
    evict(src)
    f = GgufFile(src)
    name = max(f.tensors, key=lambda n: np.asarray(f.tensors[n].data).nbytes)
    data = np.asarray(f.tensors[name].data)
    ft.test_eq(prefetch_pages(f, name), data.nbytes)   # through the runner's entry point
    start = int(f.tensors[name].data_offset)   # the tensor's offset in the file
    sl = slice(start // PAGE, -(-(start + data.nbytes) // PAGE))
    r = wait_resident(src, sl)
    assert r[sl].all(), f"{r[sl].mean():.0%} of the tensor's pages came in"

def test_gguf_requantized_same_bytes_with_and_without_read_ahead(tmp_path, read_ahead):
    "An F32 GGUF requantized to Q4_K_M (entrenar quantize x.gguf --type q4_k_m): the same file either way"
    src = to_gguf(MODELS / 'tiny-llama-b', tmp_path / 'f32.gguf', 'f32').path
    outs = []
    for limit in (0, 1 << 20):
        read_ahead(limit); evict(src)
        out = tmp_path / f'{limit}' / 'q4km.gguf'; out.parent.mkdir()
        to_gguf(src, out, 'q4_k_m')
        outs.append(digest(out))
    ft.test_eq(outs[0], outs[1])
