"""The one thread that owns MLX: admits requests, steps every model's batch, emits tokens.

Requests reach it through a queue (as in mlx-lm's server); what one round of steps
produces is grouped per connection and handed to `emit` as one list, which the I/O
loop writes as one frame.

A model runs at most `max_concurrent` generations (a text model takes a new one only into a
free prefill slot of its batch); more wait in the model's fair queue
(inference/worker/fairness.py), one lane per user, and start in deficit-round-robin order
on prompt tokens as rows free. The queue's limits (MLXM_MAX_QUEUE, MLXM_MAX_USER_CONCURRENT)
refuse with `queue_full`, a wait beyond MLXM_QUEUE_TIMEOUT ends with `queue_timeout`.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import msgspec

from inference import protocol as p
from inference.worker import memory
from inference.worker.fairness import FairQueue, Limits, lane_of, retry_after
from inference.worker.pool import ModelLoadError, Pool, PoolFull

log = logging.getLogger(__name__)

Emit = Callable[[Any, list[Any]], None]
HISTORY_EVERY = 10.0  # seconds between chart samples
HISTORY_SAMPLES = 360  # one hour


class _ConnectionClosed:
    """Inbox marker: abort everything that connection started."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn


class _AbortAll:
    """Inbox marker: end every running request with `message` (a drain that ran out of time)."""

    def __init__(self, message: str) -> None:
        self.message = message


def waiting_spec(waiting: FairQueue[_Queued]) -> p.ModelSpec:
    """The model spec of one of a queue's requests (they all share one engine)."""
    return next(iter(waiting)).req.model


def _ends(item: Any) -> bool:
    """Whether `item` is a request's last message (its end, or its error)."""
    if isinstance(item, p.Output):
        return item.finish_reason is not None
    if isinstance(item, p.AudioChunk):
        return item.final
    return isinstance(item, p.RequestError)


# Which engine kinds serve each request type.
GENERATES = ("llm", "vision")
SERVICE_EMA = 0.2  # weight of the latest request in a model's average time per request
IMAGE_COST = 256  # prompt tokens an image counts for in the fair queue (before it is encoded)


class QueueFull(Exception):
    """A request refused by the queue's limits; `retry_after` in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _Queued:
    """A Generate waiting in its model's fair queue."""

    __slots__ = ("arrived", "conn", "prompt", "req")

    def __init__(self, conn: Any, req: p.Generate, arrived: float | None, prompt: list[int] | None) -> None:
        self.conn = conn
        self.req = req
        self.arrived = arrived
        self.prompt = prompt


