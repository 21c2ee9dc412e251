"""A Hugging Face Hub cache for tests, written by huggingface_hub itself.

`FakeHub` serves local checkpoint directories over HTTP on 127.0.0.1 the way the Hub serves a
model repository, and `download` runs the real `huggingface_hub.snapshot_download` (online, plain
HTTP, no Xet) against it in a subprocess, so the cache is laid out exactly as users get it:
`models--org--name/refs/main`, `blobs/<sha256 or git sha1>` and `snapshots/<commit>/<file>` as
relative links to `../../blobs/<hash>`. A repo may also be a dataset (`HubRepo.repo_type`), served
under the Hub's dataset URLs (`datasets--org--name` in the cache).

What the server implements (from huggingface_hub's hf_api.model_info / list_repo_tree and
file_download.get_hf_file_metadata / _hf_hub_download_to_cache_dir):

  GET  /api/models/{repo}/revision/{rev}   repo info JSON: id, sha (the commit), siblings
  GET  /api/models/{repo}/tree/{rev}[/dir] recursive listing: type, oid (git blob sha1), size,
                                           path, and lfs {oid: sha256, size, pointerSize}
  HEAD/GET /{repo}/resolve/{rev}/{file}    plain file: 200 with ETag "<git sha1>",
                                           X-Repo-Commit, Content-Length (and the bytes on GET).
                                           LFS file (*.safetensors): 302 to a second server (the
                                           "CDN", another origin, so the HEAD stops there) with
                                           X-Linked-Etag "<sha256>", X-Linked-Size, ETag of the
                                           LFS pointer and X-Repo-Commit.
  GET  {cdn}/lfs/{sha256}                  the LFS object's bytes.

A dataset repo answers the same under /api/datasets/{repo}/... and /datasets/{repo}/resolve/...
(huggingface_hub's hf_api.dataset_info and file_download.hf_hub_url with repo_type="dataset").

Unknown repos answer 401 with X-Error-Code: RepoNotFound and unknown revisions 404 with
RevisionNotFound, as the Hub does. No X-Xet-* header is ever sent, so the client downloads over
plain HTTP; HF_HUB_DISABLE_XET=1 is set as well.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from functools import cached_property
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".safetensors", ".bin", ".parquet")
GITATTRIBUTES = b"".join(
    b"*%s filter=lfs diff=lfs merge=lfs -text\n" % s.encode() for s in LFS_SUFFIXES
)


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a blob: sha1 of 'blob <size>\\0' + content (the Hub's ETag for it)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass(frozen=True)
class HubFile:
    path: str
    data: bytes
    lfs: bool

    @cached_property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @cached_property
    def pointer(self) -> bytes:
        """The LFS pointer file git stores in place of an LFS object."""
        text = f"version https://git-lfs.github.com/spec/v1\noid sha256:{self.sha256}\n"
        return (text + f"size {len(self.data)}\n").encode()

    @cached_property
    def oid(self) -> str:
        """The git blob id: of the pointer for LFS files, of the content otherwise."""
        return git_blob_sha1(self.pointer if self.lfs else self.data)

    @property
    def blob_name(self) -> str:
        """The name huggingface_hub gives this file's blob in the cache."""
        return self.sha256 if self.lfs else self.oid


