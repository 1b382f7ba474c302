"""`entrenar fetch` against a local Hub server that lies in its headers (issue 16, item 3: Hub cache escape).

huggingface_hub builds cache paths from what the server says: `blobs/<ETag>` (or `<X-Linked-Etag>` for LFS files),
`snapshots/<X-Repo-Commit>/…`, `.no_exist/<X-Repo-Commit>/…`, `locks/…/<ETag>.lock`. A server answering
`ETag: "../../../../escaped"` used to put the model's bytes outside the cache. Each case here runs the real command
against `LocalHub` from test_hub_server.py (127.0.0.1 only, HF_ENDPOINT pointing at it), with one header or listing
entry made hostile, and checks: exit 1, one `error:` line naming the server's value, and no file created or changed
anywhere around the cache (the whole temporary folder is compared before and after, cache and HF_HOME excepted).
"""
import json, os
from pathlib import Path

import pytest
import fastcore.test as ft

from conftest import one_error_line
from test_hub_server import LocalHub, fetch_cli, git_sha1, isolated_env, model_files, sharded_files, sha256  # noqa: F401 (fixture)
from entrenar.errors import FetchError
from entrenar.hf_pipeline import FetchOptions, HfModelFetcher, HubError, InvalidNameError, INDEX_NAME


class LyingHub(LocalHub):
    "A LocalHub whose hub answers carry `lies` ({header: value}) on the requests whose path contains `where`"
    def __init__(self):
        self.lies, self.where = {}, ""
        super().__init__()

    def _handler(self, server):
        base, hub = super()._handler(server), self

        class Lying(base):
            def _send(self, status, headers=None, data=b"", body=True):
                if server == "hub" and hub.where in self.path: headers = {**(headers or {}), **hub.lies}
                super()._send(status, headers, data, body)
        return Lying


@pytest.fixture
def hub():
    h = LyingHub()
    yield h
    h.close()


def tree(root: Path, skip=()):
    "Every path under `root` (links not followed) with its size and mtime, leaving out the folders in `skip`"
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if Path(dirpath, d) not in skip]
        for n in dirnames + filenames:
            st = os.lstat(p := Path(dirpath, n))
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.fixture
def sandbox(tmp_path):
    "A cache three folders deep in tmp_path, so that '../' lies land in folders the test watches"
    cache = tmp_path/"a"/"b"/"c"/"cache"
    cache.mkdir(parents=True)
    (tmp_path/"a"/"keep.txt").write_text("untouched")
    return cache


def refused(hub, tmp_path, cache, args, value):
    "Run `entrenar fetch ARGS`: it must fail with one error line naming `value`, and write nothing outside `cache`"
    skip = {cache, tmp_path/"hf_home"}
    before = tree(tmp_path, skip)
    r = fetch_cli(["fetch", *args, "--cache-dir", str(cache)], hub, tmp_path)
    err = one_error_line(r)
    assert value in err, (value, err)
    ft.test_eq(tree(tmp_path, skip), before)
    ft.test_eq([p for p in tmp_path.rglob("*escaped*")], [])
    ft.test_eq(list(cache.rglob("*escaped*")), [])
    return err


def test_honest_server_still_works(hub, tmp_path, sandbox):
    files = model_files()
    commit = hub.add("org/tiny", files)
    r = fetch_cli(["fetch", "org/tiny", "--cache-dir", str(sandbox)], hub, tmp_path)
    ft.test_eq(r.returncode, 0)
    path = Path(r.stdout.strip())
    ft.test_eq(path, sandbox/"models--org--tiny"/"snapshots"/commit)
    for name, data in files.items(): ft.test_eq(sha256((path/name).read_bytes()), sha256(data))
    ft.test_eq(sorted(os.listdir(sandbox/"models--org--tiny"/"blobs")), sorted(sha256(d) if n.endswith(".safetensors") else git_sha1(d)
                                                                          for n, d in files.items()))


@pytest.mark.parametrize("header", ["ETag", "X-Linked-Etag"])
def test_etag_dotdot(hub, tmp_path, sandbox, header):
    hub.add("org/tiny", model_files())
    hub.lies = {header: '"../../../../escaped"'}
    refused(hub, tmp_path, sandbox, ["org/tiny"], "../../../../escaped")


def test_etag_dotdot_small_file(hub, tmp_path, sandbox):
    "A file served straight from the hub (no LFS redirect): huggingface_hub uses the ETag itself as the blob name"
    hub.add("org/tiny", model_files())
    hub.lies, hub.where = {"ETag": '"../../../../escaped"'}, "config.json"
    refused(hub, tmp_path, sandbox, ["org/tiny", "--file", "config.json"], "../../../../escaped")


def test_etag_absolute(hub, tmp_path, sandbox):
    hub.add("org/tiny", model_files())
    target = tmp_path/"abs-escaped"
    hub.lies, hub.where = {"ETag": f'"{target}"'}, "config.json"
    refused(hub, tmp_path, sandbox, ["org/tiny", "--file", "config.json"], str(target))
    ft.test_eq(target.exists(), False)


