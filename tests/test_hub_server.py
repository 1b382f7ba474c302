"""`entrenar.hf_pipeline` against a local server that answers like the Hugging Face Hub.

The real `huggingface_hub` client talks HTTP to 127.0.0.1 only: a "hub" server answers `/{repo}/resolve/{rev}/{file}`
(and `/api/models/{repo}/revision|tree/{rev}`, which `hf download` and `snapshot_download` use) the way huggingface.co does (X-Repo-Commit, ETag, X-Linked-Etag/X-Linked-Size and a redirect for LFS files, X-Error-Code
on errors), and a second "cdn" server, on another origin, serves LFS blobs as the Hub's CDN does. Nothing reaches the
internet: every fetcher gets the local endpoint, the CLI subprocess gets HF_ENDPOINT, and HF_HOME points into tmp_path.
"""
import hashlib, json, os, re, socket, subprocess, sys, threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote, unquote

import huggingface_hub.constants
import numpy as np
import pytest
import fastcore.test as ft
from safetensors.numpy import save as st_save

from entrenar.errors import FetchError
from entrenar.hf_pipeline import (HfModelFetcher, FetchOptions, ChecksumMismatchError, FileNotFoundOnHubError,
                                  GatedRepoError, HubUnavailableError, RepoNotFoundError, RevisionNotFoundError,
                                  UnauthorizedError, UnsafeFileError, OfflineError, INDEX_NAME)

TOKEN = "hf_local_test_token_0123456789"
ROOT = Path(__file__).resolve().parents[1]


def git_sha1(data: bytes) -> str: return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
def sha256(data: bytes) -> str: return hashlib.sha256(data).hexdigest()
def is_lfs(filename: str) -> bool: return filename.endswith(".safetensors")  # the Hub stores these with Git LFS
def lfs_pointer(digest: str, size: int) -> bytes:
    return f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\nsize {size}\n".encode()


@dataclass
class Repo:
    refs: dict = field(default_factory=dict)     # branch/tag -> commit
    commits: dict = field(default_factory=dict)  # commit -> {filename: bytes}
    private: bool = False
    gated: bool = False


