"""The web server's command line, shared by `manage.py serve` and the benchmarks (no Django here).

`MLXM_SERVER` picks the server: `uvicorn` (the default) or `daphne`.

uvicorn on uvloop with the httptools parser ("auto" picks uvloop; the parser is httptools through
`mlxmanager.http_protocol`, which bounds the request head in size and time, or h11 where httptools
is missing, bounded by `--h11-max-incomplete-event-size`). Why uvicorn is the default, measured:
docs/architecture.md ("Web server") and docs/benchmarks.md (gateway overhead).

daphne through `mlxmanager.daphne_server` (daphne's own command line, with the body limits
applied while Twisted reads a request; see there).

Request bodies (size, read time, `/v1` without a key) are bounded in the application for both
(`mlxmanager/request_limits.py`).
"""

from __future__ import annotations

import importlib.util
import os
import sys

from mlxmanager import config

APP = "mlxmanager.asgi:application"
SERVERS = ("uvicorn", "daphne")
UVICORN_HTTP = (
    "mlxmanager.http_protocol:BoundedHttpToolsProtocol" if importlib.util.find_spec("httptools") else "h11"
)
KEEP_ALIVE_SECONDS = 5  # an idle connection between requests
WS_MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # uvicorn's default --ws-max-size; daphne's is 1 MiB


def server_name(server: str | None = None) -> str:
    name = (server or os.environ.get("MLXM_SERVER") or "uvicorn").strip().lower()
    if name not in SERVERS:
        raise ValueError(f"MLXM_SERVER must be one of {', '.join(SERVERS)}, not {name!r}")
    return name


def command(
    host: str,
    port: int,
    *,
    forwarded_allow_ips: str,
    access_log: bool = False,
    app: str = APP,
    lifespan: bool = True,
    server: str | None = None,
) -> list[str]:
    if server_name(server) == "daphne":
        return daphne_command(host, port, access_log=access_log, app=app)
    return [
        sys.executable, "-m", "uvicorn", app,
        "--host", host, "--port", str(port),
        "--loop", "auto", "--http", UVICORN_HTTP, "--ws", "auto", "--lifespan", "on" if lifespan else "off",
        "--proxy-headers", "--forwarded-allow-ips", forwarded_allow_ips,
        # The request head: h11's bound (httptools' is in mlxmanager.http_protocol), and idle
        # keep-alive connections closed after a few seconds.
        "--h11-max-incomplete-event-size", str(config.max_header_bytes()),
        "--timeout-keep-alive", str(KEEP_ALIVE_SECONDS),
        # `manage.py serve` stops the web server after the worker has drained its streams.
        "--timeout-graceful-shutdown", "5",
        "--log-level", "info" if access_log else "warning",
        "--access-log" if access_log else "--no-access-log",
    ]  # fmt: skip


def daphne_command(host: str, port: int, *, access_log: bool = False, app: str = APP) -> list[str]:
    """daphne has no allow-list for proxy headers: with `--proxy-headers` it believes any peer's
    `X-Forwarded-For`, so run it on loopback behind the proxy (docs/security.md). It has no
    lifespan either: buffered audit rows are written by the recorder's `atexit` handler, which
    runs when daphne stops on SIGTERM. `--http-timeout` is left unset: it would cut streams."""
    return [
        sys.executable, "-m", "mlxmanager.daphne_server",
        "--bind", host, "--port", str(port),
        "--proxy-headers",
        "--websocket-max-message-size", str(WS_MAX_MESSAGE_BYTES),
        "--websocket-max-frame-size", str(WS_MAX_MESSAGE_BYTES),
        "--websocket_connect_timeout", "5",
        "--application-close-timeout", "5",
        *(["--verbosity", "1", "--access-log", "-"] if access_log else ["--verbosity", "0"]),
        app,
    ]  # fmt: skip