@dataclass
class HubRepo:
    repo_id: str
    files: dict[str, HubFile] = field(default_factory=dict)
    repo_type: str = "model"  # or "dataset"

    @property
    def commit(self) -> str:
        listing = "".join(f"{p}\0{f.oid}\n" for p, f in sorted(self.files.items()))
        return hashlib.sha1(f"{self.repo_id}\n{listing}".encode()).hexdigest()

    @classmethod
    def from_dir(cls, repo_id: str, src: Path, extra: dict[str, bytes] | None = None,
                 repo_type: str = "model") -> HubRepo:  # fmt: skip
        """`src`'s files (sub-folders included), plus .gitattributes, a README.md and `extra`."""
        contents = {".gitattributes": GITATTRIBUTES, "README.md": f"# {repo_id}\n".encode()}
        for p in sorted(src.rglob("*")):
            if p.is_file():
                contents[p.relative_to(src).as_posix()] = p.read_bytes()
        contents |= extra or {}
        files = {p: HubFile(p, d, p.endswith(LFS_SUFFIXES)) for p, d in contents.items()}
        return cls(repo_id, files, repo_type)

    def tree(self) -> list[dict]:
        entries, dirs = [], set()
        for path, f in sorted(self.files.items()):
            parts = path.split("/")
            dirs.update("/".join(parts[:i]) for i in range(1, len(parts)))
            entry = {"type": "file", "oid": f.oid, "size": len(f.data), "path": path}
            if f.lfs:
                entry["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": len(f.pointer)}
            entries.append(entry)
        folders = [{"type": "directory", "oid": git_blob_sha1(d.encode()), "size": 0, "path": d}
                   for d in sorted(dirs)]  # fmt: skip
        return folders + entries

    def info(self) -> dict:
        org, _, name = self.repo_id.partition("/")
        return {
            "_id": self.commit[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": org,
            "sha": self.commit,
            "lastModified": "2025-01-01T00:00:00.000Z",
            "createdAt": "2025-01-01T00:00:00.000Z",
            "private": False,
            "disabled": False,
            "gated": False,
            "downloads": 0,
            "likes": 0,
            "tags": ["transformers", "safetensors"],
            "library_name": "transformers",
            "siblings": [{"rfilename": p} for p in sorted(self.files)],
        }


class FakeHub:
    """Serves `repos` as the Hub's HTTP API on 127.0.0.1 (see the module docstring).

    Use as a context manager; `endpoint` is the value for HF_ENDPOINT and `requests` records
    (method, path) of every request, for asserting what a client fetched.
    """

    def __init__(self, repos: list[HubRepo]):
        self.repos = {r.repo_id: r for r in repos}
        self.requests: list[tuple[str, str]] = []
        self._lock = threading.Lock()
        self._servers: list[ThreadingHTTPServer] = []

    def __enter__(self) -> FakeHub:
        hub, cdn = self._serve(self._hub_response), self._serve(self._cdn_response)
        self.endpoint = f"http://127.0.0.1:{hub.server_address[1]}"
        self.cdn = f"http://127.0.0.1:{cdn.server_address[1]}"  # another origin, like the CDN
        return self

    def __exit__(self, *exc) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()

    def _serve(self, respond) -> ThreadingHTTPServer:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                self._answer(body=True)

            def do_HEAD(self):
                self._answer(body=False)

            def _answer(self, body: bool):
                path = unquote(urlsplit(self.path).path)
                with hub._lock:
                    hub.requests.append((self.command, path))
                status, headers, data = respond(path)
                self.send_response(status)
                for k, v in (headers | {"Content-Length": str(len(data))}).items():
                    self.send_header(k, v)
                self.end_headers()
                if body:
                    self.wfile.write(data)

            def log_message(self, *args):
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        self._servers.append(server)
        return server

    # ---- the Hub ---------------------------------------------------------------------------
    def _hub_response(self, path: str) -> tuple[int, dict, bytes]:
        parts = path.strip("/").split("/")
        if parts[:2] in (["api", "models"], ["api", "datasets"]) and len(parts) >= 6:
            repo_id, kind, rev = "/".join(parts[2:4]), parts[4], parts[5]
            found = self._find(repo_id, rev, parts[1].removesuffix("s"))
            if not isinstance(found, HubRepo):
                return found
            if kind == "revision" and len(parts) == 6:
                return _json(found.info())
            if kind == "tree":
                under = "/".join(parts[6:])
                listing = [
                    e for e in found.tree() if not under or e["path"].startswith(under + "/")
                ]
                return _json(listing)
        elif (parts[0] == "datasets" and parts[3:4] == ["resolve"]) or parts[2:3] == ["resolve"]:
            repo_type = "dataset" if parts[0] == "datasets" else "model"
            parts = parts[1:] if repo_type == "dataset" else parts  # datasets/org/name/resolve/...
            repo_id, rev, fname = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            found = self._find(repo_id, rev, repo_type)
            if not isinstance(found, HubRepo):
                return found
            f = found.files.get(fname)
            commit = {"X-Repo-Commit": found.commit}
            if f is None:
                return 404, commit | _error("EntryNotFound", "Entry not found"), b""
            if f.lfs:
                return 302, commit | {
                    "Location": f"{self.cdn}/lfs/{f.sha256}",
                    "ETag": f'"{f.oid}"',
                    "X-Linked-Etag": f'"{f.sha256}"',
                    "X-Linked-Size": str(len(f.data)),
                }, b""  # fmt: skip
            return 200, commit | {"ETag": f'"{f.oid}"', "Accept-Ranges": "bytes",
                                  "Content-Type": "application/octet-stream"}, f.data  # fmt: skip
        return 404, {"Content-Type": "text/plain"}, b"Not Found"

    def _find(self, repo_id: str, rev: str, repo_type: str) -> HubRepo | tuple[int, dict, bytes]:
        repo = self.repos.get(repo_id)
        if repo is None or repo.repo_type != repo_type:
            return 401, _error("RepoNotFound", "Repository not found"), b""
        if rev not in ("main", repo.commit):
            return 404, _error("RevisionNotFound", "Invalid rev id: " + rev), b""
        return repo

    # ---- the CDN ---------------------------------------------------------------------------
    def _cdn_response(self, path: str) -> tuple[int, dict, bytes]:
        sha = path.removeprefix("/lfs/")
        for repo in self.repos.values():
            for f in repo.files.values():
                if f.lfs and f.sha256 == sha:
                    return 200, {"Content-Type": "application/octet-stream"}, f.data
        return 404, {}, b""


def _json(obj) -> tuple[int, dict, bytes]:
    return 200, {"Content-Type": "application/json"}, json.dumps(obj).encode()


def _error(code: str, message: str) -> dict:
    return {"X-Error-Code": code, "X-Error-Message": message, "Content-Type": "text/plain"}


def hub_env(cache: Path, endpoint: str | None = None, home: Path | None = None) -> dict:
    """os.environ with every HF_* and proxy variable replaced: the cache at `cache`; online
    against `endpoint` (plain HTTP, no Xet), or offline (HF_HUB_OFFLINE=1) without one."""
    proxies = {"http_proxy", "https_proxy", "all_proxy", "no_proxy"}
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("HF_") and k.lower() not in proxies}  # fmt: skip
    env |= {
        "HF_HUB_CACHE": str(cache),
        "HF_HOME": str(home or cache.parent / "hf_home"),
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_OFFLINE": "0" if endpoint else "1",
        "NO_PROXY": "127.0.0.1",
    }
    if endpoint:
        env["HF_ENDPOINT"] = endpoint
    return env