class LocalHub:
    "Two HTTP servers on 127.0.0.1 (hub + cdn) and the repositories they serve"
    def __init__(self):
        self.repos, self.blobs, self.corrupt, self.log, self.digests = {}, {}, set(), [], {}
        self.fail_status = None  # e.g. 503: every hub request answers that
        self.lock = threading.Lock()
        self.hub = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("hub"))
        self.cdn = ThreadingHTTPServer(("127.0.0.1", 0), self._handler("cdn"))
        self.url = f"http://127.0.0.1:{self.hub.server_address[1]}"
        self.cdn_url = f"http://127.0.0.1:{self.cdn.server_address[1]}"
        for s in (self.hub, self.cdn): threading.Thread(target=s.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def close(self):
        for s in (self.hub, self.cdn): s.shutdown(); s.server_close()

    def add(self, repo_id, files: dict, ref="main", private=False, gated=False) -> str:
        "Publish `files` as a new commit of `repo_id` on branch `ref`; returns the commit hash"
        repo = self.repos.setdefault(repo_id, Repo(private=private, gated=gated))
        commit = hashlib.sha1(repr((repo_id, ref, len(repo.commits), sorted(files.items()))).encode()).hexdigest()
        repo.commits[commit] = dict(files)
        repo.refs[ref] = commit
        for data in files.values():
            self.digests[id(data)] = digest = sha256(data)   # hashed once, as the Hub stores it, not per request
            self.blobs[digest] = data
        return commit

    def sha256(self, data): return self.digests.get(id(data)) or sha256(data)

    def requests(self, method=None, server=None):
        with self.lock: return [r for r in self.log if (method is None or r[1] == method) and (server is None or r[0] == server)]

    def clear(self):
        with self.lock: self.log.clear()

    def _handler(self, server):
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a): pass
            def do_HEAD(self): self._serve(body=False)
            def do_GET(self): self._serve(body=True)

            def _send(self, status, headers=None, data=b"", body=True):
                self.send_response(status)
                for k, v in {"Content-Length": str(len(data)), **(headers or {})}.items(): self.send_header(k, v)
                self.end_headers()
                if body and data: self.wfile.write(data)

            def _error(self, status, code=None, message=None, body=True, **headers):
                h = {**({"X-Error-Code": code} if code else {}), **({"X-Error-Message": message} if message else {}), **headers}
                self._send(status, h, json.dumps({"error": message or code or ""}).encode(), body)

            def _serve(self, body):
                with hub.lock: hub.log.append((server, self.command, self.path, "Authorization" in self.headers))
                if server == "cdn": return self._serve_blob(body)
                if hub.fail_status: return self._error(hub.fail_status, message="overloaded", body=body, **{"Retry-After": "0"})
                path = self.path.split("?")[0]
                if m := re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path): return self._serve_file(m, body)
                if m := re.fullmatch(r"/api/models/([^/]+/[^/]+)/(revision|tree)/([^/]+)", path): return self._serve_api(m, body)
                self._error(404, message="no such endpoint", body=body)

            def _commit(self, repo_id, revision, body):
                "The commit `revision` names in `repo_id`, or None once an error answer is sent (auth first, as the Hub does)"
                repo = hub.repos.get(repo_id)
                auth = self.headers.get("Authorization")
                if repo is None or (repo.private and auth is None):
                    return self._error(401, "RepoNotFound", "Repository not found", body)
                if (repo.private or repo.gated) and auth != f"Bearer {TOKEN}":
                    if repo.gated: return self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted.", body)
                    return self._error(401, message="Invalid credentials in Authorization header", body=body)
                commit = repo.refs.get(revision, revision if revision in repo.commits else None)
                if commit is None: return self._error(404, "RevisionNotFound", f"Invalid rev id: {revision}", body)
                return commit

            def _serve_file(self, m, body):
                "/{repo}/resolve/{revision}/{file}: the file, or for LFS files a redirect to the CDN carrying its metadata"
                repo_id, revision, filename = unquote(m[1]), unquote(m[2]), unquote(m[3])
                if (commit := self._commit(repo_id, revision, body)) is None: return
                data = hub.repos[repo_id].commits[commit].get(filename)
                if data is None: return self._error(404, "EntryNotFound", f"{filename} does not exist", body, **{"X-Repo-Commit": commit})
                if is_lfs(filename):
                    digest = hub.sha256(data)
                    return self._send(302, {"Location": f"{hub.cdn_url}/blobs/{digest}?sig=x", "X-Repo-Commit": commit,
                                            "ETag": f'"{git_sha1(lfs_pointer(digest, len(data)))}"', "X-Linked-Etag": f'"{digest}"',
                                            "X-Linked-Size": str(len(data))}, b"", body)
                self._send(200, {"ETag": f'"{git_sha1(data)}"', "X-Repo-Commit": commit,
                                 "Content-Type": "application/octet-stream"}, data, body)

            def _serve_api(self, m, body):
                "/api/models/{repo}/revision/{rev} (repo info) and /api/models/{repo}/tree/{rev} (file listing)"
                repo_id, kind, revision = unquote(m[1]), m[2], unquote(m[3])
                if (commit := self._commit(repo_id, revision, body)) is None: return
                files = hub.repos[repo_id].commits[commit]
                if kind == "revision":
                    out = {"id": repo_id, "sha": commit, "private": hub.repos[repo_id].private,
                           "siblings": [{"rfilename": f} for f in files]}
                else:
                    out = [{"type": "file", "path": f, "size": len(d), "oid": git_sha1(lfs_pointer(hub.sha256(d), len(d)) if is_lfs(f) else d),
                            **({"lfs": {"oid": hub.sha256(d), "size": len(d), "pointerSize": len(lfs_pointer(hub.sha256(d), len(d)))}}
                               if is_lfs(f) else {})}
                           for f, d in files.items()]
                self._send(200, {"Content-Type": "application/json", "X-Repo-Commit": commit}, json.dumps(out).encode(), body)

            def _serve_blob(self, body):
                m = re.fullmatch(r"/blobs/([0-9a-f]{64})", self.path.split("?")[0])
                data = hub.blobs.get(m[1]) if m else None
                if data is None: return self._error(404, message="no such blob", body=body)
                if m[1] in hub.corrupt: data = bytes([data[0] ^ 0xFF]) + data[1:]  # same size, wrong bytes
                self._send(200, {"Content-Type": "application/octet-stream"}, data, body)
        return Handler


