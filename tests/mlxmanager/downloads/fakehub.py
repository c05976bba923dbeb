"""A fake Hugging Face hub: a real HTTP server on 127.0.0.1 for the real huggingface_hub client.

It serves what huggingface_hub 2.4 asks for:

- `GET /api/models` (search: `search`, `filter`, `pipeline_tag`, `sort`, `limit`, `expand`)
- `GET /api/models/{org}/{name}[/revision/{rev}]` (`blobs=True` adds sizes and LFS info)
- `HEAD|GET /{org}/{name}/resolve/{rev}/{file}`: small files answer 200 with `ETag`,
  `X-Repo-Commit` and `Content-Length`; LFS files (`*.safetensors`) answer 302 to a CDN on
  another origin (`localhost` instead of `127.0.0.1`) with `X-Linked-Etag` and
  `X-Linked-Size`, as the real hub does, so the client does not follow the redirect on HEAD
  and drops the token on GET
- `GET /cdn/{sha256}`: the bytes, with `Range` requests (206 + `Content-Range`)

Knobs for tests: `raw` (path -> bytes answered to any request for that path), `throttle`
(bytes/s per response), `inject()` an HTTP status for matching requests, `drop()` a connection
after some body bytes, `kill_connections()` to cut every transfer in flight, `stop()`/`start()`
to take the whole hub down and up again on the same port. Every request is logged in `requests` (method, path, Range header, token seen).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

_RANGE = re.compile(r"bytes=(\d+)-(\d*)$")


def git_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data, usedforsecurity=False).hexdigest()


@dataclass
class FakeFile:
    name: str
    data: bytes

    @property
    def lfs(self) -> bool:
        return self.name.endswith((".safetensors", ".npz", ".bin", ".gguf"))

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def oid(self) -> str:
        return git_oid(self.data)


@dataclass
class FakeRepo:
    repo_id: str
    files: dict[str, FakeFile]
    sha: str
    tags: list[str] = field(default_factory=list)
    pipeline_tag: str | None = None
    library_name: str | None = None
    downloads: int = 0
    likes: int = 0
    last_modified: datetime = field(default_factory=lambda: datetime(2025, 1, 1, tzinfo=UTC))
    gated: str | bool = False
    parameters: dict[str, int] | None = None

    def info(self, *, blobs: bool) -> dict[str, Any]:
        siblings = []
        for f in self.files.values():
            entry: dict[str, Any] = {"rfilename": f.name}
            if blobs:
                entry |= {"size": len(f.data), "blobId": f.oid}
                if f.lfs:
                    entry["lfs"] = {"size": len(f.data), "sha256": f.sha256, "pointerSize": 134}
            siblings.append(entry)
        body: dict[str, Any] = {
            "_id": hashlib.md5(self.repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
            "id": self.repo_id,
            "modelId": self.repo_id,
            "author": self.repo_id.split("/")[0],
            "sha": self.sha,
            "lastModified": self.last_modified.strftime("%Y-%m-%dT%H:%M:%S.000Z"),
            "createdAt": "2024-06-01T00:00:00.000Z",
            "private": False,
            "gated": self.gated,
            "disabled": False,
            "downloads": self.downloads,
            "likes": self.likes,
            "tags": self.tags,
            "pipeline_tag": self.pipeline_tag,
            "library_name": self.library_name,
            "siblings": siblings,
        }
        if self.parameters:
            body["safetensors"] = {"parameters": self.parameters, "total": sum(self.parameters.values())}
        return body


@dataclass
class Seen:
    method: str
    path: str
    range: str | None
    token: str | None


@dataclass
class _Rule:
    status: int
    method: str | None
    path_contains: str
    times: int | None
    headers: dict[str, str]


@dataclass
class _Drop:
    path_contains: str
    after: int
    times: int | None


class FakeHub:
    def __init__(self) -> None:
        self.repos: dict[str, FakeRepo] = {}
        self.requests: list[Seen] = []
        self.throttle: int | None = None  # bytes per second per response
        self.tokens: set[str] = set()  # tokens that may read gated repos
        # Paths answered as-is, whatever they are (a hostile hub serves anything it is asked for,
        # e.g. the path a client reaches for a file it lists as `../../evil.txt`).
        self.raw: dict[str, bytes] = {}
        self._rules: list[_Rule] = []
        self._drops: list[_Drop] = []
        self._lock = threading.Lock()
        self._conns: set[socket.socket] = set()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    # --- lifecycle -----------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cdn(self) -> str:
        return f"http://localhost:{self.port}"

    def start(self) -> FakeHub:
        hub = self

        class Handler(_Handler):
            fake = hub

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

        self._server = Server(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})
        self._thread.daemon = True
        self._thread.start()
        return self

    def stop(self) -> None:
        """Take the hub down: no new connections, and every transfer in flight is cut."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        self.kill_connections()

    def kill_connections(self) -> None:
        with self._lock:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    # --- content -------------------------------------------------------------------

    def add_repo(self, repo_id: str, files: dict[str, Any], **meta: Any) -> FakeRepo:
        """`files`: name -> bytes, text, or a JSON-able dict/list."""
        encoded = {}
        for name, content in files.items():
            if isinstance(content, (dict, list)):
                content = json.dumps(content, indent=2)
            if isinstance(content, str):
                content = content.encode()
            encoded[name] = FakeFile(name, content)
        digest = hashlib.sha1(repo_id.encode(), usedforsecurity=False)
        for name in sorted(encoded):
            digest.update(name.encode() + encoded[name].data)
        sha = digest.hexdigest()
        repo = FakeRepo(repo_id=repo_id, files=encoded, sha=sha, **meta)
        self.repos[repo_id] = repo
        return repo

    def blob(self, sha256: str) -> FakeFile | None:
        for repo in self.repos.values():
            for f in repo.files.values():
                if f.sha256 == sha256:
                    return f
        return None

    # --- fault injection ------------------------------------------------------------

    def inject(
        self,
        status: int,
        *,
        path_contains: str = "",
        method: str | None = None,
        times: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        with self._lock:
            self._rules.append(_Rule(status, method, path_contains, times, headers or {}))

    def drop(self, path_contains: str, *, after: int, times: int | None = 1) -> None:
        """Close the connection after `after` body bytes of matching responses."""
        with self._lock:
            self._drops.append(_Drop(path_contains, after, times))

    def clear_faults(self) -> None:
        with self._lock:
            self._rules.clear()
            self._drops.clear()

    def _take_rule(self, method: str, path: str) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if (rule.method in (None, method)) and rule.path_contains in path:
                    if rule.times is not None:
                        rule.times -= 1
                        if rule.times <= 0:
                            self._rules.remove(rule)
                    return rule
        return None

    def _take_drop(self, path: str) -> int | None:
        with self._lock:
            for drop in self._drops:
                if drop.path_contains in path:
                    if drop.times is not None:
                        drop.times -= 1
                        if drop.times <= 0:
                            self._drops.remove(drop)
                    return drop.after
        return None

    # --- queries for assertions ------------------------------------------------------

    def ranges(self, path_contains: str) -> list[int]:
        """Start offsets of the Range requests for matching paths."""
        starts = []
        for seen in self.requests:
            if path_contains in seen.path and seen.method == "GET" and seen.range:
                m = _RANGE.match(seen.range)
                if m:
                    starts.append(int(m.group(1)))
        return starts

    def gets(self, path_contains: str) -> list[Seen]:
        return [s for s in self.requests if s.method == "GET" and path_contains in s.path]


class _Handler(BaseHTTPRequestHandler):
    fake: FakeHub
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake._conns.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.fake._lock:
                self.fake._conns.discard(self.connection)

    # --- dispatch --------------------------------------------------------------------

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def _token(self) -> str | None:
        auth = self.headers.get("authorization") or ""
        return auth[7:] if auth.lower().startswith("bearer ") else None

    def _dispatch(self, method: str) -> None:
        split = urlsplit(self.path)
        path, query = split.path, parse_qs(split.query)
        self.fake.requests.append(Seen(method, path, self.headers.get("Range"), self._token()))
        rule = self.fake._take_rule(method, path)
        if rule is not None:
            self._error(rule.status, "Injected failure", rule.headers)
            return
        try:
            if path in self.fake.raw:
                data = self.fake.raw[path]
                self._body(method, data, {"ETag": f'"{git_oid(data)}"', "X-Repo-Commit": "0" * 40}, path)
            elif path == "/api/models":
                self._search(query)
            elif path.startswith("/api/models/"):
                self._info(path[len("/api/models/") :], query)
            elif path.startswith("/cdn/"):
                self._cdn(method, path[len("/cdn/") :])
            elif "/resolve/" in path:
                self._resolve(method, path)
            else:
                self._error(404, "Not found")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # --- routes ------------------------------------------------------------------------

    def _search(self, query: dict[str, list[str]]) -> None:
        repos = list(self.fake.repos.values())
        text = (query.get("search") or [""])[0].lower()
        if text:
            repos = [r for r in repos if text in r.repo_id.lower()]
        for tag in query.get("filter", []):
            repos = [r for r in repos if tag in r.tags or tag == r.library_name]
        if query.get("pipeline_tag"):
            repos = [r for r in repos if r.pipeline_tag == query["pipeline_tag"][0]]
        sort = (query.get("sort") or [""])[0]
        if sort == "downloads":
            repos.sort(key=lambda r: r.downloads, reverse=True)
        elif sort == "likes":
            repos.sort(key=lambda r: r.likes, reverse=True)
        elif sort == "lastModified":
            repos.sort(key=lambda r: r.last_modified, reverse=True)
        limit = int((query.get("limit") or ["1000"])[0])
        expand = set(query.get("expand", []))
        items = []
        for repo in repos[:limit]:
            body = repo.info(blobs=False)
            if expand:
                body = {k: v for k, v in body.items() if k in expand or k in ("_id", "id")}
            else:
                body.pop("siblings")
            items.append(body)
        self._json(200, items)

    def _info(self, rest: str, query: dict[str, list[str]]) -> None:
        repo_id, _, revision = rest.partition("/revision/")
        repo = self._repo(repo_id)
        if repo is None:
            return
        if revision and unquote(revision) not in ("main", repo.sha):
            self._error(404, f"Invalid rev id: {unquote(revision)}", {"X-Error-Code": "RevisionNotFound"})
            return
        self._json(200, repo.info(blobs=(query.get("blobs") or [""])[0] in ("True", "true", "1")))

    def _repo(self, repo_id: str) -> FakeRepo | None:
        repo = self.fake.repos.get(unquote(repo_id))
        if repo is None:
            self._error(
                404,
                "Repository not found",
                {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
            )
        return repo

    def _resolve(self, method: str, path: str) -> None:
        head, _, tail = path.lstrip("/").partition("/resolve/")
        repo = self._repo(head)
        if repo is None:
            return
        revision, _, filename = tail.partition("/")
        revision, filename = unquote(revision), unquote(filename)
        if revision not in ("main", repo.sha):
            self._error(404, "Revision not found", {"X-Error-Code": "RevisionNotFound"})
            return
        if repo.gated and self._token() not in self.fake.tokens:
            message = (
                f"Access to model {repo.repo_id} is restricted. You must have access to it and be "
                "authenticated to access it. Please log in."
            )
            self._error(401, message, {"X-Error-Code": "GatedRepo", "X-Error-Message": message})
            return
        f = repo.files.get(filename)
        if f is None:
            self._error(404, "Entry not found", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": repo.sha})
            return
        common = {"X-Repo-Commit": repo.sha, "Accept-Ranges": "bytes"}
        if f.lfs:
            self.send_response(302)
            location = f"{self.fake.cdn}/cdn/{f.sha256}?repo={quote(repo.repo_id)}"
            for k, v in {
                **common,
                "Location": location,
                "ETag": f'"{f.oid}"',
                "X-Linked-Etag": f'"{f.sha256}"',
                "X-Linked-Size": str(len(f.data)),
                "Content-Length": "0",
            }.items():
                self.send_header(k, v)
            self.end_headers()
            return
        self._body(method, f.data, {**common, "ETag": f'"{f.oid}"'}, path)

    def _cdn(self, method: str, sha256: str) -> None:
        f = self.fake.blob(sha256)
        if f is None:
            self._error(404, "No such blob")
            return
        self._body(method, f.data, {"ETag": f'"{f.sha256}"', "Accept-Ranges": "bytes"}, f"/cdn/{f.name}")

    # --- responses -------------------------------------------------------------------

    def _body(self, method: str, data: bytes, headers: dict[str, str], label: str) -> None:
        start, end = 0, len(data) - 1
        status = 200
        header = self.headers.get("Range")
        if header:
            m = _RANGE.match(header.strip())
            if not m or int(m.group(1)) >= len(data):
                self._error(416, "Range not satisfiable", {"Content-Range": f"bytes */{len(data)}"})
                return
            start = int(m.group(1))
            end = int(m.group(2)) if m.group(2) else len(data) - 1
            status = 206
            headers = {**headers, "Content-Range": f"bytes {start}-{end}/{len(data)}"}
        payload = data[start : end + 1]
        self.send_response(status)
        for k, v in {**headers, "Content-Length": str(len(payload))}.items():
            self.send_header(k, v)
        self.end_headers()
        if method == "HEAD":
            return
        drop_after = self.fake._take_drop(label) if method == "GET" else None
        sent = 0
        for piece in self._pieces(payload):
            if drop_after is not None and sent + len(piece) > drop_after:
                self.wfile.write(piece[: max(0, drop_after - sent)])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(socket.SHUT_RDWR)
                return
            self.wfile.write(piece)
            sent += len(piece)

    def _pieces(self, payload: bytes) -> Iterator[bytes]:
        # The rate is read before every piece, so a test can slow down or speed up a
        # transfer that is already under way.
        offset = 0
        while offset < len(payload):
            rate = self.fake.throttle
            step = 16 * 1024 if not rate else max(512, min(16 * 1024, rate // 20))
            piece = payload[offset : offset + step]
            yield piece
            offset += len(piece)
            if rate:
                time.sleep(len(piece) / rate)

    def _json(self, status: int, body: object) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps({"error": message}).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(raw)
