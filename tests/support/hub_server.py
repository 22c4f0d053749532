"""A loopback Hugging Face Hub for tests: a real HTTP server on 127.0.0.1.

It implements the subset of the Hub API that ``huggingface_hub`` uses for ``model_info``,
``list_repo_tree``/``list_repo_files``, ``hf_hub_download``/``snapshot_download`` (``HEAD``/``GET``
on ``resolve``), ``create_commit`` (``preupload`` + NDJSON ``commit``, with ``create_pr=1`` and
``parentCommit``), ``get_repo_discussions`` (paged, filtered by type and status) and
``get_discussion_details``. Repos can be gated (file downloads refused with ``GatedRepo``) or have
discussions disabled (listing and pull requests refused with 403). Every request is recorded;
failures (401, 403, 404, dropped connection) can be injected per request.

Example:
    >>> hub = FakeHub()
    >>> hub.add_repo("org/model", {"chat_template.jinja": b"{{ messages }}"})  # doctest: +SKIP
    >>> with hub.serving() as url:  # doctest: +SKIP
    ...     os.environ["HF_ENDPOINT"] = url
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

#: Files at or above this size are served like LFS files (``X-Linked-Etag``/``X-Linked-Size``).
LFS_THRESHOLD = 1024 * 1024


def git_blob_sha(data: bytes) -> str:
    """The git blob id of ``data`` (what the Hub sends as ``ETag`` for regular files)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class RecordedRequest:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""

    @property
    def authorization(self) -> str | None:
        return self.headers.get("authorization")


@dataclass
class Commit:
    """A commit (or pull request) the server accepted."""

    repo_id: str
    revision: str
    summary: str
    description: str
    files: dict[str, bytes]
    oid: str
    create_pr: bool
    pr_num: int | None = None


@dataclass
class FakeDiscussion:
    """A discussion or pull request; its description is the first comment."""

    num: int
    title: str
    description: str
    status: str = "open"  # "open", "closed", "merged", "draft"
    is_pull_request: bool = True
    author: str = "someone"


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, bytes]
    sha: str
    private: bool = False
    sizes: dict[str, int] = field(default_factory=dict)  # declared sizes (e.g. huge weights)
    refs: dict[str, str] = field(default_factory=dict)
    snapshots: dict[str, dict[str, bytes]] = field(default_factory=dict)
    gated: bool = False  # metadata is public, files are refused (GatedRepo)
    discussions_disabled: bool = False
    discussions: list[FakeDiscussion] = field(default_factory=list)

    def add_discussion(
        self,
        title: str,
        description: str,
        *,
        status: str = "open",
        is_pull_request: bool = True,
        author: str = "someone",
    ) -> FakeDiscussion:
        """Add a discussion (by default an open pull request) numbered after the existing ones."""
        discussion = FakeDiscussion(
            len(self.discussions) + 1, title, description, status, is_pull_request, author
        )
        self.discussions.append(discussion)
        return discussion

    def head(self, branch: str = "main") -> dict[str, bytes]:
        """The files on ``branch`` now."""
        return self.snapshots[self.refs[branch]]


@dataclass
class Failure:
    """An injected failure: requests whose ``METHOD path`` matches ``pattern`` fail."""

    pattern: re.Pattern[str]
    kind: str  # "401", "403", "404", "drop"
    times: int | None  # None: always


