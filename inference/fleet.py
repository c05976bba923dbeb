"""Several inference workers behind one gateway.

The embedded worker (the Unix socket `serve` starts) is always one of them; workers on
other machines are the rows of the Workers page, reached over TCP (shared secret, TLS when
the address says `tls://`). A generate request goes first to the worker this process sent
the longest leading part of its conversation to (`inference/affinity.py`: its prompt cache
likely still holds that prefix), unless that worker is overloaded (the model's running
requests at its `max_concurrent`, requests waiting in its queue, or the worker failing).
Otherwise, and for every other request, a worker that already holds its model, the
least loaded first (requests this web process has running there, plus what the worker last
reported), else the least loaded one that can load it. A worker that is down, refuses
the request as overloaded, or can't load the model before the first token is skipped for
the next one; after the first token a failure ends the request (as with one worker).

With no remote worker registered this is the embedded worker alone, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing
from typing import Any, TypeVar

from inference import protocol as p
from inference.affinity import PrefixMemory, prefix_chain
from inference.client import EngineClient, EngineDeadError, EngineRequestError

log = logging.getLogger(__name__)
T = TypeVar("T")
S = TypeVar("S")

LIST_EVERY_S = 5.0  # re-read the registered workers this often
HEALTH_EVERY_S = 2.0  # ask each worker what it holds this often (only with remote workers)
DOWN_FOR_S = 5.0  # a worker that failed is tried last for this long
# A full queue (MLXM_MAX_QUEUE, MLXM_MAX_USER_CONCURRENT) tries the next worker: 429 if all are.
RETRY_CODES = {p.ERR_OVERLOADED, p.ERR_MODEL_LOAD, p.ERR_QUEUE_FULL}


class _State:
    """What this web process knows of one worker."""

    def __init__(self, client: EngineClient, name: str) -> None:
        self.client = client
        self.name = name
        self.paths: set[str] = set()  # model paths it holds
        self.active = 0  # requests of other web processes it reported running or queued
        self.down_until = 0.0
        self.last: dict[str, Any] | None = None
        self.error = ""
        self.prefixes = PrefixMemory()  # what was sent there (prefix routing)
        self.running: dict[str, int] = {}  # model path -> this process's streams running there

    def overloaded(self, spec: p.ModelSpec, now: float) -> bool:
        """Failing, or `spec`'s model has requests waiting or all its slots taken there
        (the worker's last report, or this process's own streams if more)."""
        if self.down_until > now:
            return True
        limit, active = spec.max_concurrent, self.running.get(spec.path, 0)
        for m in (self.last or {}).get("models", ()):
            if m.get("path") == spec.path:
                if m.get("queued_requests", 0) > 0:
                    return True
                limit = m.get("max_concurrent") or limit
                active = max(active, m.get("active_requests", 0))
        return active >= max(1, limit)


class WorkerGroup:
    def __init__(self, local: EngineClient, *, secret: bytes | None, tls_ca: str | None) -> None:
        self.local = _State(local, "embedded")
        self.secret = secret
        self.tls_ca = tls_ca
        self.remote: dict[str, _State] = {}
        self._listed_at = -LIST_EVERY_S
        self._poller: asyncio.Task[None] | None = None

    # ---- the members ----------------------------------------------------------

    @property
    def socket_path(self) -> str:
        return self.local.client.socket_path

    def clients(self) -> list[tuple[str, EngineClient]]:
        """Every worker this process knows: the embedded one, then the registered ones."""
        return [(self.local.name, self.local.client)] + [(s.name, s.client) for s in self.remote.values()]

    async def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._listed_at < LIST_EVERY_S:
            return
        self._listed_at = now
        from asgiref.sync import sync_to_async

        from mlxmanager.workers.selectors import enabled_workers

        try:
            rows = await sync_to_async(enabled_workers, thread_sensitive=False)()
        except Exception:
            log.exception("could not read the registered workers")
            return
        wanted = {address: name for name, address in rows}
        for address in [a for a in self.remote if a not in wanted]:
            with contextlib.suppress(Exception):
                await self.remote.pop(address).client.aclose()
        for address, name in wanted.items():
            if address not in self.remote:
                client = EngineClient(
                    address,
                    connect_timeout=self.local.client.connect_timeout,
                    secret=self.secret,
                    tls_ca=self.tls_ca,
                )
                self.remote[address] = _State(client, name)
            self.remote[address].name = name
        if self.remote and (self._poller is None or self._poller.done()):
            self._poller = asyncio.create_task(self._poll())

    async def _poll(self) -> None:
        while self.remote:
            await asyncio.gather(*(self._check(s) for s in [self.local, *self.remote.values()]))
            await asyncio.sleep(HEALTH_EVERY_S)

    async def _check(self, state: _State) -> None:
        try:
            health = await state.client.health(timeout=HEALTH_EVERY_S)
        except (EngineDeadError, EngineRequestError) as exc:
            state.error = str(exc)
            state.down_until = time.monotonic() + DOWN_FOR_S
            state.last = None
            return
        state.last, state.error, state.down_until = health, "", 0.0
        paths = {m.get("path", "") for m in health.get("models", [])}
        if state.paths - paths:  # a model was unloaded, and its prompt cache with it
            state.prefixes.clear()
        state.paths = paths
        # Its count includes this process's own streams, which `client.inflight` counts as they
        # come and go: kept apart, a report taken during a burst of ours would still weigh on
        # the worker after the burst ended (every request of the next burst went elsewhere).
        reported = int(health.get("active_requests", 0)) + int(health.get("queue_depth", 0))
        state.active = max(0, reported - state.client.inflight)

    def _order(self, spec: p.ModelSpec, chain: list[int] | None = None) -> list[_State]:
        members = [self.local, *self.remote.values()]
        if len(members) == 1:
            return members
        now = time.monotonic()

        def load(s: _State) -> tuple[bool, bool, int]:
            return (s.down_until > now, spec.path not in s.paths, s.client.inflight + s.active)

        ordered = sorted(members, key=load)
        if chain:
            best, depth = None, 0
            for s in ordered:  # among equal matches, the least loaded
                d = s.prefixes.match(chain, s.client.worker_pid)
                if d > depth and not s.overloaded(spec, now):
                    best, depth = s, d
            if best is not None and best is not ordered[0]:
                ordered.remove(best)
                ordered.insert(0, best)
        return ordered

    # ---- requests -------------------------------------------------------------

    def generate(self, req: p.Generate) -> AsyncGenerator[list[p.Output], None]:
        return self._stream(req.model, lambda c: c.generate(req), prefix=req)

    def speak(self, req: p.Speak) -> AsyncGenerator[p.AudioChunk, None]:
        return self._stream(req.model, lambda c: c.speak(req))

    async def _stream(
        self,
        spec: p.ModelSpec,
        start: Callable[[EngineClient], AsyncGenerator[S, None]],
        prefix: p.Generate | None = None,
    ) -> AsyncGenerator[S, None]:
        """Relay one streamed answer; a worker that fails before its first item hands over.
        With `prefix` and several workers, its prefix chain picks the worker first and is
        remembered for the one that answers."""
        await self._refresh()
        chain = prefix_chain(prefix) if prefix is not None and self.remote else None
        last: Exception | None = None
        for state in self._order(spec, chain):
            state.running[spec.path] = state.running.get(spec.path, 0) + 1
            try:
                outputs = start(state.client)
                try:
                    first = await outputs.__anext__()
                except (EngineDeadError, EngineRequestError) as exc:
                    await outputs.aclose()
                    if not self._skip(state, exc):
                        raise
                    last = exc
                    continue
                except BaseException:
                    await outputs.aclose()
                    raise
                if chain:
                    state.prefixes.remember(chain, state.client.worker_pid)
                async with aclosing(outputs):
                    yield first
                    async for batch in outputs:
                        yield batch
                return
            finally:
                state.running[spec.path] -= 1
        raise last if last is not None else EngineDeadError("no inference worker is available")

    def _skip(self, state: _State, exc: Exception) -> bool:
        """Whether `exc` (before any output) sends the request on to the next worker."""
        if isinstance(exc, EngineRequestError) and exc.code not in RETRY_CODES:
            return False
        if isinstance(exc, EngineDeadError):
            state.down_until = time.monotonic() + DOWN_FOR_S
            state.prefixes.clear()
        if self.remote:
            log.warning("worker %s: %s; trying the next one", state.name, exc)
        return True

    async def _each(self, spec: p.ModelSpec, call: Callable[[EngineClient], Awaitable[T]]) -> T:
        await self._refresh()
        last: Exception | None = None
        for state in self._order(spec):
            try:
                return await call(state.client)
            except (EngineDeadError, EngineRequestError) as exc:
                if not self._skip(state, exc):
                    raise
                last = exc
        raise last if last is not None else EngineDeadError("no inference worker is available")

    async def embed(self, req: p.Embed) -> p.EmbeddingsReply:
        return await self._each(req.model, lambda c: c.embed(req))

    async def count_tokens(self, req: p.CountTokens) -> int:
        return await self._each(req.model, lambda c: c.count_tokens(req))

    async def transcribe(self, req: p.Transcribe) -> p.TranscriptionReply:
        return await self._each(req.model, lambda c: c.transcribe(req))

    async def health(self, timeout: float = 2.0) -> dict[str, Any]:
        """The embedded worker's health (/healthz); remote ones are on the Workers page."""
        return await self.local.client.health(timeout)


_clients: dict[int, WorkerGroup] = {}


def get_engine_client() -> WorkerGroup:
    """The workers for the running event loop (one connection per worker per loop): the
    embedded one and any registered on the Workers page (inference/fleet.py)."""
    from django.conf import settings

    loop = asyncio.get_running_loop()
    group = _clients.get(id(loop))
    if group is None or group.socket_path != settings.MLXM_WORKER_SOCKET:
        local = EngineClient(
            settings.MLXM_WORKER_SOCKET, connect_timeout=settings.MLXM_WORKER_CONNECT_TIMEOUT
        )
        group = WorkerGroup(local, secret=settings.MLXM_WORKER_SECRET, tls_ca=settings.MLXM_WORKER_TLS_CA)
        _clients[id(loop)] = group
    return group