def model_files():
    "A small Llama-shaped model: the shipped models/tiny-llama when present, else generated"
    d = ROOT/"models"/"tiny-llama"
    if (d/"model.safetensors").exists() and (d/"config.json").exists():
        return {"model.safetensors": (d/"model.safetensors").read_bytes(), "config.json": (d/"config.json").read_bytes()}
    rng = np.random.default_rng(0)
    w = {"model.embed_tokens.weight": rng.standard_normal((64, 16)).astype(np.float32),
         "model.layers.0.self_attn.q_proj.weight": rng.standard_normal((16, 16)).astype(np.float32),
         "lm_head.weight": rng.standard_normal((64, 16)).astype(np.float32)}
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 16, "vocab_size": 64}
    return {"model.safetensors": st_save(w, metadata={"format": "pt"}), "config.json": json.dumps(cfg).encode()}


def sharded_files():
    a = st_save({"a": np.arange(6, dtype=np.float32)}, metadata={"format": "pt"})
    b = st_save({"b": np.ones((2, 2), dtype=np.float16)}, metadata={"format": "pt"})
    index = {"metadata": {"total_size": 32}, "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    return {INDEX_NAME: json.dumps(index).encode(), "model-00001-of-00002.safetensors": a,
            "model-00002-of-00002.safetensors": b, "config.json": b'{"model_type": "llama"}'}


@pytest.fixture
def hub():
    h = LocalHub()
    yield h
    h.close()


@pytest.fixture(autouse=True)
def isolated_env(tmp_path, monkeypatch):
    "No token, offline mode, cache or endpoint from the machine running the tests; no name lookup but 127.0.0.1"
    for k in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT", "HF_HUB_CACHE"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path/"hf_home"))
    # huggingface_hub read HF_HUB_DISABLE_TELEMETRY at import; without it, it would ask huggingface.co for its agent list
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_DISABLE_TELEMETRY", True)
    stray, getaddrinfo = [], socket.getaddrinfo
    def local_only(host, *a, **k):
        if host not in ("127.0.0.1", "localhost", "::1"):
            stray.append(host); raise OSError(f"test guard: refusing to resolve {host!r}")
        return getaddrinfo(host, *a, **k)
    monkeypatch.setattr(socket, "getaddrinfo", local_only)
    yield
    assert stray == [], f"tried to reach {stray}"


@pytest.fixture
def fetcher(hub, tmp_path):
    return HfModelFetcher(cache_dir=tmp_path/"cache", endpoint=hub.url)


