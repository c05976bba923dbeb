"""The web server's command line, shared by `manage.py serve` and the benchmarks (no Django here).

uvicorn on uvloop with the httptools parser ("auto" picks them: both are dependencies on Linux
and macOS, and it falls back to asyncio and h11 elsewhere). Why uvicorn and not daphne, measured:
docs/architecture.md ("Web server") and docs/benchmarks.md (gateway overhead).
"""

from __future__ import annotations

import sys

APP = "mlxmanager.asgi:application"


def command(
    host: str,
    port: int,
    *,
    forwarded_allow_ips: str,
    access_log: bool = False,
    app: str = APP,
    lifespan: bool = True,
) -> list[str]:
    return [
        sys.executable, "-m", "uvicorn", app,
        "--host", host, "--port", str(port),
        "--loop", "auto", "--http", "auto", "--ws", "auto", "--lifespan", "on" if lifespan else "off",
        "--proxy-headers", "--forwarded-allow-ips", forwarded_allow_ips,
        # `manage.py serve` stops the web server after the worker has drained its streams.
        "--timeout-graceful-shutdown", "5",
        "--log-level", "info" if access_log else "warning",
        "--access-log" if access_log else "--no-access-log",
    ]  # fmt: skip
