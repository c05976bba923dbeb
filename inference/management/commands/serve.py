"""`manage.py serve`: the web server (uvicorn, or daphne with `MLXM_SERVER=daphne` or
`--server daphne`) and the inference worker, supervised."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from inference import logsetup
from inference.gateway import preload_specs_json
from mlxmanager import webserver
from mlxmanager.accounts.selectors import users_exist
from mlxmanager.accounts.setup import setup_token_discard, setup_token_issue


def _own_session() -> None:
    """Run in each child before exec: its own session, so a Ctrl-C or a signal to serve's
    process group reaches only serve, which then stops the children in order (the worker
    drains its streams before the web server goes); on Linux, a SIGTERM if serve dies."""
    os.setsid()
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(cmd, env=env, preexec_fn=_own_session)


class Command(BaseCommand):
    help = "Start the web server and the inference worker; restart the worker if it dies."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--host", default=settings.MLXM_HOST)
        parser.add_argument("--port", type=int, default=settings.MLXM_PORT)
        parser.add_argument(
            "--server",
            choices=webserver.SERVERS,
            default=None,
            help="the web server (default: MLXM_SERVER, else uvicorn)",
        )
        parser.add_argument("--no-worker", action="store_true", help="run only the web server")
        parser.add_argument("--no-downloads", action="store_true", help="don't run the downloader")

    def handle(self, *args: Any, **opts: Any) -> None:
        host, port = opts["host"], opts["port"]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env.pop(logsetup.PROCESS_ENV, None)  # the worker and the downloader name their own files
        web_env = {**env, logsetup.PROCESS_ENV: web_log_name(port, with_worker=not opts["no_worker"])}

        def worker_cmd() -> list[str]:
            # Re-read on every (re)start, so a restarted worker brings back today's preloads.
            return [sys.executable, "-m", "inference.worker", "--socket", settings.MLXM_WORKER_SOCKET,
                    "--preload", preload_specs_json()]  # fmt: skip

        web_cmd = webserver.command(
            host,
            port,
            forwarded_allow_ips=settings.MLXM_FORWARDED_ALLOW_IPS,
            access_log=settings.MLXM_ACCESS_LOG,
            server=webserver.server_name(opts["server"]),
        )

        stopping = False

        def _stop(signum: int, frame: object) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

        if not opts["no_worker"]:
            _clear_metrics(env.get("PROMETHEUS_MULTIPROC_DIR", ""))
        _first_run()
        worker = None if opts["no_worker"] else _spawn(worker_cmd(), {**env, **worker_env()})
        web = _spawn(web_cmd, web_env)
        # Downloads get their own process: they outlive inference worker crashes and web restarts.
        downloads_cmd = [sys.executable, "-m", "django", "downloader"]
        downloads = None if opts["no_downloads"] else _spawn(downloads_cmd, env)
        shown_host = f"[{host}]" if ":" in host else host
        self.stdout.write(
            f"MLX Manager is starting on http://{shown_host}:{port}/  (OpenAI base URL: http://{shown_host}:{port}/v1)"
        )
        if not users_exist():
            # The link goes to standard output only (never to a log): whoever holds it can
            # create the admin, until one exists.
            link = f"http://{_link_host(host)}:{port}/setup/{setup_token_issue()}"
            self.stdout.write(
                "No users yet. Open this one-time link to create the admin in your browser:\n"
                f"    {link}\n"
                "(or on the command line: .venv/bin/python manage.py create_admin --username admin --password-stdin)"
            )
        else:
            setup_token_discard()
        self.stdout.flush()

        restarts: list[float] = []
        try:
            while not stopping:
                time.sleep(0.2)
                if web.poll() is not None:
                    self.stderr.write(f"web server exited with status {web.returncode}")
                    break
                if worker is not None and worker.poll() is not None:
                    now = time.monotonic()
                    restarts = [t for t in restarts if now - t < 60] + [now]
                    # Back off when it keeps crashing, so a broken install doesn't spin.
                    delay = 0.0 if len(restarts) <= 3 else min(10.0, 2.0 ** (len(restarts) - 3))
                    self.stderr.write(
                        f"inference worker exited with status {worker.returncode}; restarting in {delay:.0f}s"
                    )
                    time.sleep(delay)
                    worker = _spawn(worker_cmd(), {**env, **worker_env()})
                if downloads is not None and downloads.poll() is not None:
                    self.stderr.write(f"downloader exited with status {downloads.returncode}; restarting")
                    time.sleep(1.0)
                    downloads = _spawn(downloads_cmd, env)
        finally:
            # The worker first: it finishes running streams (MLXM_DRAIN_SECONDS) while the web
            # server still relays them, and refuses new requests with a 503.
            drain = float(os.environ.get("MLXM_DRAIN_SECONDS", "30"))
            _stop_process(worker, drain + 5)
            for proc in (web, downloads):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
            for proc in (web, downloads):
                _stop_process(proc, 10)


def worker_env() -> dict[str, str]:
    """The worker's settings saved on the Settings page, as its environment (best effort)."""
    from mlxmanager.sitesettings.services import worker_env as saved

    try:
        return saved()
    except Exception as exc:  # no database yet: the environment's settings
        sys.stderr.write(f"settings not read from the database: {exc}\n")
        return {}


def _first_run() -> None:
    """What a fresh install needs before serving: the built-in rule for cloud model names."""
    from mlxmanager.rules.services import cloud_names_rule_ensure

    try:
        cloud_names_rule_ensure()
    except Exception as exc:  # not migrated yet: `migrate`, then `serve` again makes it
        sys.stderr.write(f"the built-in routing rule was not created: {exc}\n")


def web_log_name(port: int, *, with_worker: bool) -> str:
    """The web server's log file: `web` (web.log) beside the worker; the other web processes
    sharing the data dir (`serve --no-worker --port N`) write `web-<port>`, each rotating its own."""
    return "web" if with_worker else f"web-{port}"


def _link_host(host: str) -> str:
    """The host for a link printed for this machine's browser: a wildcard address is
    reached on loopback."""
    if host in ("", "0.0.0.0"):  # noqa: S104  (a comparison, not a bind)
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _stop_process(proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    if proc is None:
        return
    if proc.poll() is None:
        proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _clear_metrics(directory: str) -> None:
    """The serve that runs the embedded worker starts the metrics afresh (prometheus_client's
    multiprocess files of earlier runs would add up forever); other web processes join in."""
    if not directory:
        return
    for path in Path(directory).glob("*.db"):
        path.unlink(missing_ok=True)