class FakeHub:
    """In-memory Hub state plus the HTTP server serving it."""

    def __init__(self, token: str | None = None) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[RecordedRequest] = []
        self.commits: list[Commit] = []
        self.failures: list[Failure] = []
        self.token = token  # when set, writes (and private repos) need "Bearer <token>"
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._counter = 0

    # ---- state -------------------------------------------------------------------------------
    def _new_sha(self, seed: str) -> str:
        self._counter += 1
        return hashlib.sha1(f"{seed}:{self._counter}".encode()).hexdigest()

    def add_repo(
        self,
        repo_id: str,
        files: dict[str, bytes],
        *,
        private: bool = False,
        sizes: dict[str, int] | None = None,
        gated: bool = False,
        discussions_disabled: bool = False,
    ) -> FakeRepo:
        """Create ``repo_id`` with ``files`` on ``main``. ``sizes`` declares sizes for listing only."""
        sha = self._new_sha(repo_id)
        repo = FakeRepo(
            repo_id,
            dict(files),
            sha,
            private,
            dict(sizes or {}),
            gated=gated,
            discussions_disabled=discussions_disabled,
        )
        repo.refs["main"] = sha
        repo.snapshots[sha] = dict(files)
        self.repos[repo_id] = repo
        return repo

    def fail(self, pattern: str, kind: str, times: int | None = None) -> None:
        """Make requests matching ``pattern`` (regex on ``"METHOD /path"``) fail with ``kind``."""
        self.failures.append(Failure(re.compile(pattern), kind, times))

    def downloaded(self) -> list[str]:
        """Repo file paths fetched with ``GET .../resolve/...`` (in order)."""
        out = []
        for request in self.requests:
            match = _RESOLVE.match(request.path)
            if request.method == "GET" and match:
                out.append(unquote(match.group("path")))
        return out

    def touched(self) -> list[str]:
        """Repo file paths asked about with ``HEAD`` or ``GET`` on ``resolve``."""
        return [unquote(m.group("path")) for r in self.requests if (m := _RESOLVE.match(r.path))]

    # ---- server ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def serving(self) -> Iterator[str]:
        """Serve on a free loopback port; yields the endpoint URL."""
        hub = self

        class Handler(_Handler):
            fake = hub

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        self._server = server
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(5)

    def _take_failure(self, method: str, path: str) -> str | None:
        with self._lock:
            for failure in self.failures:
                if failure.times == 0:
                    continue
                if failure.pattern.search(f"{method} {path}"):
                    if failure.times is not None:
                        failure.times -= 1
                    return failure.kind
        return None


