"""Where releases go: the Hugging Face Hub, or a local directory laid out like a Hub repo.

Both give the same guarantee: a release is one commit holding every file, tagged with its version, and
publishing a version that is already there (a redelivery, a retry after a crash) finds it instead of committing
again. The version is written into the commit message, so a commit whose tag was never created is found too.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

# A private deployment has no business reporting to huggingface.co (huggingface_hub reads this at import).
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from huggingface_hub import CommitOperationAdd, HfApi  # noqa: E402
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError  # noqa: E402

from services.publisher.domain import Published  # noqa: E402

log = logging.getLogger(__name__)


class PermanentPublishError(RuntimeError):
    """Retrying cannot help (authentication, a missing repository, a refused request)."""


def commit_message(version: str) -> str:
    return f"warp-loop release {version}"


class Hub(Protocol):
    def publish(self, version: str, files: Mapping[str, bytes], *, tag: bool = True) -> Published: ...

    def read(self, revision: str, path: str) -> bytes: ...


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 8
    base_seconds: float = 1.0
    max_seconds: float = 60.0

    def delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after:
            try:
                return min(self.max_seconds, max(0.0, float(retry_after)))
            except ValueError:
                pass
        return min(self.max_seconds, self.base_seconds * 2**attempt)


class HfHub:
    """The real Hub through ``huggingface_hub``: optimistic concurrency on the parent commit, then a tag."""

    def __init__(
        self,
        endpoint: str,
        token: str,
        repo_id: str,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._api = HfApi(endpoint=endpoint, token=token)
        self._repo_id = repo_id
        self._retry = retry
        self._sleep = sleep
        self._ready = False

    def publish(self, version: str, files: Mapping[str, bytes], *, tag: bool = True) -> Published:
        return self._with_retries(lambda: self._publish_once(version, files, tag))

    def read(self, revision: str, path: str) -> bytes:
        from huggingface_hub import hf_hub_download

        local = self._with_retries(
            lambda: hf_hub_download(
                self._repo_id,
                path,
                repo_type="dataset",
                revision=revision,
                endpoint=self._api.endpoint,
                token=self._api.token,
            )
        )
        return Path(local).read_bytes()

    def _publish_once(self, version: str, files: Mapping[str, bytes], tag: bool) -> Published:
        if not self._ready:
            self._api.create_repo(self._repo_id, repo_type="dataset", exist_ok=True)
            self._ready = True
        refs = self._api.list_repo_refs(self._repo_id, repo_type="dataset")
        tagged = {t.name: t.target_commit for t in refs.tags}
        if version in tagged:
            return Published(tagged[version], version)
        commit = self._find_commit(version)
        if commit is None:
            head = next((b.target_commit for b in refs.branches if b.name == "main"), None)
            operations = [
                CommitOperationAdd(path_in_repo=path, path_or_fileobj=data) for path, data in files.items()
            ]
            info = self._api.create_commit(
                self._repo_id,
                operations,
                commit_message=commit_message(version),
                repo_type="dataset",
                parent_commit=head,
            )
            commit = info.oid
        if tag:
            self._api.create_tag(
                self._repo_id, tag=version, revision=commit, repo_type="dataset", exist_ok=True
            )
        return Published(commit, version if tag else "")

    def _find_commit(self, version: str) -> str | None:
        try:
            commits = self._api.list_repo_commits(self._repo_id, repo_type="dataset")
        except HfHubHTTPError as error:
            if error.response is not None and error.response.status_code == 404:
                return None  # an empty repository has no commits to list
            raise
        wanted = commit_message(version)
        return next((c.commit_id for c in commits if c.title == wanted), None)

    def _with_retries(self, action):
        for attempt in range(self._retry.attempts + 1):
            try:
                return action()
            except RepositoryNotFoundError as error:
                raise PermanentPublishError(
                    f"Hub repository {self._repo_id} not found or not accessible: {error}"
                ) from error
            except HfHubHTTPError as error:
                status = error.response.status_code if error.response is not None else None
                if status in (401, 403):
                    raise PermanentPublishError(f"Hub refused the token ({status})") from error
                transient = status is None or status in (409, 412, 429) or status >= 500
                if not transient:
                    raise PermanentPublishError(f"Hub answered {status}: {error}") from error
                if attempt == self._retry.attempts:
                    raise
                retry_after = (
                    error.response.headers.get("Retry-After") if error.response is not None else None
                )
                delay = self._retry.delay(attempt, retry_after)
                # 412: another commit landed since we read the parent; the next attempt reads it again
                log.warning("Hub answered %s; retrying in %.1fs (attempt %d)", status, delay, attempt + 1)
                self._sleep(delay)
            except (ConnectionError, TimeoutError, OSError) as error:
                if attempt == self._retry.attempts:
                    raise
                delay = self._retry.delay(attempt, None)
                log.warning("Hub unreachable (%r); retrying in %.1fs", error, delay)
                self._sleep(delay)
        raise AssertionError("unreachable")


class LocalHub:
    """A directory laid out like the Hub repo, for when no token is configured.

        <root>/<repo_id>/main                  -> commits/<commit>   (symlink: the current release)
        <root>/<repo_id>/commits/<commit>/...  every file of that release, kept side by side
        <root>/<repo_id>/refs/tags/<version>   the commit of a version

    A release is written aside in a temporary directory, flushed, renamed into place, and only then does
    ``main`` switch to it (``os.replace`` of a symlink is atomic): a crash at any moment leaves the previous
    release intact.
    """

    def __init__(self, root: Path, repo_id: str) -> None:
        self.repo = Path(root) / repo_id
        (self.repo / "commits").mkdir(parents=True, exist_ok=True)
        (self.repo / "refs" / "tags").mkdir(parents=True, exist_ok=True)

    @property
    def current(self) -> Path:
        return self.repo / "main"

    def publish(self, version: str, files: Mapping[str, bytes], *, tag: bool = True) -> Published:
        tag_file = self.repo / "refs" / "tags" / version
        if tag and tag_file.exists():
            return Published(tag_file.read_text().strip(), version)
        for path in files:
            if Path(path).is_absolute() or ".." in Path(path).parts:
                raise PermanentPublishError(f"file {path!r} would be written outside the release")
        base = self.current.resolve() if self.current.exists() else None
        merged = _read_tree(base) if base else {}
        merged.update(files)  # like a Hub commit: files not in this release stay as they were
        digest = hashlib.sha1(commit_message(version).encode())
        for path in sorted(merged):
            digest.update(path.encode() + b"\0" + hashlib.sha256(merged[path]).digest())
        commit = digest.hexdigest()
        target = self.repo / "commits" / commit
        if not target.exists():
            staging = Path(tempfile.mkdtemp(prefix=".incoming-", dir=self.repo / "commits"))
            try:
                for path, data in merged.items():
                    destination = staging / path
                    destination.parent.mkdir(parents=True, exist_ok=True)
                    with open(destination, "wb") as handle:
                        handle.write(data)
                        handle.flush()
                        os.fsync(handle.fileno())
                os.rename(staging, target)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        _atomic_symlink(Path("commits") / commit, self.current)
        if tag:
            _atomic_write(tag_file, commit.encode())
        return Published(commit, version if tag else "")

    def read(self, revision: str, path: str) -> bytes:
        tag_file = self.repo / "refs" / "tags" / revision
        commit = tag_file.read_text().strip() if tag_file.exists() else revision
        return (self.repo / "commits" / commit / path).read_bytes()


def _read_tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _atomic_symlink(target: Path, link: Path) -> None:
    temporary = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    os.symlink(target, temporary)
    os.replace(temporary, link)


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)