def test_etag_nul(hub, tmp_path, sandbox):
    "A NUL in a header: the HTTP client (h11) refuses the answer before huggingface_hub sees it; the error names it"
    hub.add("org/tiny", model_files())
    hub.lies, hub.where = {"ETag": '"abc\x00escaped"'}, "config.json"
    err = refused(hub, tmp_path, sandbox, ["org/tiny", "--file", "config.json"], r'ETag: "abc\x00escaped"')
    ft.test_eq("not valid HTTP" in err, True)
    ft.test_eq(list((sandbox/"models--org--tiny").rglob("*")) if (sandbox/"models--org--tiny").exists() else [], [])


def test_etag_backslash_dot_empty(hub, tmp_path, sandbox):
    hub.add("org/tiny", model_files())
    for lie in ('"..\\..\\escaped"', '".."', 'W/".."', '""', '"C:escaped"'):
        hub.lies, hub.where = {"ETag": lie}, "config.json"
        refused(hub, tmp_path, sandbox, ["org/tiny", "--file", "config.json"], "org/tiny")


def test_commit_dotdot(hub, tmp_path, sandbox):
    hub.add("org/tiny", model_files())
    hub.lies = {"X-Repo-Commit": "../../../../escaped"}
    refused(hub, tmp_path, sandbox, ["org/tiny"], "../../../../escaped")


def test_commit_dotdot_on_not_found(hub, tmp_path, sandbox):
    "huggingface_hub records a missing file in .no_exist/<X-Repo-Commit>/<file>, from the 404 answer's header"
    hub.add("org/sharded", sharded_files())   # no model.safetensors: the first answer is a 404
    hub.lies, hub.where = {"X-Repo-Commit": "../../../../escaped"}, "model.safetensors"
    refused(hub, tmp_path, sandbox, ["org/sharded"], "../../../../escaped")


def test_sibling_dotdot(hub, tmp_path, sandbox):
    """A shard name with '..', in the index's weight_map and in the repository listing: refused before any write.
    The fetcher never reads the listing (it asks for model.safetensors, else the index, and fetches the shards the
    index names), so the weight_map is where the server's file names come in; they go through check_filename."""
    files = sharded_files()
    index = json.loads(files[INDEX_NAME])
    index["weight_map"]["b"] = "../../../../escaped.safetensors"
    files[INDEX_NAME] = json.dumps(index).encode()
    files["../../../../escaped.safetensors"] = files.pop("model-00002-of-00002.safetensors")   # listed as a sibling too
    hub.add("org/evil", files)
    refused(hub, tmp_path, sandbox, ["org/evil"], "../../../../escaped.safetensors")


def test_sibling_absolute_and_nul(hub, tmp_path, sandbox):
    for bad in ["/tmp/escaped.safetensors", "model-00002\x00escaped.safetensors"]:
        files = sharded_files()
        index = json.loads(files[INDEX_NAME])
        index["weight_map"]["b"] = bad
        files[INDEX_NAME] = json.dumps(index).encode()
        hub.add("org/evil", files)
        refused(hub, tmp_path, sandbox, ["org/evil"], "escaped.safetensors")


def test_library_raises_hub_error(hub, tmp_path, sandbox):
    "The same refusal through the library: a HubError (a FetchError) naming the value and what it came from"
    hub.add("org/tiny", model_files())
    hub.lies = {"X-Linked-Etag": '"../../../../escaped"'}
    f = HfModelFetcher(cache_dir=sandbox, endpoint=hub.url)
    try: f.download_model("org/tiny"); raise AssertionError("no error")
    except InvalidNameError as e:
        ft.test_eq(isinstance(e, (HubError, FetchError)), True)
        ft.test_eq((e.repo_id, e.revision, e.filename, e.is_retryable), ("org/tiny", "main", "model.safetensors", False))
        ft.test_eq(str(e), "org/tiny@main: 'model.safetensors': the Hub answered X-Linked-Etag '\"../../../../escaped\"', "
                           "which is not a plain file name and would put files outside the cache; refused")
    ft.test_eq(list(tmp_path.rglob("*escaped*")), [])
    hub.lies = {}
    ft.test_eq(f.download_model("org/tiny").architecture, "LlamaForCausalLM")  # the honest answer goes through


def test_planted_link_is_neither_read_nor_evicted(hub, tmp_path, sandbox):
    "A snapshot link in the cache that leads outside it: refused, online or offline, and the file it names is not deleted"
    files = model_files()
    hub.add("org/tiny", files)
    f = HfModelFetcher(cache_dir=sandbox, endpoint=hub.url)
    art = f.download_model("org/tiny")
    victim = tmp_path/"a"/"keep.txt"
    (art.path/"config.json").unlink()
    os.symlink(os.path.relpath(victim, art.path), art.path/"config.json")
    for opts in [FetchOptions(local_files_only=True, verify_sha256={"config.json": "0" * 64}), FetchOptions()]:
        with ft.ExceptionExpected(InvalidNameError, regex="keep.txt' is outside the cache folder"): f.download_model("org/tiny", opts)
    ft.test_eq(victim.read_text(), "untouched")