_REPO = r"(?P<repo>[^/]+/[^/]+)"
_INFO = re.compile(rf"^/api/models/{_REPO}(?:/revision/(?P<rev>[^/]+))?$")
_TREE = re.compile(rf"^/api/models/{_REPO}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$")
_RESOLVE = re.compile(rf"^/{_REPO}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$")
_PREUPLOAD = re.compile(rf"^/api/models/{_REPO}/preupload/(?P<rev>[^/]+)$")
_COMMIT = re.compile(rf"^/api/models/{_REPO}/commit/(?P<rev>[^/]+)$")
_DISCUSSION = re.compile(rf"^/api/models/{_REPO}/discussions/(?P<num>\d+)$")
_DISCUSSIONS = re.compile(rf"^/api/models/{_REPO}/discussions$")
#: Discussions per page of ``GET .../discussions`` (the Hub pages them; small to test paging).
PAGE_SIZE = 3
DISABLED = "Discussions are disabled for this repo"


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeHub

    def log_message(self, format: str, *args: Any) -> None:  # silence
        pass

    # ---- plumbing ----------------------------------------------------------------------------
    def _send(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None, head: bool = False
    ) -> None:
        self.send_response(status)
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(
        self, status: int, data: Any, headers: dict[str, str] | None = None, head: bool = False
    ) -> None:
        self._send(
            status, json.dumps(data).encode(), {"Content-Type": "application/json", **(headers or {})}, head
        )

    def _error(self, status: int, code: str | None, message: str, head: bool = False) -> None:
        headers = {"X-Error-Message": message}
        if code:
            headers["X-Error-Code"] = code
        self._json(status, {"error": message}, headers, head)

    def _drop(self) -> None:
        """Announce a body, send half of nothing, and close the socket."""
        self.wfile.write(
            b'HTTP/1.1 200 OK\r\nContent-Length: 1000\r\nContent-Type: application/json\r\n\r\n{"id'
        )
        self.wfile.flush()
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(2)

    def _handle(self, method: str) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path) if not _RESOLVE.match(split.path) else split.path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        request = RecordedRequest(method, split.path, parse_qs(split.query), headers, body)
        self.fake.requests.append(request)
        failure = self.fake._take_failure(method, split.path)
        head = method == "HEAD"
        if failure == "drop":
            return self._drop()
        if failure == "401":
            return self._error(401, None, "Invalid credentials in Authorization header", head)
        if failure == "403":
            return self._error(403, None, "You don't have the rights to write to this repo", head)
        if failure == "404":
            return self._error(404, "RepoNotFound", "Repository not found", head)
        try:
            self._route(method, path, split.path, request, head)
        except Exception as error:  # pragma: no cover - a bug in the fake, surfaced to the test
            self._error(500, None, f"fake hub error: {error!r}", head)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_HEAD(self) -> None:
        self._handle("HEAD")

    def do_POST(self) -> None:
        self._handle("POST")

    # ---- routes ------------------------------------------------------------------------------
    def _repo(
        self, repo_id: str, request: RecordedRequest, head: bool, write: bool = False
    ) -> FakeRepo | None:
        repo = self.fake.repos.get(repo_id)
        token = self.fake.token
        authorized = token is None or request.authorization == f"Bearer {token}"
        if repo is None or (repo.private and not authorized):
            self._error(
                401 if not request.authorization else 404, "RepoNotFound", "Repository not found", head
            )
            return None
        if write and not authorized:
            self._error(401, None, "Invalid credentials in Authorization header", head)
            return None
        return repo

    def _snapshot(self, repo: FakeRepo, rev: str, head: bool) -> tuple[str, dict[str, bytes]] | None:
        rev = unquote(rev)
        sha = repo.refs.get(rev) or (rev if rev in repo.snapshots else None)
        if sha is None:
            self._error(404, "RevisionNotFound", f"Invalid rev id: {rev}", head)
            return None
        return sha, repo.snapshots[sha]

    def _size(self, repo: FakeRepo, path: str, data: bytes) -> int:
        return repo.sizes.get(path, len(data))

    def _route(self, method: str, path: str, raw_path: str, request: RecordedRequest, head: bool) -> None:
        fake = self.fake
        if method == "GET" and (m := _INFO.match(path)):
            repo = self._repo(m["repo"], request, head)
            if repo is None:
                return
            snap = self._snapshot(repo, m["rev"] or "main", head)
            if snap is None:
                return
            sha, files = snap
            siblings = [{"rfilename": name} for name in sorted(files)]
            return self._json(
                200,
                {
                    "_id": sha[:24],
                    "id": repo.repo_id,
                    "modelId": repo.repo_id,
                    "sha": sha,
                    "private": repo.private,
                    "siblings": siblings,
                    "tags": [],
                    "lastModified": "2025-08-08T00:00:00.000Z",
                },
            )
        if method == "GET" and (m := _TREE.match(path)):
            repo = self._repo(m["repo"], request, head)
            if repo is None:
                return
            snap = self._snapshot(repo, m["rev"], head)
            if snap is None:
                return
            _, files = snap
            prefix = (m["path"] or "").strip("/")
            entries = []
            for name, data in sorted(files.items()):
                if prefix and not name.startswith(prefix + "/"):
                    continue
                size = self._size(repo, name, data)
                entry: dict[str, Any] = {
                    "type": "file",
                    "oid": git_blob_sha(data),
                    "size": size,
                    "path": name,
                }
                if size >= LFS_THRESHOLD:
                    entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": size, "pointerSize": 134}
                entries.append(entry)
            return self._json(200, entries)
        if method in ("GET", "HEAD") and (m := _RESOLVE.match(raw_path)):
            repo = self._repo(m["repo"], request, head)
            if repo is None:
                return
            if repo.gated:
                return self._error(
                    403,
                    "GatedRepo",
                    f"Access to model {repo.repo_id} is restricted and you are not in the "
                    "authorized list. Visit the repo page to ask for access.",
                    head,
                )
            snap = self._snapshot(repo, m["rev"], head)
            if snap is None:
                return
            sha, files = snap
            name = unquote(m["path"])
            if name not in files:
                return self._json(
                    404,
                    {"error": "Entry not found"},
                    {
                        "X-Error-Code": "EntryNotFound",
                        "X-Error-Message": "Entry not found",
                        "X-Repo-Commit": sha,
                    },
                    head,
                )
            data = files[name]
            headers = {
                "X-Repo-Commit": sha,
                "ETag": f'"{git_blob_sha(data)}"',
                "Content-Type": "application/octet-stream",
                "Accept-Ranges": "bytes",
            }
            if self._size(repo, name, data) >= LFS_THRESHOLD:
                headers["X-Linked-Etag"] = f'"{hashlib.sha256(data).hexdigest()}"'
                headers["X-Linked-Size"] = str(len(data))
            return self._send(200, data, headers, head)
        if method == "POST" and (m := _PREUPLOAD.match(path)):
            repo = self._repo(m["repo"], request, head, write=True)
            if repo is None:
                return
            payload = json.loads(request.body or b"{}")
            files = [
                {
                    "path": f["path"],
                    "uploadMode": "lfs" if f["size"] >= LFS_THRESHOLD else "regular",
                    "shouldIgnore": False,
                    "oid": None,
                }
                for f in payload.get("files", [])
            ]
            return self._json(200, {"files": files, "commitOid": repo.refs["main"]})
        if method == "POST" and (m := _COMMIT.match(path)):
            repo = self._repo(m["repo"], request, head, write=True)
            if repo is None:
                return
            snap = self._snapshot(repo, m["rev"], head)
            if snap is None:
                return
            parent, files = snap
            lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
            header = next(item["value"] for item in lines if item["key"] == "header")
            create_pr = request.query.get("create_pr") == ["1"]
            if create_pr and repo.discussions_disabled:
                return self._error(403, None, DISABLED, head)
            wanted_parent = header.get("parentCommit")
            if wanted_parent:
                if create_pr and wanted_parent in repo.snapshots:
                    parent, files = wanted_parent, repo.snapshots[wanted_parent]
                elif wanted_parent != parent:
                    return self._error(
                        412, None, "A commit has happened since. Please refresh and try again."
                    )
            new_files = dict(files)
            changed: dict[str, bytes] = {}
            for item in lines:
                if item["key"] == "file":
                    content = base64.b64decode(item["value"]["content"])
                    new_files[item["value"]["path"]] = content
                    changed[item["value"]["path"]] = content
                elif item["key"] == "deletedFile":
                    new_files.pop(item["value"]["path"], None)
            with fake._lock:
                oid = fake._new_sha(repo.repo_id + "commit")
                repo.snapshots[oid] = new_files
                base = f"http://127.0.0.1:{self.server.server_address[1]}/{repo.repo_id}"
                commit = Commit(
                    repo.repo_id,
                    unquote(m["rev"]),
                    header["summary"],
                    header.get("description", ""),
                    changed,
                    oid,
                    create_pr,
                )
                if create_pr:
                    pr = repo.add_discussion(
                        header["summary"], header.get("description", ""), author="templatefix-test"
                    )
                    commit.pr_num = pr.num
                    repo.refs[f"refs/pr/{commit.pr_num}"] = oid
                else:
                    repo.refs[unquote(m["rev"])] = oid
                fake.commits.append(commit)
            result = {"commitUrl": f"{base}/commit/{oid}", "commitOid": oid, "success": True}
            result["pullRequestUrl"] = f"{base}/discussions/{commit.pr_num}" if create_pr else None
            return self._json(200, result)
        if method == "GET" and (m := _DISCUSSIONS.match(path)):
            repo = self._repo(m["repo"], request, head)
            if repo is None:
                return
            if repo.discussions_disabled:
                return self._error(403, None, DISABLED, head)
            wanted_type = (request.query.get("type") or ["all"])[0]
            wanted_status = (request.query.get("status") or ["all"])[0]
            page = int((request.query.get("p") or ["0"])[0])
            selected = [
                d
                for d in reversed(repo.discussions)  # newest first, as the Hub lists them
                if wanted_type in ("all", "pull_request" if d.is_pull_request else "discussion")
                and wanted_status in ("all", d.status)
            ]
            start = page * PAGE_SIZE
            return self._json(
                200,
                {
                    "discussions": [_discussion_json(repo, d) for d in selected[start : start + PAGE_SIZE]],
                    "count": len(selected),
                    "start": start,
                    "numClosedDiscussions": sum(d.status != "open" for d in repo.discussions),
                },
            )
        if method == "GET" and (m := _DISCUSSION.match(path)):
            repo = self._repo(m["repo"], request, head)
            if repo is None:
                return
            num = int(m["num"])
            discussion = next((d for d in repo.discussions if d.num == num), None)
            if discussion is None:
                return self._error(404, None, "Discussion not found", head)
            return self._json(
                200,
                {
                    **_discussion_json(repo, discussion),
                    "events": [
                        {
                            "id": f"{num}-1",
                            "type": "comment",
                            "createdAt": "2025-08-08T00:00:00.000Z",
                            "author": {"name": discussion.author},
                            "data": {
                                "latest": {
                                    "raw": discussion.description,
                                    "html": "",
                                    "updatedAt": "2025-08-08T00:00:00.000Z",
                                    "author": {"name": discussion.author},
                                },
                                "numEdits": 0,
                                "editors": [],
                                "reactions": [],
                                "identifiedLanguage": None,
                                "edited": False,
                                "isReport": False,
                                "hidden": False,
                            },
                        }
                    ],
                    "filesWithConflicts": [],
                    "target": {},
                    "changes": {"base": "refs/heads/main"},
                    "diff": "",
                    "collection": "discussions",
                },
            )
        if method == "POST" and path == "/api/validate-yaml":  # README.md front matter check
            return self._json(200, {"errors": [], "warnings": []})
        if method == "GET" and path == "/api/whoami-v2":
            if request.authorization is None:
                return self._error(401, None, "Invalid credentials in Authorization header", head)
            return self._json(200, {"type": "user", "name": "templatefix-test", "auth": {}})
        return self._error(404, None, f"no route for {method} {path}", head)