def test_first_download(hub, fetcher):
    files = model_files()
    commit = hub.add("org/tiny", files)
    art = fetcher.download_model("org/tiny")
    ft.test_eq(art.files, ["model.safetensors", "config.json"])
    ft.test_eq((art.commit, art.revision, art.format, art.architecture), (commit, "main", "safetensors", "LlamaForCausalLM"))
    ft.test_eq(art.path.name, commit)
    for name, data in files.items(): ft.test_eq(sha256((art.path/name).read_bytes()), sha256(data))
    ft.test_eq(art.sha256, {n: sha256(d) for n, d in files.items()})
    ft.test_eq((art.path.parents[1]/"refs"/"main").read_text(), commit)
    # the weights came from the CDN, config.json straight from the hub; no token was sent anywhere
    ft.test_eq([r[2].split("?")[0] for r in hub.requests("GET", "cdn")], [f"/blobs/{sha256(files['model.safetensors'])}"])
    ft.test_eq([r[2] for r in hub.requests("GET", "hub")], [f"/org/tiny/resolve/{commit}/config.json"])
    ft.test_eq(any(r[3] for r in hub.requests()), False)


def test_cache_hit(hub, fetcher):
    commit = hub.add("org/tiny", model_files())
    first = fetcher.download_model("org/tiny")
    hub.clear()
    again = fetcher.download_model("org/tiny")
    ft.test_eq(again, first)
    ft.test_eq(hub.requests("GET"), [])                  # nothing downloaded again
    ft.test_eq([r[1] for r in hub.requests()], ["HEAD"])  # one HEAD resolves 'main'; config.json is pinned to the commit
    hub.clear()
    ft.test_eq(fetcher.download_model("org/tiny", FetchOptions(revision=commit)).commit, commit)
    ft.test_eq(hub.requests(), [])                       # a commit hash that is cached needs no request at all


def test_offline_after_download(hub, fetcher, monkeypatch):
    hub.add("org/tiny", model_files())
    first = fetcher.download_model("org/tiny")
    hub.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ft.test_eq(fetcher.download_model("org/tiny").path, first.path)
    with ft.ExceptionExpected(OfflineError, regex="tokenizer.json.*offline"):
        fetcher.download_model("org/tiny", FetchOptions(files=["tokenizer.json"]))
    ft.test_eq(hub.requests(), [])
    monkeypatch.delenv("HF_HUB_OFFLINE")
    ft.test_eq(fetcher.download_model("org/tiny", FetchOptions(local_files_only=True)).path, first.path)
    ft.test_eq(hub.requests(), [])


def test_new_commit_on_branch(hub, fetcher):
    files = model_files()
    c1 = hub.add("org/tiny", files)
    fetcher.download_model("org/tiny")
    c2 = hub.add("org/tiny", {**files, "config.json": b'{"model_type": "mistral"}'})
    art = fetcher.download_model("org/tiny")
    ft.test_eq((art.commit, art.architecture), (c2, "mistral"))
    ft.test_eq(fetcher.download_model("org/tiny", FetchOptions(revision=c1)).architecture, "LlamaForCausalLM")


def test_sharded(hub, fetcher):
    files = sharded_files()
    commit = hub.add("org/sharded", files)
    art = fetcher.download_model("org/sharded")
    ft.test_eq(art.files, [INDEX_NAME, "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors", "config.json"])
    ft.test_eq((art.commit, art.format, art.architecture), (commit, "safetensors", "llama"))
    for name, data in files.items(): ft.test_eq(sha256((art.path/name).read_bytes()), sha256(data))
    # model.safetensors was asked for first; the Hub said it does not exist and huggingface_hub remembered that
    ft.test_eq((art.path.parents[1]/".no_exist"/commit/"model.safetensors").exists(), True)


def test_explicit_files_and_tags(hub, fetcher):
    c1 = hub.add("org/tiny", model_files(), ref="v1.0")
    art = fetcher.download_model("org/tiny", FetchOptions(revision="v1.0", files=["config.json"]))
    ft.test_eq((art.path.name, art.commit, art.files, art.format), ("config.json", c1, ["config.json"], "json"))
    ft.test_eq([r[1] for r in hub.requests("GET", "cdn")], [])


def test_unknown_revision(hub, fetcher):
    hub.add("org/tiny", model_files())
    with ft.ExceptionExpected(RevisionNotFoundError, regex=r"org/tiny@v9: 'model.safetensors': revision not found"):
        fetcher.download_model("org/tiny", FetchOptions(revision="v9"))


