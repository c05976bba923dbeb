"""Request limits at the edge, against a real web server on a socket: an oversized or stalled
body is refused before (or while) it is read, never after it was spooled, and `/v1` without
any API key is refused before its body is read. Raw sockets, so the test controls exactly
what has been sent when the answer comes."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from mlxmanager import webserver
from tests.conftest import ROOT, free_port, manage

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("live")]

LIMIT = 1024 * 1024  # MLXM_MAX_BODY_BYTES for these servers
HUGE = 200 * 1024 * 1024
KEY = b"Authorization: Bearer mlxm-anything\r\n"  # presence only: never checked, the body is refused first
WAIT = 20  # socket timeout: an answer that needs the body (or never comes) fails the test


class Server:
    def __init__(self, kind: str, tmp: Path) -> None:
        self.kind = kind
        self.port = free_port()
        env = {
            **os.environ,
            "MLXM_DATA_DIR": str(tmp),
            "MLXM_MAX_BODY_BYTES": str(LIMIT),
            "MLXM_BODY_READ_TIMEOUT": "1",
            "MLXM_HEADER_READ_TIMEOUT": "1",
            "MLXM_SERVER": kind,
            "MLXM_LOG_LEVEL": "WARNING",
            "DJANGO_SETTINGS_MODULE": "mlxmanager.settings",
        }
        env.pop("DATABASE_URL", None)
        manage("migrate", "--noinput", "-v0", env=env)
        self.log_path = tmp / "web.log"
        cmd = webserver.command("127.0.0.1", self.port, forwarded_allow_ips="127.0.0.1", server=kind)
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(self.log_path.read_text()[-3000:])
            try:
                httpx.get(f"http://127.0.0.1:{self.port}/healthz", timeout=5)
                break
            except httpx.HTTPError:
                assert time.monotonic() < deadline, self.log_path.read_text()[-3000:]
                time.sleep(0.2)

    def connect(self) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=WAIT)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module", params=["uvicorn", "daphne"])
def server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(request.param, tmp_path_factory.mktemp(f"limits-{request.param}"))
    yield srv
    srv.stop()


def head(method: str, path: str, *lines: bytes) -> bytes:
    return f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n".encode() + b"".join(lines) + b"\r\n"


def read_answer(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One response (status, headers, body); raises socket.timeout when none comes."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed without an answer: {data!r}")
        data += chunk
    raw_head, body = data.split(b"\r\n\r\n", 1)
    status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in header_lines)}
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(status_line.split()[1]), headers, body


def test_a_declared_oversized_body_is_refused_from_the_headers_alone(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(head("POST", "/v1/chat/completions", KEY, b"Content-Type: application/json\r\n",
                          f"Content-Length: {HUGE}\r\n".encode()))  # fmt: skip
        status, headers, body = read_answer(sock)  # answered while we have sent only the headers
    assert status == 413
    assert headers["content-type"].startswith("application/json")
    error = json.loads(body)["error"]
    assert error == {"message": error["message"], "type": "invalid_request_error", "param": None,
                     "code": "request_too_large", "request_id": headers["x-request-id"]}  # fmt: skip


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/messages", "application/json"),
        ("/api/rules/", "application/problem+json"),
        ("/login/", "text/plain"),
    ],
)
def test_each_surface_gets_its_own_error_shape(server: Server, path: str, content_type: str) -> None:
    with server.connect() as sock:
        sock.sendall(head("POST", path, KEY, f"Content-Length: {HUGE}\r\n".encode()))
        status, headers, body = read_answer(sock)
    assert status == 413
    assert headers["content-type"].startswith(content_type)
    if path == "/v1/messages":
        assert json.loads(body)["type"] == "error"
        assert json.loads(body)["error"]["type"] == "request_too_large"
    elif path.startswith("/api/"):
        problem = json.loads(body)
        assert problem["status"] == 413 and problem["title"] and problem["instance"] == path


def test_a_chunked_body_is_refused_as_soon_as_it_passes_the_limit(server: Server) -> None:
    piece = b"x" * 65536
    with server.connect() as sock:
        sock.sendall(head("POST", "/v1/chat/completions", KEY, b"Content-Type: application/json\r\n",
                          b"Transfer-Encoding: chunked\r\n"))  # fmt: skip
        for _ in range(LIMIT // len(piece) + 1):  # one piece past the limit, and no last chunk
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        status, _, body = read_answer(sock)
    assert status == 413
    assert json.loads(body)["error"]["code"] == "request_too_large"


def test_a_stalled_body_gets_408(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(head("POST", "/v1/chat/completions", KEY, b"Content-Type: application/json\r\n",
                          b"Content-Length: 100\r\n") + b'{"model": ')  # fmt: skip
        status, _, body = read_answer(sock)  # MLXM_BODY_READ_TIMEOUT=1 here
    assert status == 408
    assert json.loads(body)["error"]["code"] == "request_timeout"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
def test_v1_without_any_key_is_refused_before_the_body(server: Server, path: str) -> None:
    with server.connect() as sock:
        sock.sendall(head("POST", path, b"Content-Type: application/json\r\nContent-Length: 1000\r\n"))
        status, _, body = read_answer(sock)
    assert status == 401
    err = json.loads(body)
    if path == "/v1/messages":
        assert err["error"]["type"] == "authentication_error"
    else:
        assert err["error"]["code"] == "invalid_api_key"


def test_a_small_body_still_reaches_the_app(server: Server) -> None:
    r = httpx.post(f"http://127.0.0.1:{server.port}/v1/chat/completions", json={"model": "x"},
                   headers={"Authorization": "Bearer mlxm-wrong"}, timeout=WAIT)  # fmt: skip
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"  # checked by the app


def test_a_half_sent_head_is_not_held_open(server: Server) -> None:
    with server.connect() as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        data = b""
        while chunk := sock.recv(65536):  # MLXM_HEADER_READ_TIMEOUT=1: a 408 and a close, or a close
            data += chunk
    assert data == b"" or data.startswith(b"HTTP/1.1 408")


def test_an_oversized_head_is_refused(server: Server) -> None:
    """uvicorn answers 431; Twisted (daphne) answers 400, or just closes on a line that long."""
    with server.connect() as sock:
        try:
            sock.sendall(head("GET", "/healthz", b"X-Big: " + b"a" * (256 * 1024) + b"\r\n"))
            status, _, _ = read_answer(sock)
        except ConnectionError:  # refused and closed (or reset) before or without an answer
            assert server.kind == "daphne"
            return
    assert status == (431 if server.kind == "uvicorn" else 400)


def test_the_web_server_command_line_bounds_what_uvicorn_and_daphne_allow() -> None:
    uvicorn = webserver.command("127.0.0.1", 8000, forwarded_allow_ips="127.0.0.1", server="uvicorn")
    assert uvicorn[uvicorn.index("--http") + 1] == webserver.UVICORN_HTTP
    assert "--h11-max-incomplete-event-size" in uvicorn and "--timeout-keep-alive" in uvicorn
    daphne = webserver.command("127.0.0.1", 8000, forwarded_allow_ips="127.0.0.1", server="daphne")
    assert daphne[:3] == [sys.executable, "-m", "mlxmanager.daphne_server"]
    assert "--proxy-headers" in daphne and "--websocket-max-message-size" in daphne


@pytest.mark.asyncio
async def test_a_v1_refusal_gets_its_audit_row_and_the_app_never_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from asgiref.testing import ApplicationCommunicator

    from mlxmanager.audit import recorder as rec
    from mlxmanager.request_limits import RequestLimits

    rows: list[rec.RequestAudit] = []
    monkeypatch.setattr(rec, "record", rows.append)
    called: list[str] = []

    async def app(scope: dict, receive: object, send: object) -> None:
        called.append(scope["path"])

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "client": ("10.0.0.9", 5000),
             "headers": [(b"content-length", b"5")]}  # fmt: skip
    comm = ApplicationCommunicator(RequestLimits(app, max_body=LIMIT, read_timeout=5), scope)
    await comm.send_input({"type": "http.request", "body": b"", "more_body": True})
    start = await comm.receive_output(timeout=5)
    assert start["status"] == 401
    await comm.wait(timeout=5)
    assert called == []
    assert [(r.endpoint, r.status, r.error_type, r.client_ip) for r in rows] == [
        ("/v1/chat/completions", 401, "invalid_api_key", "10.0.0.9")
    ]


def test_a_cors_preflight_is_left_to_the_app_and_refusals_carry_a_request_id() -> None:
    from mlxmanager.request_limits import check_head, refusal

    # A browser's preflight carries no key; the CORS middleware answers it (or not).
    assert (
        check_head("/v1/chat/completions", [(b"access-control-request-method", b"POST")], max_body=None)
        is None
    )
    assert check_head("/v1/chat/completions", [], max_body=None) == 401
    headers, body = refusal("/v1/chat/completions", 401)
    rid = dict(headers)[b"x-request-id"].decode()
    assert rid and json.loads(body)["error"]["request_id"] == rid
