"""A small in-memory Hugging Face Hub for tests that drive the real ``huggingface_hub`` client (2.4.0).

    with running_hub() as running:  # uvicorn on 127.0.0.1, random port, background thread
        api = HfApi(endpoint=running.url, token="hf_test")
        hf_hub_download(repo_id, "m.onnx", repo_type="dataset", endpoint=running.url, cache_dir=tmp_path)
        running.hub.fail_next(500, route="commit"); running.hub.calls["commit"]

Routes ({kind} is models or datasets; a model's resolve URL has no "datasets/" prefix), by route name:
    create_repo  POST    /api/repos/create                         409 with the "url" when the repo exists
    preupload    POST    /api/{kind}/{ns}/{name}/preupload/{rev}   uploadMode "regular": no LFS/Xet upload
    commit       POST    /api/{kind}/{ns}/{name}/commit/{branch}   NDJSON header/file/deletedFile/deletedFolder
    create_tag   POST    /api/{kind}/{ns}/{name}/tag/{rev}         409 when the tag exists
    delete_tag   DELETE  /api/{kind}/{ns}/{name}/tag/{tag}
    refs         GET     /api/{kind}/{ns}/{name}/refs
    tree         GET     /api/{kind}/{ns}/{name}/tree/{rev}[/{path}]   ?recursive=true
    commits      GET     /api/{kind}/{ns}/{name}/commits/{rev}
    info         GET     /api/{kind}/{ns}/{name}[/revision/{rev}]  repo_info, dataset_info, model_info
    resolve      GET|HEAD /[datasets/]{ns}/{name}/resolve/{rev}/{path}  hf_hub_download, file_exists
A revision is a branch (only main), a tag or a commit sha (or a 7+ character prefix), never containing "/".
Errors answer {"error": message} with X-Error-Message and, where the client relies on it, X-Error-Code
(RepoNotFound, RevisionNotFound, EntryNotFound). Only the 412 message is the Hub's word for word.

A caller passes endpoint=url (per call: HF_ENDPOINT is not needed), a token, and cache_dir=<tmp dir> to
hf_hub_download. Set HF_HUB_DISABLE_TELEMETRY=1 before importing huggingface_hub, or patch
huggingface_hub.constants.HF_HUB_DISABLE_TELEMETRY = True: otherwise building the first user-agent fetches an
agent registry from huggingface.co (up to 3 s where connections hang). HF_HUB_DISABLE_XET, HF_HUB_ETAG_TIMEOUT
and HF_HOME need no change (no Xet headers are sent; HF_HOME only holds default token and cache). Proxy
variables must not catch 127.0.0.1 (NO_PROXY).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import PurePosixPath

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

KINDS = {"models": "model", "datasets": "dataset"}
URL_PREFIX = {"model": "", "dataset": "datasets/"}
# Word for word what the Hub answers (huggingface_hub's own test suite asserts it).
STALE_PARENT = "A commit has happened since. Please refresh and try again."
GITATTRIBUTES = b"*.bin filter=lfs diff=lfs merge=lfs -text\n*.onnx filter=lfs diff=lfs merge=lfs -text\n"


def git_blob_sha(data: bytes) -> str:
    """The git blob id: the Hub's ETag and preupload "oid" for regular files, which the client compares."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class Commit:
    sha: str
    parent: str | None
    message: str
    files: dict[str, bytes]
    date: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass
class Repo:
    kind: str
    repo_id: str
    private: bool
    commits: list[Commit] = field(default_factory=list)
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)

    def commit(self, branch: str, message: str, files: dict[str, bytes]) -> Commit:
        new = Commit(os.urandom(20).hex(), self.branches.get(branch), message, files)
        self.commits.append(new)
        self.branches[branch] = new.sha
        return new

    def resolve(self, revision: str) -> Commit | None:
        sha = self.branches.get(revision) or self.tags.get(revision) or revision.lower()
        found = [c for c in self.commits if len(sha) >= 7 and c.sha.startswith(sha)]
        return found[0] if len(found) == 1 else None


class HubError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None, **headers: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message
        self.headers = {"X-Error-Message": message, **headers} | ({"X-Error-Code": code} if code else {})


@dataclass
class _Fault:
    status: int
    times: int
    retry_after: float | None
    route: str | None