def _discussion_json(repo: FakeRepo, discussion: FakeDiscussion) -> dict[str, Any]:
    return {
        "num": discussion.num,
        "title": discussion.title,
        "status": discussion.status,
        "isPullRequest": discussion.is_pull_request,
        "createdAt": "2025-08-08T00:00:00.000Z",
        "author": {"name": discussion.author},
        "repo": {"name": repo.repo_id, "type": "model"},
        "pinned": False,
        "locked": False,
        "isReport": False,
        "topReactions": [],
        "numComments": 1,
        "numReactionUsers": 0,
    }


# ---- pytest glue -------------------------------------------------------------------------------

TEST_TOKEN = "hf_templatefixTESTtoken0123456789"


def hub_environment(monkeypatch: Any, tmp_path: Any, url: str, token: str | None = TEST_TOKEN) -> None:
    """Point huggingface_hub at ``url`` with a private cache under ``tmp_path``; online mode.

    huggingface_hub reads its ``HF_*`` variables once, when it is imported, into
    ``huggingface_hub.constants``; templatefix leaves them to it. So this sets both: the
    environment (for subprocesses) and the constants of the already-imported huggingface_hub.
    The token is read by huggingface_hub at call time, from the environment.
    """
    home = tmp_path / "hf-home"
    hub_constants(
        monkeypatch,
        ENDPOINT=url,
        HF_HOME=str(home),
        HF_HUB_CACHE=str(home / "hub"),
        HF_HUB_OFFLINE=False,
        HF_HUB_DISABLE_TELEMETRY=True,
        HF_HUB_ETAG_TIMEOUT=5,
        HF_HUB_DISABLE_XET=True,
    )
    _reset_sessions()
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("HF_HUB_ETAG_TIMEOUT", "5")
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    if token is None:
        monkeypatch.delenv("HF_TOKEN", raising=False)
    else:
        monkeypatch.setenv("HF_TOKEN", token)