def test_not_found(hub, fetcher):
    hub.add("org/tiny", model_files())
    with ft.ExceptionExpected(RepoNotFoundError, regex=r"org/missing@main: 'model.safetensors': repository not found"):
        fetcher.download_model("org/missing")
    with ft.ExceptionExpected(FileNotFoundOnHubError, regex=r"org/tiny@main: 'extra.safetensors': file not found"):
        fetcher.download_model("org/tiny", FetchOptions(files=["extra.safetensors"]))
    hub.add("org/pickles", {"pytorch_model.bin": b"\x80\x04N.", "config.json": b"{}"})
    with ft.ExceptionExpected(FileNotFoundOnHubError, regex="neither model.safetensors nor .* allow_pickle=True"):
        fetcher.download_model("org/pickles")
    e = None
    try: fetcher.download_model("org/missing")
    except FetchError as err: e = err
    ft.test_eq((e.repo_id, e.revision, e.filename, e.is_retryable), ("org/missing", "main", "model.safetensors", False))


def test_unauthorised_and_tokens(hub, tmp_path, monkeypatch):
    hub.add("org/private", model_files(), private=True)
    hub.add("org/gated", model_files(), gated=True)
    cache = tmp_path/"cache"
    with ft.ExceptionExpected(RepoNotFoundError, regex="private and the token cannot read it"):   # the Hub's 401 without a token
        HfModelFetcher(cache_dir=cache, endpoint=hub.url).download_model("org/private")
    wrong = HfModelFetcher(token="hf_wrong_token_value", cache_dir=cache, endpoint=hub.url)
    try:
        wrong.download_model("org/private"); raise AssertionError("no error")
    except UnauthorizedError as e:
        ft.test_eq("401" in str(e) and "hf_wrong_token_value" not in str(e) and "hf_wrong" not in repr(wrong), True)
    with ft.ExceptionExpected(GatedRepoError, regex="org/gated@main: 'model.safetensors': the repository is gated"):
        HfModelFetcher(cache_dir=cache, endpoint=hub.url).download_model("org/gated")
    ft.test_eq(HfModelFetcher(token=TOKEN, cache_dir=cache, endpoint=hub.url).download_model("org/private").architecture,
               "LlamaForCausalLM")
    monkeypatch.setenv("HF_TOKEN", TOKEN)  # huggingface_hub's own lookup: HF_TOKEN, then the saved login
    ft.test_eq(HfModelFetcher(cache_dir=tmp_path/"cache2", endpoint=hub.url).download_model("org/gated").format, "safetensors")
    # the token went to the hub only, never to the CDN
    ft.test_eq(any(r[3] for r in hub.requests(server="cdn")), False)
    ft.test_eq(any(r[3] for r in hub.requests(server="hub")), True)


def test_corrupt_download_is_evicted(hub, fetcher):
    files = model_files()
    hub.add("org/tiny", files)
    good = sha256(files["model.safetensors"])
    hub.corrupt.add(good)
    with ft.ExceptionExpected(ChecksumMismatchError, regex=f"org/tiny@main: 'model.safetensors': .* the Hub announced {good}"):
        fetcher.download_model("org/tiny")
    storage = fetcher.cache_dir/"models--org--tiny"
    ft.test_eq((storage/"blobs"/good).exists(), False)
    ft.test_eq([p for p in storage.rglob("model.safetensors") if p.exists()], [])
    try: fetcher.download_model("org/tiny")
    except ChecksumMismatchError as e: ft.test_eq(e.is_retryable, True)
    hub.corrupt.clear(); hub.clear()
    art = fetcher.download_model("org/tiny")  # downloads again, this time intact
    ft.test_eq(sha256((art.path/"model.safetensors").read_bytes()), sha256(files["model.safetensors"]))
    ft.test_eq(len(hub.requests("GET", "cdn")), 1)


