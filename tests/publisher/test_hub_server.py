"""The test hub (tests/utils/hub_server.py) driven by the real huggingface_hub client.

Besides proving the fake is faithful, these tests pin down how huggingface_hub 2.4.0 itself behaves on
429/500/412, which the publisher's own retry logic has to build on.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, hf_hub_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    HfHubHTTPError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from tests.utils.hub_server import GITATTRIBUTES, STALE_PARENT, RunningHub, running_hub

pytestmark = pytest.mark.integration  # a Hub server on loopback

REPO = "warp/test-models"
TOKEN = "hf_test_token"
BINARY = bytes(range(256)) * 4 + b"\x00\xff\x89PNG\r\n\x1a\n"


@pytest.fixture
def running() -> Iterator[RunningHub]:
    with running_hub() as running:
        yield running


@pytest.fixture
def api(running: RunningHub) -> HfApi:
    api = HfApi(endpoint=running.url, token=TOKEN)
    api.create_repo(REPO, repo_type="dataset", exist_ok=True)
    return api


def commit(api: HfApi, files: dict[str, bytes], parent: str | None = None, message: str = "publish") -> str:
    operations = [CommitOperationAdd(path_in_repo=path, path_or_fileobj=data) for path, data in files.items()]
    info = api.create_commit(
        REPO, operations=operations, commit_message=message, repo_type="dataset", parent_commit=parent
    )
    return info.oid


def download(running: RunningHub, tmp_path: Path, filename: str, revision: str | None = None) -> bytes:
    path = hf_hub_download(
        REPO,
        filename,
        repo_type="dataset",
        revision=revision,
        endpoint=running.url,
        token=TOKEN,
        cache_dir=tmp_path / "cache",
    )
    assert Path(path).is_relative_to(tmp_path / "cache")
    return Path(path).read_bytes()


def head_sha(api: HfApi) -> str:
    return api.repo_info(REPO, repo_type="dataset").sha


def test_create_repo_twice_with_exist_ok(running: RunningHub) -> None:
    api = HfApi(endpoint=running.url, token=TOKEN)
    first = api.create_repo(REPO, repo_type="dataset", exist_ok=True)
    second = api.create_repo(REPO, repo_type="dataset", exist_ok=True)

    assert first == second == f"{running.url}/datasets/{REPO}"
    assert (second.repo_type, second.repo_id) == ("dataset", REPO)
    with pytest.raises(HfHubHTTPError) as refused:
        api.create_repo(REPO, repo_type="dataset")
    assert refused.value.response.status_code == 409
    assert running.hub.calls["create_repo"] == 3
    assert running.hub.last_authorization == f"Bearer {TOKEN}"
    # Like the Hub, a new repo starts with one commit holding .gitattributes.
    info = api.dataset_info(REPO)
    assert [s.rfilename for s in info.siblings] == [".gitattributes"]
    assert len(api.list_repo_commits(REPO, repo_type="dataset")) == 1


def test_three_files_land_in_one_commit(api: HfApi, running: RunningHub, tmp_path: Path) -> None:
    files = {"model.onnx": BINARY, "weights/labels.json": b'{"0": "cat"}', "README.txt": b"hello\n"}
    sha = commit(api, files, message="Publish model v1")

    assert running.hub.calls["commit"] == 1
    assert head_sha(api) == sha
    history = api.list_repo_commits(REPO, repo_type="dataset")
    assert [c.commit_id for c in history][0] == sha
    assert [c.title for c in history] == ["Publish model v1", "initial commit"]
    for path, data in files.items():
        assert download(running, tmp_path, path) == data
    assert running.hub.last_authorization == f"Bearer {TOKEN}"


def test_unchanged_files_are_dropped_by_the_client(api: HfApi, running: RunningHub) -> None:
    sha = commit(api, {"a.bin": b"same"})
    # preupload reports the file's blob id, so the client skips the commit entirely and returns the head.
    assert commit(api, {"a.bin": b"same"}) == sha
    assert running.hub.calls["commit"] == 1


def test_delete_operation(api: HfApi, running: RunningHub) -> None:
    commit(api, {"old.bin": b"x", "keep.bin": b"y"})
    api.create_commit(
        REPO, operations=[CommitOperationDelete("old.bin")], commit_message="drop", repo_type="dataset"
    )
    assert sorted(running.hub.repo(REPO).resolve("main").files) == [".gitattributes", "keep.bin"]


def test_parent_commit_is_honoured_and_a_stale_parent_refused(api: HfApi, running: RunningHub) -> None:
    parent = head_sha(api)
    first = commit(api, {"a.bin": b"1"}, parent=parent)
    assert running.hub.repo(REPO).resolve(first).parent == parent

    with pytest.raises(HfHubHTTPError) as refused:
        commit(api, {"a.bin": b"2"}, parent=parent)  # `first` has landed since
    # A plain HfHubHTTPError (no subclass for 412), carrying the Hub's message; the client does not retry it.
    assert type(refused.value) is HfHubHTTPError
    assert refused.value.response.status_code == 412
    assert STALE_PARENT in str(refused.value)
    assert running.hub.calls["commit"] == 2
    assert head_sha(api) == first

    running.hub.stale_parent_next()
    with pytest.raises(HfHubHTTPError) as injected:
        commit(api, {"a.bin": b"3"}, parent=first)
    assert injected.value.response.status_code == 412
    assert commit(api, {"a.bin": b"3"}, parent=first) != first


def test_tags_pin_a_version(api: HfApi, running: RunningHub, tmp_path: Path) -> None:
    v1 = commit(api, {"model.onnx": b"version 1"})
    api.create_tag(REPO, tag="v1", revision=v1, repo_type="dataset")
    v2 = commit(api, {"model.onnx": b"version 2"})

    refs = api.list_repo_refs(REPO, repo_type="dataset")
    assert [(t.name, t.ref, t.target_commit) for t in refs.tags] == [("v1", "refs/tags/v1", v1)]
    assert [(b.name, b.target_commit) for b in refs.branches] == [("main", v2)]
    assert download(running, tmp_path, "model.onnx", revision="v1") == b"version 1"
    assert download(running, tmp_path, "model.onnx", revision="main") == b"version 2"
    assert download(running, tmp_path, "model.onnx", revision=v1) == b"version 1"
    assert api.repo_info(REPO, repo_type="dataset", revision="v1").sha == v1

    with pytest.raises(HfHubHTTPError) as exists:
        api.create_tag(REPO, tag="v1", revision=v2, repo_type="dataset")
    assert exists.value.response.status_code == 409
    api.create_tag(REPO, tag="v1", revision=v2, repo_type="dataset", exist_ok=True)
    assert running.hub.repo(REPO).tags == {"v1": v1}

    api.delete_tag(REPO, tag="v1", repo_type="dataset")
    assert api.list_repo_refs(REPO, repo_type="dataset").tags == []
    with pytest.raises(RevisionNotFoundError):
        api.delete_tag(REPO, tag="v1", repo_type="dataset")
    with pytest.raises(RevisionNotFoundError):
        api.repo_info(REPO, repo_type="dataset", revision="v1")


def test_list_repo_tree(api: HfApi) -> None:
    first = commit(api, {"model.onnx": b"m", "weights/a.bin": b"aa", "weights/deep/b.bin": b"bbb"})
    commit(api, {"later.txt": b"l"})

    def tree(revision: str, path: str | None = None, recursive: bool = True) -> list[tuple[str, int | None]]:
        entries = api.list_repo_tree(REPO, path, recursive=recursive, revision=revision, repo_type="dataset")
        return [(e.path, getattr(e, "size", None)) for e in entries]

    assert tree(first) == [
        ("weights", None),
        ("weights/deep", None),
        (".gitattributes", len(GITATTRIBUTES)),
        ("model.onnx", 1),
        ("weights/a.bin", 2),
        ("weights/deep/b.bin", 3),
    ]
    assert ("later.txt", 1) in tree("main")
    assert tree(first, recursive=False) == [
        ("weights", None),
        (".gitattributes", len(GITATTRIBUTES)),
        ("model.onnx", 1),
    ]
    assert tree(first, "weights", recursive=False) == [("weights/deep", None), ("weights/a.bin", 2)]
    with pytest.raises(RemoteEntryNotFoundError):
        tree(first, "nowhere")


def test_download_uses_the_given_cache_and_then_serves_from_it(
    api: HfApi, running: RunningHub, tmp_path: Path
) -> None:
    sha = commit(api, {"model.onnx": BINARY})
    assert download(running, tmp_path, "model.onnx") == BINARY
    assert running.hub.log[-2:] == [("HEAD", "resolve"), ("GET", "resolve")]
    assert (tmp_path / "cache" / "datasets--warp--test-models" / "snapshots" / sha / "model.onnx").exists()

    before = running.hub.calls["resolve"]
    assert download(running, tmp_path, "model.onnx", revision=sha) == BINARY
    assert running.hub.calls["resolve"] == before  # a cached commit sha needs no request at all


def test_missing_file_revision_and_repo(api: HfApi, running: RunningHub, tmp_path: Path) -> None:
    with pytest.raises(RemoteEntryNotFoundError) as missing:
        download(running, tmp_path, "absent.onnx")
    assert isinstance(missing.value, EntryNotFoundError)
    assert missing.value.response.headers["X-Repo-Commit"] == head_sha(api)
    assert not api.file_exists(REPO, "absent.onnx", repo_type="dataset")
    with pytest.raises(RevisionNotFoundError):
        download(running, tmp_path, ".gitattributes", revision="v9")
    with pytest.raises(RepositoryNotFoundError):
        api.repo_info("warp/nothing", repo_type="dataset")


def test_commit_500_and_429_surface_at_once(api: HfApi, running: RunningHub) -> None:
    head = head_sha(api)
    running.hub.fail_next(500, route="commit")
    with pytest.raises(HfHubHTTPError) as server_error:
        commit(api, {"a.bin": b"1"})
    assert server_error.value.response.status_code == 500

    running.hub.fail_next(429, retry_after=30, route="commit")
    with pytest.raises(HfHubHTTPError) as limited:
        commit(api, {"a.bin": b"1"})
    assert type(limited.value) is HfHubHTTPError
    assert limited.value.response.status_code == 429
    assert limited.value.response.headers["Retry-After"] == "30"

    # The commit POST is never retried by huggingface_hub (a retry could duplicate a commit).
    assert running.hub.calls["commit"] == 2
    assert head_sha(api) == head


def test_token_can_be_required(running: RunningHub) -> None:
    running.hub.require_token = True
    with pytest.raises(HfHubHTTPError) as refused:
        HfApi(endpoint=running.url, token=False).create_repo(REPO, repo_type="dataset")
    assert refused.value.response.status_code == 401
    HfApi(endpoint=running.url, token=TOKEN).create_repo(REPO, repo_type="dataset")


def test_server_stops_on_exit() -> None:
    with running_hub() as running:
        url = running.url
    # refused, not left hanging: nothing listens on the port any more
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=5).close()
    with pytest.raises(httpx2.ConnectError):
        HfApi(endpoint=url, token=TOKEN).repo_info(REPO, repo_type="dataset")
