"""The one thread that owns MLX: admits requests, steps every model's batch, emits tokens.

Requests reach it through a queue (as in mlx-lm's server); what one round of steps
produces is grouped per connection and handed to `emit` as one list, which the I/O
loop writes as one frame.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from inference import protocol as p
from inference.worker.pool import ModelLoadError, Pool

log = logging.getLogger(__name__)

Emit = Callable[[Any, list[Any]], None]


class _ConnectionClosed:
    """Inbox marker: abort everything that connection started."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn


class Scheduler(threading.Thread):
    def __init__(self, emit: Emit, *, pool: Pool | None = None) -> None:
        super().__init__(name="mlx-scheduler", daemon=True)
        self.pool = pool or Pool()
        self._emit = emit
        self._inbox: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
        self._stop_event = threading.Event()
        self._owner: dict[str, Any] = {}  # request_id -> engine
        self.queued = 0
        self.snapshot: dict[str, Any] = {"models": [], "active_requests": 0, "loading": None}
        self.started_at = time.time()

    # ---- called from the I/O thread ------------------------------------------------

    def submit(self, conn: Any, msg: Any) -> None:
        self.queued += 1
        self._inbox.put((conn, msg))

    def connection_closed(self, conn: Any) -> None:
        self._inbox.put((conn, _ConnectionClosed(conn)))

    def stop(self) -> None:
        self._stop_event.set()
        self._inbox.put((None, None))

    # ---- the loop ----------------------------------------------------------------

    def run(self) -> None:
        import mlx.core as mx

        # Every MLX array lives on this thread's stream.
        last_snapshot = 0.0
        with mx.stream(mx.default_stream(mx.default_device())):
            while not self._stop_event.is_set():
                busy = any(e.active for e in self.pool)
                self._drain(block=not busy)
                self._step_all()
                now = time.monotonic()
                if now - last_snapshot > 0.25:
                    self._refresh_snapshot()
                    last_snapshot = now
        for engine in self.pool:
            engine.close()

    def _drain(self, *, block: bool) -> None:
        try:
            item = self._inbox.get(timeout=0.5) if block else self._inbox.get_nowait()
        except queue.Empty:
            return
        while True:
            self.queued -= 1 if not isinstance(item[1], _ConnectionClosed) else 0
            self._handle(*item)
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return

    def _handle(self, conn: Any, msg: Any) -> None:
        if msg is None:
            return
        if isinstance(msg, p.Generate):
            self._admit(conn, msg)
        elif isinstance(msg, p.CountTokens):
            self._count_tokens(conn, msg)
        elif isinstance(msg, p.Abort):
            self._abort(msg.request_id)
        elif isinstance(msg, _ConnectionClosed):
            for engine in self.pool:
                for rid in engine.owned_by(msg.conn):
                    self._abort(rid)

    def _admit(self, conn: Any, req: p.Generate) -> None:
        from inference.worker.adapters.llm import BadRequest

        try:
            self.snapshot = {**self.snapshot, "loading": req.model.name}
            engine = self.pool.get(req.model)
            engine.add(req, conn)
        except BadRequest as exc:
            self._fail(conn, req.request_id, p.ERR_BAD_REQUEST, str(exc))
            return
        except ModelLoadError as exc:
            log.warning("%s", exc)
            self._fail(conn, req.request_id, p.ERR_MODEL_LOAD, str(exc))
            return
        except Exception as exc:
            log.exception("could not admit %s", req.request_id)
            self._fail(conn, req.request_id, p.ERR_INTERNAL, f"could not start: {exc}")
            return
        finally:
            self.snapshot = {**self.snapshot, "loading": None}
        self._owner[req.request_id] = engine

    def _count_tokens(self, conn: Any, req: p.CountTokens) -> None:
        from inference.worker.adapters.llm import BadRequest

        try:
            self.snapshot = {**self.snapshot, "loading": req.model.name}
            count = self.pool.get(req.model).count_tokens(req)
        except BadRequest as exc:
            self._fail(conn, req.request_id, p.ERR_BAD_REQUEST, str(exc))
            return
        except ModelLoadError as exc:
            log.warning("%s", exc)
            self._fail(conn, req.request_id, p.ERR_MODEL_LOAD, str(exc))
            return
        except Exception as exc:
            log.exception("could not count tokens for %s", req.request_id)
            self._fail(conn, req.request_id, p.ERR_INTERNAL, f"could not count tokens: {exc}")
            return
        finally:
            self.snapshot = {**self.snapshot, "loading": None}
        self._emit(conn, [p.TokenCount(request_id=req.request_id, input_tokens=count)])

    def _abort(self, request_id: str) -> None:
        engine = self._owner.pop(request_id, None)
        if engine is not None:
            engine.abort(request_id)

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
                    self._owner.pop(request_id, None)
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
                if out.finish_reason is not None:
                    self._owner.pop(out.request_id, None)
        if any(getattr(i, "finish_reason", "error") for items in per_conn.values() for i in items):
            # Health must already count a request as done when its client sees the end.
            self._refresh_snapshot()
        for conn, items in per_conn.items():
            self._emit(conn, items)

    def _refresh_snapshot(self) -> None:
        models = self.pool.stats()
        self.snapshot = {
            "models": models,
            "active_requests": sum(m["active_requests"] for m in models),
            "loading": self.snapshot.get("loading"),
        }