def test_verify_sha256(hub, fetcher):
    files = model_files()
    hub.add("org/tiny", files)
    good = sha256(files["model.safetensors"])
    ft.test_eq(fetcher.download_model("org/tiny", FetchOptions(verify_sha256=good)).sha256["model.safetensors"], good)
    with ft.ExceptionExpected(ChecksumMismatchError, regex=f"SHA-256 is {good}, expected {'ab' * 32}"):
        fetcher.download_model("org/tiny", FetchOptions(verify_sha256="ab" * 32))
    ft.test_eq((fetcher.cache_dir/"models--org--tiny"/"blobs"/good).exists(), False)
    hub.clear()
    fetcher.download_model("org/tiny", FetchOptions(verify_sha256={"model.safetensors": good, "config.json": sha256(files["config.json"])}))
    ft.test_eq(len(hub.requests("GET", "cdn")), 1)  # the evicted file was downloaded again


def test_pickles_refused_before_any_request(hub, fetcher):
    hub.add("org/pickles", {"pytorch_model.bin": b"\x80\x04N.", "config.json": b"{}"})
    for f in ["pytorch_model.bin", "model.pt", "weights.pth", "x.pkl", "last.ckpt"]:
        with ft.ExceptionExpected(UnsafeFileError, regex="pickle files can run code"):
            fetcher.download_model("org/pickles", FetchOptions(files=[f]))
    ft.test_eq(hub.requests(), [])
    art = fetcher.download_model("org/pickles", FetchOptions(files=["pytorch_model.bin"], allow_pickle=True))
    ft.test_eq((art.format, art.path.read_bytes()), ("pickle", b"\x80\x04N."))


def test_index_naming_unsafe_shards(hub, fetcher):
    index = {"weight_map": {"a": "../../../evil.safetensors"}}
    hub.add("org/evil", {INDEX_NAME: json.dumps(index).encode()})
    with ft.ExceptionExpected(FetchError, regex="invalid file name '../../../evil.safetensors'"):
        fetcher.download_model("org/evil")
    ft.test_eq([p for p in fetcher.cache_dir.rglob("evil*")], [])


def test_server_errors_are_retryable(hub, fetcher):
    hub.add("org/tiny", model_files())
    hub.fail_status = 503  # with Retry-After: 0, huggingface_hub's own retries take a few seconds
    try:
        fetcher.download_model("org/tiny"); raise AssertionError("no error")
    except HubUnavailableError as e:
        ft.test_eq((e.is_retryable, e.repo_id, e.filename), (True, "org/tiny", "model.safetensors"))
        ft.test_eq("503" in str(e), True)


@pytest.mark.slow
def test_connection_refused_is_retryable(tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    f = HfModelFetcher(cache_dir=tmp_path/"cache", endpoint=f"http://127.0.0.1:{port}")
    try:
        f.download_model("org/tiny"); raise AssertionError("no error")
    except HubUnavailableError as e: ft.test_eq(e.is_retryable, True)


def entrenar_cmd():
    "The installed `entrenar` script beside this Python, else its entry point through `python -c`"
    exe = Path(sys.executable).parent/"entrenar"
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "import sys; from entrenar.cli import main; sys.exit(main())"]


def fetch_cli(args, hub, tmp_path, **env):
    "Run `entrenar ...` in a subprocess whose huggingface_hub reads HF_ENDPOINT at import"
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    e.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path/"hf_home"), HF_HUB_DISABLE_TELEMETRY="1", **env)
    return subprocess.run(entrenar_cmd() + list(args), capture_output=True, text=True, env=e, timeout=120)