class Scheduler(threading.Thread):
    def __init__(
        self,
        emit: Emit,
        *,
        pool: Pool | None = None,
        preload: list[p.ModelSpec] | None = None,
        replicator: Any = None,
        limits: Limits | None = None,
    ) -> None:
        super().__init__(name="mlx-scheduler", daemon=True)
        self.pool = pool if pool is not None else Pool(count_runtime=memory.count_process())
        self._preload = list(preload or [])
        self._emit = emit
        self._inbox: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
        self._stop_event = threading.Event()
        self._owner: dict[str, Any] = {}  # request_id -> engine
        # request_id -> when a Generate reached the worker (perf_counter), until it is handled:
        # its final output's `queued_s` counts from there.
        self._arrived: dict[str, float] = {}
        self.queued = 0
        self.snapshot: dict[str, Any] = {"models": [], "active_requests": 0, "loading": None}
        self.started_at = time.time()
        # (time, tokens/s, weight bytes) every HISTORY_EVERY seconds, for the pool page chart.
        self.history: deque[tuple[float, float, int]] = deque(maxlen=HISTORY_SAMPLES)
        self._rate_mark: tuple[float, dict[int, int]] = (time.monotonic(), {})
        self._rates: dict[str, float] = {}
        # Set on shutdown: running requests finish, new ones are refused (503, so routing
        # can fall back to another target).
        self.draining = False
        # Over an MLX distributed group (inference/worker/distributed.py): every round's inbox
        # is rank 0's, broadcast to all ranks.
        self.replicator = replicator
        # Fair turns (inference/worker/fairness.py): per model (pool key), the generations
        # waiting for a batch row, and those running (request_id -> model key, lane, start).
        self.limits = limits if limits is not None else Limits.from_env()
        self._queues: dict[Any, FairQueue[_Queued]] = {}
        self._running: dict[str, tuple[Any, str, float]] = {}
        self._per_lane: dict[tuple[Any, str], int] = defaultdict(int)  # running + waiting
        self._service_s: dict[Any, float] = {}  # model key -> average seconds per request
        self.waiting = 0  # generations in the fair queues (read by the I/O thread)
        self.rounds = 0  # rounds of steps run (the fairness tests count them)

    # ---- called from the I/O thread ------------------------------------------------

    def submit(self, conn: Any, msg: Any) -> None:
        if isinstance(msg, p.Generate):
            self._arrived[msg.request_id] = time.perf_counter()
        self.queued += 1
        self._inbox.put((conn, msg))

    def connection_closed(self, conn: Any) -> None:
        self._inbox.put((conn, _ConnectionClosed(conn)))

    def begin_drain(self) -> None:
        self.draining = True

    def abort_all(self, message: str) -> None:
        self._inbox.put((None, _AbortAll(message)))

    @property
    def idle(self) -> bool:
        """Nothing queued and nothing generating (read from the I/O thread while draining)."""
        return self.queued <= 0 and self.waiting <= 0 and not any(e.active for e in self.pool)

    def stop(self) -> None:
        self._stop_event.set()
        self._inbox.put((None, None))

    # ---- the loop ----------------------------------------------------------------

    def run(self) -> None:
        import mlx.core as mx

        # Every MLX array lives on this thread's stream.
        last_snapshot = last_sample = 0.0
        with mx.stream(mx.default_stream(mx.default_device())):
            self.pool.measure_runtime()
            self._load_preloaded()
            while True:
                busy = self.waiting > 0 or any(e.active for e in self.pool)
                if self.replicator is None:
                    if self._stop_event.is_set():
                        break
                    self._drain(block=not busy)
                elif not self._replicated_round(busy):
                    break
                self.round()
                now = time.monotonic()
                if now - last_snapshot > 0.25:
                    if not busy and self.replicator is None:
                        self.pool.expire(time.time())
                    if not busy:
                        self.pool.measure_runtime()
                    self._refresh_snapshot()
                    last_snapshot = now
                if now - last_sample > HISTORY_EVERY:
                    self._sample(now)
                    last_sample = now
        for engine in self.pool:
            engine.close()

    def _replicated_round(self, busy: bool) -> bool:
        """Handle this round's inbox, rank 0's on every rank; False once told to stop."""
        stopping = self._stop_event.is_set()
        items: list[tuple[Any, Any]] = []
        if self.replicator.leader and not stopping:
            try:
                item = self._inbox.get(timeout=0.5) if not busy else self._inbox.get_nowait()
                items.append(item)
                while True:
                    items.append(self._inbox.get_nowait())
            except queue.Empty:
                pass
        items, draining, stopping = self.replicator.sync(items, draining=self.draining, stopping=stopping)
        self.draining = draining
        for conn, msg in items:
            if self.replicator.leader and not isinstance(msg, _ConnectionClosed | _AbortAll | None):
                self.queued -= 1
            self._handle(conn, msg)
        return not stopping

    def _load_preloaded(self) -> None:
        for spec in self._preload:
            try:
                self.pool.get(spec)
            except Exception as exc:  # a bad profile must not keep the worker down
                log.error("could not preload %s: %s", spec.name, exc)
        self._refresh_snapshot()

    def _sample(self, now: float) -> None:
        """Tokens/s per model since the last sample, and a point for the history chart."""
        then, counts = self._rate_mark
        # Per engine (its name follows the latest profile); one loaded since the last sample
        # made all of its tokens since then, so it counts from zero.
        current = {id(e): e.tokens_generated for e in self.pool}
        dt = max(1e-6, now - then)
        self._rates = {e.spec.name: max(0, current[id(e)] - counts.get(id(e), 0)) / dt for e in self.pool}
        self._rate_mark = (now, current)
        self.history.append((time.time(), round(sum(self._rates.values()), 2), self.pool.used_bytes))

    def _drain(self, *, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self.queued -= 1 if not isinstance(item[1], _ConnectionClosed | _AbortAll | None) else 0
            self._handle(*item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def round(self) -> None:
        """One round: a step of every model's batch, then what waits takes the rows that
        freed (and, on one machine, what waited too long leaves)."""
        self.rounds += 1
        self._step_all()
        if self.waiting:
            if self.limits.timeout_s and self.replicator is None:  # ranks' clocks differ
                self._expire_waiting(time.perf_counter() - self.limits.timeout_s)
            self._admit_waiting()

    def handle(self, conn: Any, msg: Any) -> None:
        """Handle one message as the loop does (for tests driving the scheduler themselves)."""
        self._handle(conn, msg)

    def _handle(self, conn: Any, msg: Any) -> None:
        if msg is None:
            return
        if isinstance(msg, _AbortAll):
            self._fail_running(msg.message)
            self._fail_waiting(lambda q: True, p.ERR_OVERLOADED, msg.message)
            return
        arrived = self._arrived.pop(msg.request_id, None) if isinstance(msg, p.Generate) else None
        if self.draining and isinstance(
            msg, p.Generate | p.Embed | p.CountTokens | p.PoolCommand | p.Transcribe | p.Speak
        ):
            self._fail(conn, msg.request_id, p.ERR_OVERLOADED, "the worker is shutting down")
            return
        if isinstance(msg, p.Generate):
            self._admit(conn, msg, arrived)
        elif isinstance(msg, p.CountTokens):
            self._count_tokens(conn, msg)
        elif isinstance(msg, p.Embed):
            self._embed(conn, msg)
        elif isinstance(msg, p.Transcribe):
            self._transcribe(conn, msg)
        elif isinstance(msg, p.Speak):
            self._speak(conn, msg)
        elif isinstance(msg, p.Abort):
            self._abort(msg.request_id)
        elif isinstance(msg, p.PoolCommand):
            self._pool_command(conn, msg)
        elif isinstance(msg, p.Configure):
            self._configure(conn, msg)
        elif isinstance(msg, _ConnectionClosed):
            for engine in self.pool:
                for rid in engine.owned_by(msg.conn):
                    self._abort(rid)
            self._drop_waiting(lambda q: q.conn is msg.conn)

    def _with_engine(self, conn: Any, request_id: str, spec: p.ModelSpec, what: str) -> Any | None:
        """The engine for `spec` (loading it if needed), or None after reporting why not."""
        try:
            self.snapshot = {**self.snapshot, "loading": spec.name}
            return self.pool.get(spec)
        except PoolFull as exc:
            self._fail(conn, request_id, p.ERR_OVERLOADED, str(exc))
        except ModelLoadError as exc:
            log.warning("%s", exc)
            self._fail(conn, request_id, p.ERR_MODEL_LOAD, str(exc))
        except Exception as exc:
            log.exception("could not %s %s", what, request_id)
            self._fail(conn, request_id, p.ERR_INTERNAL, f"could not {what}: {exc}")
        finally:
            self.snapshot = {**self.snapshot, "loading": None}
        return None

    _WHAT = {
        "llm": ("a text generation model", "/v1/chat/completions"),
        "vision": ("a vision model", "/v1/chat/completions"),
        "embeddings": ("an embeddings model", "/v1/embeddings"),
        "stt": ("a speech-to-text model", "/v1/audio/transcriptions"),
        "tts": ("a text-to-speech model", "/v1/audio/speech"),
    }

    def _wrong_kind(self, conn: Any, request_id: str, engine: Any, wanted: tuple[str, ...]) -> bool:
        """Report a request sent to a model of another kind (a chat to an embeddings model...)."""
        if engine.kind in wanted:
            return False
        is_, hint = self._WHAT.get(engine.kind, (engine.kind, "its own endpoint"))
        not_ = " or ".join(self._WHAT.get(k, (k, ""))[0] for k in wanted)
        self._fail(
            conn, request_id, p.ERR_BAD_REQUEST, f"'{engine.spec.name}' is {is_}, not {not_}: use {hint}"
        )
        return True

    def _on_engine(
        self, conn: Any, request_id: str, spec: p.ModelSpec, kind: str | tuple[str, ...], what: str, call: Any
    ) -> tuple[Any, Any]:
        """Run `call(engine)` on the engine for `spec` (loading it), which must be of `kind`.
        Returns (engine, result), or (None, None) once the failure is reported to the client."""
        from inference.worker.adapters.llm import BadRequest, NoMemory

        engine = self._with_engine(conn, request_id, spec, what)
        kinds = (kind,) if isinstance(kind, str) else kind
        if engine is None or self._wrong_kind(conn, request_id, engine, kinds):
            return None, None
        try:
            return engine, call(engine)
        except QueueFull as exc:
            self._emit(conn, [p.RequestError(request_id=request_id, code=p.ERR_QUEUE_FULL, message=str(exc),
                                             retry_after=float(exc.retry_after))])  # fmt: skip
        except BadRequest as exc:
            self._fail(conn, request_id, p.ERR_BAD_REQUEST, str(exc))
        except NoMemory as exc:
            self._fail(conn, request_id, p.ERR_OVERLOADED, str(exc))
        except Exception as exc:
            log.exception("could not %s %s", what, request_id)
            self._fail(conn, request_id, p.ERR_INTERNAL, f"could not {what}: {exc}")
        return None, None

    def _embed(self, conn: Any, req: p.Embed) -> None:
        engine, reply = self._on_engine(
            conn, req.request_id, req.model, "embeddings", "embed with", lambda e: e.embed(req)
        )
        if engine is not None:
            self._emit(conn, [reply])

    def _transcribe(self, conn: Any, req: p.Transcribe) -> None:
        engine, reply = self._on_engine(
            conn, req.request_id, req.model, "stt", "transcribe with", lambda e: e.transcribe(req)
        )
        if engine is not None:
            self._emit(conn, [reply])

    def _speak(self, conn: Any, req: p.Speak) -> None:
        engine, _ = self._on_engine(
            conn, req.request_id, req.model, "tts", "speak with", lambda e: e.add(req, conn)
        )
        if engine is not None:
            self._owner[req.request_id] = engine

    def _admit(self, conn: Any, req: p.Generate, arrived: float | None = None) -> None:
        """Start a generation when its model has a free row and nobody waits, else queue it
        (or refuse it, beyond the queue's limits)."""
        engine, started = self._on_engine(
            conn, req.request_id, req.model, GENERATES, "start", lambda e: self._start_or_queue(e, conn, req, arrived)
        )  # fmt: skip
        if engine is not None and started:
            self._mark_started(engine, req)

    @staticmethod
    def _slots(engine: Any) -> int:
        """How many generations the engine runs at once (a quantized KV cache: one)."""
        return 1 if engine.spec.kv_bits is not None else max(1, int(engine.max_concurrent))

    def _has_room(self, engine: Any) -> bool:
        """A free row, and for a text model a free prefill slot: what it would queue itself
        (first come, first served) waits in the fair queue instead."""
        if engine.active >= self._slots(engine):
            return False
        return engine.kind != "llm" or not engine.prefill_full

    def _start_or_queue(self, engine: Any, conn: Any, req: p.Generate, arrived: float | None) -> bool:
        key, lane = engine.spec.key, lane_of(req)
        waiting = self._queues.get(key)
        limit = self.limits.max_user
        if lane and limit is not None and self._per_lane.get((key, lane), 0) >= limit:
            raise QueueFull(
                f"you already have {limit} request(s) running or queued for '{req.model.name}' "
                "(MLXM_MAX_USER_CONCURRENT); retry when one has finished",
                self._retry_after(engine, 0),
            )
        if not waiting and self._has_room(engine) and self._lane_may_start(engine, lane):
            engine.add(req, conn, arrived=arrived)
            return True
        ahead = len(waiting) if waiting is not None else 0
        if self.limits.max_queue is not None and ahead >= self.limits.max_queue:
            raise QueueFull(
                f"the queue for '{req.model.name}' is full: {ahead} request(s) already wait for "
                f"its {self._slots(engine)} running one(s) (MLXM_MAX_QUEUE); retry later",
                self._retry_after(engine, ahead),
            )
        prompt: list[int] | None = None
        if req.images:  # the engine expands images into tokens when it starts the request
            cost = len(msgspec.json.encode(req.messages)) // 4 + IMAGE_COST * len(req.images)
        else:  # the prompt's length is its cost; errors are the client's, at once
            prompt = engine._tokenize(req)
            req = engine._check_context(req, prompt)
            cost = len(prompt)
        if waiting is None:
            waiting = self._queues[key] = FairQueue()
        waiting.push(lane, _Queued(conn, req, arrived, prompt), cost=cost, weight=req.weight,
                     now=time.perf_counter())  # fmt: skip
        self._per_lane[(key, lane)] += 1
        self.waiting += 1
        return False

    def _lane_may_start(self, engine: Any, lane: str) -> bool:
        """Whether `lane` may start one more generation on `engine` now. No user holds every
        row of a batch (one stays free for someone else's request: with 4 rows or more) nor
        more than half of its prefill slots: a long-prompt flood cannot make another user's
        short request wait for all of its prefills (bench_team.py scenario (g))."""
        slots = self._slots(engine)
        if slots < 4:
            return True
        key = engine.spec.key
        mine = [rid for rid, (k, ln, _) in self._running.items() if k == key and ln == lane]
        if len(mine) >= slots - 1:
            return False
        if engine.kind != "llm":
            return True
        prefill_share = max(1, int(engine.batch.prefill_batch_size) // 2)
        if len(mine) < prefill_share:
            return True
        return bool(engine.prefilling(lane) < prefill_share)

    def _retry_after(self, engine: Any, ahead: int) -> int:
        return retry_after(self._service_s.get(engine.spec.key), ahead, self._slots(engine))

    def _mark_started(self, engine: Any, req: p.Generate) -> None:
        self._owner[req.request_id] = engine
        lane = lane_of(req)
        self._running[req.request_id] = (engine.spec.key, lane, time.perf_counter())
        self._per_lane[(engine.spec.key, lane)] += 1

    def _mark_ended(self, request_id: str, *, finished: bool = False) -> None:
        """A started request is over; `finished`: it ran to its end (its time is a sample)."""
        self._owner.pop(request_id, None)
        running = self._running.pop(request_id, None)
        if running is None:
            return
        key, lane, started = running
        self._unlane(key, lane)
        if finished:
            took = time.perf_counter() - started
            before = self._service_s.get(key)
            self._service_s[key] = took if before is None else before + SERVICE_EMA * (took - before)

    def _unlane(self, key: Any, lane: str) -> None:
        left = self._per_lane[(key, lane)] - 1
        if left > 0:
            self._per_lane[(key, lane)] = left
        else:
            self._per_lane.pop((key, lane), None)

    def _admit_waiting(self) -> None:
        """Start waiting generations, in fair order, on every model with free rows."""
        for key, waiting in list(self._queues.items()):
            while waiting:
                spec = waiting_spec(waiting)
                try:  # loaded, unless it was evicted meanwhile
                    engine = self.pool.get(spec)
                except Exception as exc:
                    log.warning("could not load %s for its waiting requests: %s", spec.name, exc)
                    for lost in waiting.clear():
                        self.waiting -= 1
                        self._unlane(key, lane_of(lost.req))
                        self._fail(lost.conn, lost.req.request_id, p.ERR_MODEL_LOAD, str(exc))
                    break
                if not self._has_room(engine):
                    break
                item = waiting.pop(functools.partial(self._lane_may_start, engine))
                if item is None:  # those waiting already hold their share of the batch
                    break
                self.waiting -= 1
                self._unlane(key, lane_of(item.req))
                self._start_waiting(engine, item)
            if not waiting:
                self._queues.pop(key, None)

    def _start_waiting(self, engine: Any, item: _Queued) -> None:
        from inference.worker.adapters.llm import BadRequest

        req = item.req
        try:
            engine.add(req, item.conn, arrived=item.arrived, prompt=item.prompt)
        except BadRequest as exc:
            self._fail(item.conn, req.request_id, p.ERR_BAD_REQUEST, str(exc))
            return
        except Exception as exc:
            log.exception("could not start %s", req.request_id)
            self._fail(item.conn, req.request_id, p.ERR_INTERNAL, f"could not start: {exc}")
            return
        self._mark_started(engine, req)

    def _drop_waiting(self, match: Callable[[_Queued], bool]) -> list[_Queued]:
        """Take waiting generations out of their queues (aborted, client gone, failed)."""
        dropped: list[_Queued] = []
        for key, waiting in list(self._queues.items()):
            for item in waiting.remove(match):
                self._unlane(key, lane_of(item.req))
                dropped.append(item)
            if not waiting:
                del self._queues[key]
        self.waiting -= len(dropped)
        return dropped

    def _fail_waiting(self, match: Callable[[_Queued], bool], code: str, message: str) -> None:
        for item in self._drop_waiting(match):
            self._fail(item.conn, item.req.request_id, code, message)

    def _expire_waiting(self, before: float) -> None:
        timeout = self.limits.timeout_s
        for key, waiting in list(self._queues.items()):
            for item in waiting.expired(before):
                self.waiting -= 1
                self._unlane(key, lane_of(item.req))
                self._fail(
                    item.conn,
                    item.req.request_id,
                    p.ERR_QUEUE_TIMEOUT,
                    f"the request waited more than {timeout:g} s for a turn on '{item.req.model.name}' "
                    "(MLXM_QUEUE_TIMEOUT); retry later",
                )
            if not waiting:
                del self._queues[key]

    def _count_tokens(self, conn: Any, req: p.CountTokens) -> None:
        engine, count = self._on_engine(
            conn, req.request_id, req.model, GENERATES, "count tokens for", lambda e: e.count_tokens(req)
        )
        if engine is not None:
            self._emit(conn, [p.TokenCount(request_id=req.request_id, input_tokens=count)])

    def _pool_command(self, conn: Any, cmd: p.PoolCommand) -> None:
        """Admin actions from the dashboard: load, unload, pin, unpin."""
        message = ""
        if cmd.action == "load":
            if self._with_engine(conn, cmd.request_id, cmd.model, "load") is None:
                return
            message = f"loaded {cmd.model.name}"
        else:
            engine = self.pool.find(cmd.model)
            if engine is None:
                self._fail(conn, cmd.request_id, p.ERR_BAD_REQUEST, f"'{cmd.model.name}' is not loaded")
                return
            if cmd.action == "unload":
                if engine.active:
                    self._fail(
                        conn,
                        cmd.request_id,
                        p.ERR_BAD_REQUEST,
                        f"'{cmd.model.name}' is serving {engine.active} request(s); unload it when idle",
                    )
                    return
                self.pool.unload(cmd.model.key, reason="on request")
                message = f"unloaded {cmd.model.name}"
            elif cmd.action in ("pin", "unpin"):
                engine.pinned = cmd.action == "pin"
                message = f"{cmd.action}ned {cmd.model.name}"
            else:
                self._fail(conn, cmd.request_id, p.ERR_BAD_REQUEST, f"unknown pool action '{cmd.action}'")
                return
        self._refresh_snapshot()
        self._emit(conn, [p.PoolReply(request_id=cmd.request_id, message=message)])

    def _configure(self, conn: Any, cmd: p.Configure) -> None:
        """New settings from the Settings page, applied from the next admission on: the queue
        limits (requests already waiting stay), the memory limit and the prompt-cache share."""
        self.limits = Limits(cmd.max_queue, cmd.max_user, cmd.queue_timeout_s)
        lim = self.limits
        changed = [
            "queue: "
            + ", ".join(
                [
                    "no waiting limit"
                    if lim.max_queue is None
                    else f"at most {lim.max_queue} waiting per model",
                    "no per-user limit" if lim.max_user is None else f"{lim.max_user} per user per model",
                    "no timeout" if not lim.timeout_s else f"{lim.timeout_s:g} s timeout",
                ]
            )
        ]
        if cmd.memory_limit_bytes is not None:
            self.pool.memory_limit = cmd.memory_limit_bytes
            changed.append(f"memory limit {cmd.memory_limit_bytes >> 20} MB")
        if cmd.prompt_cache_bytes is not None:
            self.pool.prompt_cache_bytes = cmd.prompt_cache_bytes
            changed.append(f"prompt cache {cmd.prompt_cache_bytes >> 20} MB per model")
        log.info("settings changed: %s", "; ".join(changed))
        self._refresh_snapshot()
        self._emit(conn, [p.PoolReply(request_id=cmd.request_id, message="; ".join(changed))])

    def _abort(self, request_id: str) -> None:
        engine = self._owner.get(request_id)
        if engine is not None:
            self._mark_ended(request_id)
            engine.abort(request_id)
        elif self.waiting:
            self._drop_waiting(lambda q: q.req.request_id == request_id)

    def _fail_running(self, message: str) -> None:
        per_conn: dict[Any, list[Any]] = defaultdict(list)
        for engine in self.pool:
            if not engine.active:
                continue
            for request_id, conn in engine.fail_all():
                self._mark_ended(request_id)
                per_conn[conn].append(
                    p.RequestError(request_id=request_id, code=p.ERR_OVERLOADED, message=message)
                )
        self._refresh_snapshot()
        for conn, items in per_conn.items():
            self._emit(conn, items)

    def _fail(self, conn: Any, request_id: str, code: str, message: str) -> None:
        self._emit(conn, [p.RequestError(request_id=request_id, code=code, message=message)])

    def _step_all(self) -> None:
        per_conn: dict[Any, list[Any]] = defaultdict(list)
        # One step per model per round: loaded models share the thread fairly.
        for engine in self.pool:
            if not engine.active:
                continue
            try:
                outputs = engine.step()
            except Exception as exc:
                log.exception("step failed on %s", engine.spec.name)
                for request_id, conn in engine.fail_all():
                    self._mark_ended(request_id)
                    per_conn[conn].append(
                        p.RequestError(
                            request_id=request_id,
                            code=p.ERR_INTERNAL,
                            message=f"generation failed: {exc}",
                        )
                    )
                continue
            for conn, out in outputs:
                per_conn[conn].append(out)
                if _ends(out):
                    self._mark_ended(out.request_id, finished=isinstance(out, p.Output))
        # What the process holds outside MLX grows under load too (its heap, buffers): counted.
        self.pool.measure_runtime(rising=True)
        if any(_ends(i) for items in per_conn.values() for i in items):
            # Health must already count a request as done when its client sees the end.
            self._refresh_snapshot()
        for conn, items in per_conn.items():
            self._emit(conn, items)

    def _refresh_snapshot(self) -> None:
        models = self.pool.stats()
        waiting = {e.spec.name: len(self._queues.get(e.spec.key) or ()) for e in self.pool}
        for m in models:
            m["tokens_per_s"] = round(self._rates.get(m["name"], 0.0), 2)
            m["queued_requests"] = m.get("queued_requests", 0) + waiting.get(m["name"], 0)
        self.snapshot = {
            "models": models,
            "active_requests": sum(m["active_requests"] for m in models),
            "loading": self.snapshot.get("loading"),
            "memory": self.pool.memory_stats(),
            "history": list(self.history),
        }