_DOWNLOAD = """
import json, sys
from huggingface_hub import snapshot_download
from rejuv_cli.checkpoint.resolve import HUB_PATTERNS, HUB_SKIP, resolve_model
paths = {rid: snapshot_download(rid, allow_patterns=HUB_PATTERNS, ignore_patterns=HUB_SKIP)
         for rid in sys.argv[1:]}
# rejuv's own online resolution, now that the files are cached: same snapshot, same commit
rejuv = {rid: resolve_model(rid + "@main", "MODEL").to_json() for rid in sys.argv[1:]}
print(json.dumps({"paths": paths, "rejuv": rejuv}))
"""


def download(endpoint: str, cache: Path, repo_ids: list[str]) -> tuple[dict, dict]:
    """Run the real huggingface_hub.snapshot_download for each repo, with the patterns rejuv
    itself downloads with, in a fresh process configured only by environment variables
    (huggingface_hub reads them at import). Returns (repo_id -> snapshot directory,
    repo_id -> rejuv's ResolvedModel JSON for repo_id@main resolved online afterwards)."""
    r = subprocess.run(
        [sys.executable, "-c", _DOWNLOAD, *repo_ids],
        env=hub_env(cache, endpoint),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.splitlines()[-1])
    return {rid: Path(p) for rid, p in out["paths"].items()}, out["rejuv"]


_RUN = """
import json, sys
from typer.testing import CliRunner
from rejuv_cli.cli import app
results = []
for args in json.loads(sys.argv[1]):
    r = CliRunner().invoke(app, args, catch_exceptions=False)
    results.append({"code": r.exit_code, "stdout": r.stdout, "stderr": r.stderr})
print(json.dumps(results))
"""


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def rejuv_offline(cache: Path, *commands: list) -> list[Run]:
    """Run rejuv commands (argument lists) one after the other in one fresh process whose
    environment says HF_HUB_OFFLINE=1 and HF_HUB_CACHE=cache (read by huggingface_hub at
    import, hence the process). One process for many commands: torch is imported once.
    An exception that is not a rejuv error ends the process and fails the call."""
    r = subprocess.run(
        [sys.executable, "-c", _RUN, json.dumps([[str(a) for a in c] for c in commands])],
        env=hub_env(cache),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    return [Run(**x) for x in json.loads(r.stdout.splitlines()[-1])]


@dataclass
class HubCache:
    """A Hub cache holding `hub`'s repos, written by huggingface_hub (`hub` still serves)."""

    cache: Path
    hub: FakeHub
    snapshots: dict[str, Path]  # repo_id -> .../snapshots/<commit>
    online: dict[str, dict]  # repo_id -> rejuv's resolution of repo_id@main, online

    def commit(self, repo_id: str) -> str:
        return self.hub.repos[repo_id].commit

    def env(self) -> dict:
        """The environment for running rejuv offline from this cache."""
        return hub_env(self.cache)


def build_hub_cache(root: Path, hub: FakeHub) -> HubCache:
    """Download all of `hub`'s repos into root/hub with huggingface_hub, and check the result
    with huggingface_hub.scan_cache_dir (which validates the cache's structure)."""
    from huggingface_hub import scan_cache_dir

    cache = root / "hub"
    snapshots, online = download(hub.endpoint, cache, list(hub.repos))
    info = scan_cache_dir(cache)
    assert not info.warnings, info.warnings
    assert {r.repo_id for r in info.repos} == set(hub.repos)
    for r in info.repos:
        (rev,) = r.revisions
        assert rev.commit_hash == hub.repos[r.repo_id].commit and rev.refs == {"main"}
        assert Path(rev.snapshot_path) == snapshots[r.repo_id]
    return HubCache(cache, hub, snapshots, online)


def assert_hub_layout(hc: HubCache) -> None:
    """Every snapshot file is a relative link to ../../blobs/<the name the Hub's ETag gives>
    (sha256 for LFS files, the git blob sha1 otherwise), and reads as the served bytes."""
    for repo_id, snap in hc.snapshots.items():
        repo = hc.hub.repos[repo_id]
        files = sorted(p for p in snap.rglob("*") if not p.is_dir())
        assert files, snap
        for p in files:
            rel = p.relative_to(snap).as_posix()
            f = repo.files[rel]
            up = "../" * rel.count("/")
            assert p.is_symlink() and os.readlink(p) == f"{up}../../blobs/{f.blob_name}", p
            assert p.read_bytes() == f.data, p
