"""Engine clients: how the web process talks to the inference worker.

`EngineClient` keeps one Unix-socket connection per event loop, multiplexes every
request over it and routes the worker's frames to per-request queues. A dead worker
surfaces as `EngineDeadError` (the gateway answers 503); the next call reconnects, so a
worker restarted by the supervisor is picked up without restarting the web process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from collections.abc import AsyncGenerator
from typing import Any

import msgspec

from inference import protocol as p

log = logging.getLogger(__name__)


class EngineDeadError(Exception):
    """The worker is not running or went away mid-request."""


class EngineRequestError(Exception):
    """The worker refused or failed one request."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after  # seconds, for a full queue (ERR_QUEUE_FULL)


_DEAD = object()


class EngineClient:
    """One worker: `address` is a Unix socket path, or `tcp://host:port` / `tls://host:port`
    for a worker on another machine (which then wants `secret`, and `tls_ca` to verify it)."""

    def __init__(
        self,
        socket_path: str,
        *,
        connect_timeout: float = 2.0,
        secret: bytes | None = None,
        tls_ca: str | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.connect_timeout = connect_timeout
        self.secret = secret
        self.tls_ca = tls_ca
        self._codec = p.client_codec()
        self._writer: asyncio.StreamWriter | None = None
        self._reader_task: asyncio.Task[None] | None = None
        self._queues: dict[str, asyncio.Queue[Any]] = {}
        self._lock: asyncio.Lock | None = None
        self.worker_pid: int | None = None
        # MLXM_STREAM_INTERVAL_MS=0: no coalescing on this side either, a list (an SSE event)
        # per token even when the web process falls behind the worker.
        self.per_token = float(os.environ.get("MLXM_STREAM_INTERVAL_MS", "10")) == 0

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    async def _connect(self) -> asyncio.StreamWriter:
        if self.connected:
            assert self._writer is not None
            return self._writer
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self.connected:
                assert self._writer is not None
                return self._writer
            try:
                reader, writer = await asyncio.wait_for(self._open(), self.connect_timeout)
                hello = p.Hello()
                if self.remote:
                    challenge = await asyncio.wait_for(self._codec.read(reader), self.connect_timeout)
                    if not isinstance(challenge, p.Challenge):
                        writer.close()
                        raise EngineDeadError(f"{self.socket_path} is not an MLX Manager worker")
                    hello = p.Hello(auth=p.auth_digest(self.secret or b"", challenge.nonce))
                writer.write(self._codec.encode(hello))
                welcome = await asyncio.wait_for(self._codec.read(reader), self.connect_timeout)
            except asyncio.IncompleteReadError as exc:
                what = (
                    "refused the connection (is the shared secret right?)"
                    if self.remote
                    else "is not running"
                )
                raise EngineDeadError(f"the inference worker {what}") from exc
            except (OSError, TimeoutError, ValueError, msgspec.DecodeError) as exc:
                if self.remote:
                    raise EngineDeadError(
                        f"the inference worker at {self.socket_path} is not reachable"
                    ) from exc
                raise EngineDeadError("the inference worker is not running") from exc
            if not isinstance(welcome, p.Welcome) or welcome.version != p.PROTOCOL_VERSION:
                writer.close()
                raise EngineDeadError("the inference worker speaks another protocol version")
            self.worker_pid = welcome.pid
            self._writer = writer
            self._reader_task = asyncio.create_task(self._read_loop(reader, writer))
            return writer

    @property
    def remote(self) -> bool:
        return self.socket_path.startswith(("tcp://", "tls://"))

    @property
    def inflight(self) -> int:
        """Requests this web process has running on this worker."""
        return len(self._queues)

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if not self.remote:
            return await asyncio.open_unix_connection(self.socket_path)
        scheme, _, rest = self.socket_path.partition("://")
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        tls = None
        if scheme == "tls":
            import ssl

            tls = ssl.create_default_context(cafile=self.tls_ca)
        return await asyncio.open_connection(host, int(port), ssl=tls, server_hostname=host if tls else None)

    async def _read_loop(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                msg = await self._codec.read(reader)
                if isinstance(msg, p.Outputs):
                    for item in msg.items:
                        q = self._queues.get(item.request_id)
                        if q is not None:
                            q.put_nowait(item)
                elif isinstance(
                    msg,
                    p.RequestError
                    | p.HealthReply
                    | p.TokenCount
                    | p.PoolReply
                    | p.EmbeddingsReply
                    | p.TranscriptionReply
                    | p.AudioChunk,
                ):
                    q = self._queues.get(msg.request_id)
                    if q is not None:
                        q.put_nowait(msg)
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        except Exception:
            log.exception("bad frame from the worker; dropping the connection")
        finally:
            if self._writer is writer:
                self._writer = None
            writer.close()
            for q in self._queues.values():
                q.put_nowait(_DEAD)

    async def _send(self, msg: Any) -> None:
        writer = await self._connect()
        writer.write(self._codec.encode(msg))

    async def _await_item(self, q: asyncio.Queue[Any]) -> Any:
        item = await q.get()
        if item is _DEAD:
            raise EngineDeadError("the inference worker stopped while serving this request")
        return item

    async def generate(self, req: p.Generate) -> AsyncGenerator[list[p.Output], None]:
        """Yield lists of outputs (everything available at once); the last one is final.

        Closing the iterator early (client disconnect) aborts the request in the worker.
        """
        q: asyncio.Queue[Any] = asyncio.Queue()
        self._queues[req.request_id] = q
        finished = False
        try:
            await self._send(req)
            while not finished:
                batch = [await self._await_item(q)]
                while not q.empty():
                    batch.append(q.get_nowait())
                outs: list[p.Output] = []
                for item in batch:
                    if item is _DEAD:
                        raise EngineDeadError("the inference worker stopped while serving this request")
                    if isinstance(item, p.RequestError):
                        finished = True
                        raise EngineRequestError(item.code, item.message, item.retry_after)
                    outs.append(item)
                    if item.finish_reason is not None:
                        finished = True
                if self.per_token:
                    for out in outs:
                        yield [out]
                else:
                    yield outs
        finally:
            self._queues.pop(req.request_id, None)
            # Synchronous write: this runs while the task is being cancelled.
            if not finished and self.connected:
                assert self._writer is not None
                with contextlib.suppress(Exception):
                    self._writer.write(self._codec.encode(p.Abort(request_id=req.request_id)))

    async def _call(self, request_id: str, msg: Any, timeout: float | None = None) -> Any:
        """Send one request and wait for its single reply; worker errors raise."""
        q: asyncio.Queue[Any] = asyncio.Queue()
        self._queues[request_id] = q
        try:
            await self._send(msg)
            reply = await asyncio.wait_for(self._await_item(q), timeout)
        except TimeoutError as exc:
            raise EngineDeadError("the inference worker did not answer in time") from exc
        finally:
            self._queues.pop(request_id, None)
        if isinstance(reply, p.RequestError):
            raise EngineRequestError(reply.code, reply.message)
        return reply

    async def count_tokens(self, req: p.CountTokens) -> int:
        """Prompt tokens of `req` under the model's chat template (loads the model if needed)."""
        reply = await self._call(req.request_id, req)
        assert isinstance(reply, p.TokenCount)
        return reply.input_tokens

    async def embed(self, req: p.Embed) -> p.EmbeddingsReply:
        """Vectors for `req`'s inputs (loads the model if needed)."""
        reply = await self._call(req.request_id, req)
        assert isinstance(reply, p.EmbeddingsReply)
        return reply

    async def transcribe(self, req: p.Transcribe) -> p.TranscriptionReply:
        """Text (and timed segments) of `req`'s audio (loads the model if needed)."""
        reply = await self._call(req.request_id, req)
        assert isinstance(reply, p.TranscriptionReply)
        return reply

    async def speak(self, req: p.Speak) -> AsyncGenerator[p.AudioChunk, None]:
        """Yield the speech for `req` as it is made; the last chunk is `final`.

        Closing the iterator early (client disconnect) aborts the request in the worker.
        """
        q: asyncio.Queue[Any] = asyncio.Queue()
        self._queues[req.request_id] = q
        finished = False
        try:
            await self._send(req)
            while not finished:
                item = await self._await_item(q)
                if isinstance(item, p.RequestError):
                    finished = True
                    raise EngineRequestError(item.code, item.message)
                assert isinstance(item, p.AudioChunk)
                finished = item.final
                yield item
        finally:
            self._queues.pop(req.request_id, None)
            if not finished and self.connected:
                assert self._writer is not None
                with contextlib.suppress(Exception):
                    self._writer.write(self._codec.encode(p.Abort(request_id=req.request_id)))

    async def pool_command(self, action: str, model: p.ModelSpec) -> str:
        """Load, unload, pin or unpin a model; returns the worker's message."""
        rid = uuid.uuid4().hex
        reply = await self._call(rid, p.PoolCommand(request_id=rid, action=action, model=model))
        assert isinstance(reply, p.PoolReply)
        return reply.message

    async def configure(self, **values: Any) -> str:
        """Send run-time settings (`protocol.Configure`'s fields); returns the worker's message."""
        rid = uuid.uuid4().hex
        reply = await self._call(rid, p.Configure(request_id=rid, **values))
        assert isinstance(reply, p.PoolReply)
        return reply.message

    async def health(self, timeout: float = 2.0) -> dict[str, Any]:
        rid = uuid.uuid4().hex
        reply = await self._call(rid, p.Health(request_id=rid), timeout)
        assert isinstance(reply, p.HealthReply)
        return reply.state

    async def aclose(self) -> None:
        """Close the connection (short-lived clients); requests still in flight fail as dead."""
        task, writer = self._reader_task, self._writer
        self._reader_task = self._writer = None
        if writer is not None:
            writer.close()
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