def test_cli_fetch(hub, tmp_path):
    files = model_files()
    commit = hub.add("org/tiny", files, ref="v1.0")
    cache = tmp_path/"cli-cache"
    r = fetch_cli(["fetch", "org/tiny", "--revision", "v1.0", "--cache-dir", str(cache)], hub, tmp_path)
    ft.test_eq(r.returncode, 0)
    ft.test_eq(len(r.stdout.splitlines()), 1)  # only the path on stdout; progress bars go to stderr
    path = Path(r.stdout.strip())
    ft.test_eq((path.name, sha256((path/"model.safetensors").read_bytes())), (commit, sha256(files["model.safetensors"])))
    hub.clear()
    r = fetch_cli(["fetch", "org/tiny@v1.0", "--cache-dir", str(cache), "--file", "config.json"], hub, tmp_path, HF_HUB_OFFLINE="1")
    ft.test_eq((r.returncode, r.stdout.strip()), (0, str(path/"config.json")))
    ft.test_eq(hub.requests(), [])
    r = fetch_cli(["fetch", "org/tiny", "--revision", "nope", "--cache-dir", str(cache)], hub, tmp_path)
    ft.test_eq(r.returncode, 1)
    ft.test_eq(r.stderr.strip().splitlines()[-1], "error: org/tiny@nope: 'model.safetensors': revision not found")
    r = fetch_cli(["fetch", "org/tiny", "--file", "pytorch_model.bin", "--cache-dir", str(cache)], hub, tmp_path)
    ft.test_eq((r.returncode, "allow-pickle" in r.stderr), (1, True))
    good = sha256(files["model.safetensors"])
    r = fetch_cli(["fetch", "org/tiny@v1.0", "--offline", "--sha256", good, "--cache-dir", str(cache)], hub, tmp_path)
    ft.test_eq((r.returncode, r.stdout.strip()), (0, str(path)))
    r = fetch_cli(["fetch", "org/tiny@v1.0", "--sha256", f"config.json={'0' * 64}", "--cache-dir", str(cache)], hub, tmp_path)
    ft.test_eq(r.returncode, 1)
    ft.test_eq(r.stderr.strip().splitlines()[-1].startswith(f"error: org/tiny@v1.0: 'config.json': SHA-256 is "), True)
    ft.test_eq((path/"config.json").exists(), False)  # evicted: the next fetch downloads it again


def test_load_model_hf_uri(hub, tmp_path, monkeypatch):
    from entrenar.io import load_model
    files = model_files()
    commit = hub.add("org/tiny", files, ref="v1.0")
    monkeypatch.setenv("HF_ENDPOINT", hub.url)            # read by the fetcher at each call
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path/"cache"))
    m = load_model("hf://org/tiny@v1.0")
    (tmp_path/"ref.safetensors").write_bytes(files["model.safetensors"])
    ref = load_model(tmp_path/"ref.safetensors")
    ft.test_eq(m.names, ref.names)
    for n in ref.names: ft.test_eq(np.array_equal(m.get_parameter(n), ref.get_parameter(n)), True)
    ft.test_eq(Path(m.path).parent.name, commit)
    hub.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ft.test_eq(load_model("hf://org/tiny@v1.0", lazy=True).names, ref.names)
    ft.test_eq(hub.requests(), [])
    monkeypatch.delenv("HF_HUB_OFFLINE")
    with ft.ExceptionExpected(RevisionNotFoundError, regex="org/tiny@main: 'model.safetensors': revision not found"):
        load_model("hf://org/tiny")


def test_load_model_hf_uri_subprocess(hub, tmp_path):
    "In a fresh process huggingface_hub reads HF_ENDPOINT at import, as users run it"
    files = sharded_files()
    hub.add("org/sharded", files)
    code = "from entrenar.io import load_model; m = load_model('hf://org/sharded'); print(m.names, m.get_parameter('a').tolist())"
    e = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    e.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path/"hf_home"), HF_HUB_DISABLE_TELEMETRY="1")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=e, timeout=120)
    ft.test_eq((r.returncode, r.stdout.strip()), (0, "['a', 'b'] [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]"))
    ft.test_eq(len(hub.requests("GET", "cdn")), 2)
