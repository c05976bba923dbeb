"""The worker's I/O side: an asyncio server on a Unix socket feeding the scheduler thread."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import signal
import ssl
import sys
import time
from collections import deque
from functools import partial
from typing import Any

from inference import protocol as p
from inference.worker import memory
from inference.worker.about import about
from inference.worker.scheduler import Scheduler

log = logging.getLogger(__name__)


def _urgent(item: Any) -> bool:
    """Written without waiting for the stream interval: a request's first token (its TTFT),
    its end, errors and replies."""
    return not isinstance(item, p.Output) or item.finish_reason is not None or item.completion_tokens <= 1


class Connection:
    """One web process. What the scheduler thread emits is written on the loop: everything
    emitted since the last write goes out as one frame, at most one frame per `interval`
    seconds while tokens stream (a request's end and errors go out at once)."""

    def __init__(self, writer: asyncio.StreamWriter, codec: p.FrameCodec, interval: float = 0.0) -> None:
        self.writer = writer
        self.codec = codec
        self.closed = False
        self.interval = interval
        self._pending: deque[list[Any]] = deque()  # appended by the scheduler thread
        self._flush_scheduled = False
        self._urgent = False
        self._last_write = 0.0

    def emit(self, loop: asyncio.AbstractEventLoop, items: list[Any]) -> None:
        """From the scheduler thread: queue `items`, waking the loop unless a write is due."""
        self._pending.append(items)
        if not self._urgent and any(_urgent(i) for i in items):
            self._urgent = True
            loop.call_soon_threadsafe(self._flush, True)
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon_threadsafe(self._flush, False)

    def _flush(self, urgent: bool) -> None:
        if not urgent and self.interval and not self._urgent:
            wait = self._last_write + self.interval - time.monotonic()
            if wait > 0:
                asyncio.get_running_loop().call_later(wait, self._flush, True)
                return
        # Flags first: an emit racing with this flush schedules another (maybe empty) one.
        self._flush_scheduled = self._urgent = False
        items: list[Any] = []
        while self._pending:
            items += self._pending.popleft()
        if items:
            self._last_write = time.monotonic()
            self.send(items)

    def send(self, items: list[Any]) -> None:
        if self.closed:
            return
        outputs = [i for i in items if isinstance(i, p.Output)]
        frames = [self.codec.encode(i) for i in items if not isinstance(i, p.Output)]
        if outputs:
            frames.append(self.codec.encode(p.Outputs(outputs)))
        self.writer.write(b"".join(frames))

    def send_one(self, msg: Any) -> None:
        if not self.closed:
            self.writer.write(self.codec.encode(msg))


class WorkerServer:
    def __init__(
        self,
        socket_path: str,
        *,
        preload: list[p.ModelSpec] | None = None,
        listen: tuple[str, int] | None = None,
        secret: bytes | None = None,
        tls: ssl.SSLContext | None = None,
        replicator: Any = None,
    ) -> None:
        if listen is not None and not secret:
            raise ValueError("a worker listening on TCP needs a shared secret (MLXM_WORKER_SECRET)")
        self.socket_path = socket_path
        self.listen = listen
        self.secret = secret
        self.tls = tls
        self.loop: asyncio.AbstractEventLoop | None = None
        self.scheduler = Scheduler(self._emit_threadsafe, preload=preload, replicator=replicator)
        self.started = time.time()
        self.drain_seconds = float(os.environ.get("MLXM_DRAIN_SECONDS", "30"))
        self.stream_interval = float(os.environ.get("MLXM_STREAM_INTERVAL_MS", "10")) / 1000

    def _emit_threadsafe(self, conn: Connection, items: list[Any]) -> None:
        assert self.loop is not None
        conn.emit(self.loop, items)

    def health(self) -> dict[str, Any]:
        snap = self.scheduler.snapshot
        return {
            "pid": os.getpid(),
            "uptime_s": round(time.time() - self.started, 1),
            "protocol": p.PROTOCOL_VERSION,
            "queue_depth": max(0, self.scheduler.queued) + max(0, self.scheduler.waiting),
            "active_requests": snap.get("active_requests", 0),
            "loading": snap.get("loading"),
            "models": snap.get("models", []),
            "memory": {**snap.get("memory", {}), "rss_bytes": _resident_bytes()},
            "history": snap.get("history", []),
            "scheduler_alive": self.scheduler.is_alive(),
            "draining": self.scheduler.draining,
            "about": about(),
        }

    async def _authenticate(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """TCP peers answer a challenge with the shared secret before anything else."""
        assert self.secret is not None
        codec = p.worker_codec()
        nonce = os.urandom(32)
        writer.write(codec.encode(p.Challenge(nonce=nonce)))
        peer = writer.get_extra_info("peername")
        try:
            hello = await asyncio.wait_for(codec.read(reader, max_size=p.MAX_HANDSHAKE_BYTES), 10)
        except Exception:
            log.warning("refused %s: no valid hello", peer)
            return False
        expected = p.auth_digest(self.secret, nonce)
        if not isinstance(hello, p.Hello) or not hmac.compare_digest(hello.auth, expected):
            log.warning("refused %s: wrong shared secret", peer)
            return False
        if hello.version != p.PROTOCOL_VERSION:
            log.error("client %s speaks protocol %s, not %s", peer, hello.version, p.PROTOCOL_VERSION)
            return False
        writer.write(codec.encode(p.Welcome(pid=os.getpid())))
        return True

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, remote: bool = False
    ) -> None:
        codec = p.worker_codec()
        conn = Connection(writer, codec, self.stream_interval)
        if remote and not await self._authenticate(reader, writer):
            writer.close()
            return
        try:
            while True:
                msg = await codec.read(reader)
                if isinstance(msg, p.Health):
                    conn.send_one(p.HealthReply(request_id=msg.request_id, state=self.health()))
                elif isinstance(msg, p.Hello):
                    if msg.version != p.PROTOCOL_VERSION:
                        log.error("client speaks protocol %s, not %s", msg.version, p.PROTOCOL_VERSION)
                        break
                    conn.send_one(p.Welcome(pid=os.getpid()))
                else:
                    self.scheduler.submit(conn, msg)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            # (Cancelled: the server is closing; returning normally avoids a 3.11 asyncio
            # callback that logs a traceback for a cancelled connection task.)
            pass
        except Exception:
            log.exception("dropping a connection after a bad frame")
        finally:
            conn.closed = True
            self.scheduler.connection_closed(conn)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _drain(self) -> None:
        """Let running requests finish (bounded by MLXM_DRAIN_SECONDS); refuse new ones."""
        self.scheduler.begin_drain()
        deadline = time.monotonic() + self.drain_seconds
        while not self.scheduler.idle and time.monotonic() < deadline and self.scheduler.is_alive():
            await asyncio.sleep(0.05)
        if not self.scheduler.idle and self.scheduler.is_alive():
            log.warning("shutting down with requests still running after %.0fs", self.drain_seconds)
            self.scheduler.abort_all("the worker shut down before this request finished")
            deadline = time.monotonic() + 5
            while not self.scheduler.idle and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.2)  # let the error frames reach the sockets

    async def run(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.scheduler.start()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)
        server = await asyncio.start_unix_server(self._serve_connection, path=self.socket_path)
        os.chmod(self.socket_path, 0o600)
        tcp = None
        if self.listen is not None:
            host, port = self.listen
            tcp = await asyncio.start_server(
                partial(self._serve_connection, remote=True), host, port, ssl=self.tls
            )
            log.info("also listening on %s:%s (%s)", host, port, "TLS" if self.tls else "plain TCP")
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            self.loop.add_signal_handler(sig, stop.set)
        log.info("inference worker %s listening on %s", os.getpid(), self.socket_path)
        async with server:
            await stop.wait()
            if tcp is not None:
                tcp.close()
            await self._drain()
        self.scheduler.stop()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket_path)


def _resident_bytes() -> int:
    """This process's resident memory (Linux: /proc; elsewhere the peak, from getrusage)."""
    now = memory.resident_bytes()
    if now is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    return now