class FakeHub:
    """The state and the fault injection; every method is safe to call from the test thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.repos: dict[tuple[str, str], Repo] = {}
        self.calls: Counter[str] = Counter()  # route name -> requests, failed ones included
        self.log: list[tuple[str, str]] = []  # (method, route), in arrival order
        self.last_authorization: str | None = None
        self.require_token = False
        self._faults: list[_Fault] = []
        self._stale_parents = 0

    def fail_next(
        self, status: int, times: int = 1, retry_after: float | None = None, route: str | None = None
    ) -> None:
        """Answer the next ``times`` requests (to ``route``, or any) with ``status``, before anything else.

        huggingface_hub only understands an integer Retry-After, and then sleeps Retry-After + 1 seconds.
        """
        with self.lock:
            self._faults.append(_Fault(status, times, retry_after, route))

    def stale_parent_next(self, times: int = 1) -> None:
        """Refuse the next commit(s) with 412, as if another commit had landed first (the head does not move)."""
        with self.lock:
            self._stale_parents += times

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        with self.lock:
            return self.repos[(repo_type, repo_id)]

    @contextlib.contextmanager
    def handling(self, request: Request, route: str) -> Iterator[None]:
        with self.lock:
            self.calls[route] += 1
            self.log.append((request.method, route))
            authorization = request.headers.get("authorization")
            if authorization:
                self.last_authorization = authorization
            for fault in self._faults:
                if fault.route in (None, route):
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                    extra = {} if fault.retry_after is None else {"Retry-After": f"{fault.retry_after:g}"}
                    raise HubError(fault.status, f"Injected HTTP {fault.status}", **extra)
            if self.require_token and not authorization:
                raise HubError(401, "A token is required")
            yield

    def _take_stale_parent(self) -> bool:
        if self._stale_parents:
            self._stale_parents -= 1
            return True
        return False


def _tree(files: dict[str, bytes], base: str, recursive: bool) -> list[dict] | None:
    dirs = {str(p) for path in files for p in PurePosixPath(path).parents if str(p) != "."}
    if base and base not in dirs:
        return None
    prefix = f"{base}/" if base else ""

    def listed(path: str) -> bool:
        return path.startswith(prefix) and (recursive or "/" not in path[len(prefix) :])

    folders = [
        {"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "path": d}
        for d in sorted(dirs)
        if listed(d)
    ]
    blobs = [
        {"type": "file", "oid": git_blob_sha(data), "size": len(data), "path": path}
        for path, data in sorted(files.items())
        if listed(path)
    ]
    return folders + blobs


def create_app(hub: FakeHub) -> FastAPI:
    app = FastAPI()

    @app.exception_handler(HubError)
    async def _hub_error(_: Request, exc: HubError) -> Response:
        return JSONResponse({"error": exc.message}, exc.status, headers=exc.headers)

    def base_url(request: Request) -> str:
        return str(request.base_url).rstrip("/")

    def repo_of(kind: str, ns: str, name: str) -> Repo:
        repo = hub.repos.get((KINDS.get(kind, ""), f"{ns}/{name}"))
        if repo is None:
            raise HubError(404, "Repository not found", "RepoNotFound")
        return repo

    def commit_at(repo: Repo, revision: str) -> Commit:
        commit = repo.resolve(revision)
        if commit is None:
            raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
        return commit

    @app.post("/api/repos/create")
    async def create_repo(request: Request) -> Response:
        body = await request.json()
        with hub.handling(request, "create_repo"):
            kind, namespace = body.get("type") or "model", body.get("organization")
            if kind not in URL_PREFIX or not namespace:
                raise HubError(400, "The test hub serves model and dataset repos named 'namespace/name'")
            repo_id = f"{namespace}/{body['name']}"
            url = f"{base_url(request)}/{URL_PREFIX[kind]}{repo_id}"
            if (kind, repo_id) in hub.repos:
                # create_repo(exist_ok=True) reads "url" from this 409's body.
                message = f"You already created this {kind} repo"
                return JSONResponse({"error": message, "url": url}, 409, {"X-Error-Message": message})
            repo = hub.repos[(kind, repo_id)] = Repo(kind, repo_id, body.get("visibility") == "private")
            repo.commit("main", "initial commit", {".gitattributes": GITATTRIBUTES})
        return JSONResponse({"url": url, "name": repo_id, "id": os.urandom(12).hex()})

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request) -> dict:
        # create_commit sends a README.md's front matter here first; the real Hub answers errors or warnings.
        with hub.handling(request, "validate_yaml"):
            return {"errors": [], "warnings": []}

    @app.post("/api/{kind}/{ns}/{name}/preupload/{revision}")
    async def preupload(kind: str, ns: str, name: str, revision: str, request: Request) -> dict:
        body = await request.json()
        with hub.handling(request, "preupload"):
            commit = commit_at(repo_of(kind, ns, name), revision)
        files = []
        for wanted in body["files"]:
            entry = {"path": wanted["path"], "uploadMode": "regular", "shouldIgnore": False}
            if wanted["path"] in commit.files:  # lets the client drop unchanged files from the commit
                entry["oid"] = git_blob_sha(commit.files[wanted["path"]])
            files.append(entry)
        return {"files": files, "commitOid": commit.sha}

    @app.post("/api/{kind}/{ns}/{name}/commit/{revision}")
    async def commit(kind: str, ns: str, name: str, revision: str, request: Request) -> dict:
        lines = [json.loads(line) for line in (await request.body()).splitlines() if line.strip()]
        with hub.handling(request, "commit"):
            repo = repo_of(kind, ns, name)
            if request.query_params.get("create_pr"):
                raise HubError(400, "The test hub does not do pull requests")
            if revision not in repo.branches:
                raise HubError(404, f"Invalid rev id: {revision}", "RevisionNotFound")
            head = repo.resolve(revision)
            header = next((line["value"] for line in lines if line["key"] == "header"), None)
            if header is None:
                raise HubError(400, "The first NDJSON line must be the header")
            parent = (header.get("parentCommit") or "").lower()
            if hub._take_stale_parent() or (parent and not head.sha.startswith(parent)):
                raise HubError(412, STALE_PARENT)
            files = dict(head.files)
            for line in lines:
                key, value = line["key"], line["value"]
                if key == "file":
                    content = value["content"]
                    files[value["path"]] = (
                        base64.b64decode(content) if value.get("encoding") == "base64" else content.encode()
                    )
                elif key == "deletedFile":
                    if files.pop(value["path"], None) is None:
                        raise HubError(404, "A file with this name doesn't exist", "EntryNotFound")
                elif key == "deletedFolder":
                    prefix = value["path"].rstrip("/") + "/"
                    files = {path: data for path, data in files.items() if not path.startswith(prefix)}
                elif key != "header":
                    raise HubError(400, f"Unsupported commit operation {key!r}: only regular files here")
            message = "\n\n".join(filter(None, (header["summary"], header.get("description"))))
            new = repo.commit(revision, message, files)
        url = f"{base_url(request)}/{URL_PREFIX[repo.kind]}{repo.repo_id}/commit/{new.sha}"
        return {"success": True, "commitOid": new.sha, "commitUrl": url, "hookOutput": ""}

    @app.post("/api/{kind}/{ns}/{name}/tag/{revision}")
    async def create_tag(kind: str, ns: str, name: str, revision: str, request: Request) -> dict:
        body = await request.json()
        with hub.handling(request, "create_tag"):
            repo = repo_of(kind, ns, name)
            target = commit_at(repo, revision)
            tag = body["tag"]
            if tag in repo.tags or tag in repo.branches:
                raise HubError(409, f"Tag {tag} already exists")
            repo.tags[tag] = target.sha
        return {"name": tag, "ref": f"refs/tags/{tag}", "targetCommit": target.sha}

    @app.delete("/api/{kind}/{ns}/{name}/tag/{tag}")
    async def delete_tag(kind: str, ns: str, name: str, tag: str, request: Request) -> dict:
        with hub.handling(request, "delete_tag"):
            repo = repo_of(kind, ns, name)
            if repo.tags.pop(tag, None) is None:
                raise HubError(404, f"Tag {tag} not found", "RevisionNotFound")
        return {}

    @app.get("/api/{kind}/{ns}/{name}/refs")
    async def refs(kind: str, ns: str, name: str, request: Request) -> dict:
        def listing(refs: dict[str, str], folder: str) -> list[dict]:
            return [{"name": n, "ref": f"refs/{folder}/{n}", "targetCommit": sha} for n, sha in refs.items()]

        with hub.handling(request, "refs"):
            repo = repo_of(kind, ns, name)
            branches, tags = listing(repo.branches, "heads"), listing(repo.tags, "tags")
        return {"branches": branches, "tags": tags, "converts": [], "pullRequests": []}

    @app.get("/api/{kind}/{ns}/{name}/tree/{revision}")
    @app.get("/api/{kind}/{ns}/{name}/tree/{revision}/{path:path}")
    async def tree(kind: str, ns: str, name: str, revision: str, request: Request, path: str = "") -> list:
        recursive = request.query_params.get("recursive", "").lower() in ("1", "true")
        with hub.handling(request, "tree"):
            entries = _tree(commit_at(repo_of(kind, ns, name), revision).files, path.strip("/"), recursive)
            if entries is None:
                raise HubError(404, f"{path} does not exist", "EntryNotFound")
        return entries

    @app.get("/api/{kind}/{ns}/{name}/commits/{revision}")
    async def commits(kind: str, ns: str, name: str, revision: str, request: Request) -> list:
        with hub.handling(request, "commits"):
            repo = repo_of(kind, ns, name)
            history, current = [], commit_at(repo, revision)
            while current is not None:
                history.append(current)
                current = repo.resolve(current.parent) if current.parent else None
        return [
            {
                "id": c.sha,
                "title": c.message.split("\n")[0],
                "message": c.message,
                "authors": [{"user": "test"}],
                "date": _iso(c.date),
            }
            for c in history
        ]

    @app.get("/api/{kind}/{ns}/{name}")
    @app.get("/api/{kind}/{ns}/{name}/revision/{revision}")
    async def info(kind: str, ns: str, name: str, request: Request, revision: str = "main") -> dict:
        with hub.handling(request, "info"):
            repo = repo_of(kind, ns, name)
            commit = commit_at(repo, revision)
        return {
            "id": repo.repo_id,
            "author": ns,
            "sha": commit.sha,
            "private": repo.private,
            "disabled": False,
            "gated": False,
            "createdAt": _iso(repo.commits[0].date),
            "lastModified": _iso(commit.date),
            "siblings": [{"rfilename": path} for path in sorted(commit.files)],
        }

    def resolve(request: Request, kind: str, ns: str, name: str, revision: str, path: str) -> Response:
        with hub.handling(request, "resolve"):
            commit = commit_at(repo_of(kind, ns, name), revision)
            data = commit.files.get(path)
            if data is None:
                # The client caches the file's absence under this commit.
                raise HubError(404, "Entry not found", "EntryNotFound", **{"X-Repo-Commit": commit.sha})
        # uvicorn drops the body of a HEAD answer but keeps its Content-Length, the size the client expects.
        headers = {"X-Repo-Commit": commit.sha, "ETag": f'"{git_blob_sha(data)}"'}
        return Response(data, media_type="application/octet-stream", headers=headers)

    @app.api_route("/datasets/{ns}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    async def resolve_dataset(ns: str, name: str, revision: str, path: str, request: Request) -> Response:
        return resolve(request, "datasets", ns, name, revision, path)

    @app.api_route("/{ns}/{name}/resolve/{revision}/{path:path}", methods=["GET", "HEAD"])
    async def resolve_model(ns: str, name: str, revision: str, path: str, request: Request) -> Response:
        return resolve(request, "models", ns, name, revision, path)

    return app


@dataclass(frozen=True)
class RunningHub:
    url: str
    hub: FakeHub


@contextlib.contextmanager
def running_hub(hub: FakeHub | None = None) -> Iterator[RunningHub]:
    """Serve a (new) FakeHub on a free 127.0.0.1 port for the duration of the block."""
    hub = hub or FakeHub()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # log_config=None: leave the test session's logging configuration alone.
    config = uvicorn.Config(
        create_app(hub), lifespan="off", log_config=None, access_log=False, timeout_graceful_shutdown=2
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="hub-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError("the test hub did not start")
        time.sleep(0.01)
    try:
        yield RunningHub(f"http://127.0.0.1:{port}", hub)
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