def hub_offline(monkeypatch: Any, offline: bool) -> None:
    """Switch huggingface_hub's offline mode (``HF_HUB_OFFLINE``) for this process and its children."""
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub_constants(monkeypatch, HF_HUB_OFFLINE=offline)
    _reset_sessions()


def _reset_sessions() -> None:
    """huggingface_hub < 1.0 decides offline mode when it creates a thread's HTTP session."""
    from huggingface_hub import utils

    reset = getattr(utils, "reset_sessions", None)
    if reset is not None:
        reset()


def hub_constants(monkeypatch: Any, **values: Any) -> None:
    """Set ``huggingface_hub.constants`` values, and the copies modules made of them at import."""
    import importlib

    from huggingface_hub import constants

    if "ENDPOINT" in values:
        values["HUGGINGFACE_CO_URL_TEMPLATE"] = (
            values["ENDPOINT"] + "/{repo_id}/resolve/{revision}/{filename}"
        )
    modules = [constants]
    for name in (
        "huggingface_hub.file_download",
        "huggingface_hub.hf_api",
        "huggingface_hub._snapshot_download",
    ):
        try:
            modules.append(importlib.import_module(name))
        except ImportError:  # pragma: no cover - layout differs between releases
            continue
    for module in modules:
        for key, value in values.items():
            if module is constants or hasattr(module, key):
                monkeypatch.setattr(module, key, value, raising=False)
