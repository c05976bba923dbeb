"""The neutral answer every backend produces and every surface encodes.

A local worker answer and a cloud answer (decoded from its protocol) are both a `Stream` of
`protocol.Output` batches: text, reasoning and tool-call deltas, token counts, and a final
one with `finish_reason`. A failure after the answer began is an exception from the stream;
`failure_of` maps it (and any failure before) to one status, code and message that each API
shape then renders.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

from inference import protocol as p
from inference.client import EngineDeadError, EngineRequestError
from mlxmanager.errors import DomainError


class UpstreamStreamError(Exception):
    """A cloud stream failed after its first byte (no fallback is possible then)."""

    def __init__(self, message: str, *, code: str = "upstream_error") -> None:
        super().__init__(message)
        self.message = message
        self.code = code


async def _nothing() -> AsyncGenerator[list[p.Output], None]:
    return
    yield  # pragma: no cover


@dataclass
class Stream:
    """One answer as neutral events: `first` has arrived, `rest` follows (closing it aborts)."""

    id: str
    model: str
    first: list[p.Output]
    rest: AsyncGenerator[list[p.Output], None] = field(default_factory=_nothing)
    created: int = field(default_factory=lambda: int(time.time()))
    # The worker request of a local answer (the Responses encoder echoes its settings).
    request: p.Generate | None = None

    async def batches(self) -> AsyncGenerator[list[p.Output], None]:
        """Every batch up to the final one (the first included)."""
        batch = self.first
        while True:
            yield batch
            if batch and batch[-1].finish_reason is not None:
                return
            try:
                batch = await self.rest.__anext__()
            except StopAsyncIteration:
                return

    async def aclose(self) -> None:
        await self.rest.aclose()


@dataclass(frozen=True)
class Failure:
    """A failure in API-neutral terms."""

    status: int
    message: str
    code: str | None
    type_: str  # OpenAI's error type
    param: str | None = None
    retry_after: int | None = None


_ENGINE_STATUS = {p.ERR_BAD_REQUEST: 400, p.ERR_OVERLOADED: 503, p.ERR_MODEL_LOAD: 503,
                  p.ERR_QUEUE_FULL: 429, p.ERR_QUEUE_TIMEOUT: 503}  # fmt: skip
_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 403: "invalid_request_error",
          404: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error"}  # fmt: skip


def engine_status(exc: EngineRequestError) -> int:
    return _ENGINE_STATUS.get(exc.code, 500)


def failure_of(exc: BaseException) -> Failure | None:
    """The failure an exception stands for, or None for an unexpected one (a 500)."""
    if isinstance(exc, DomainError):
        code = "model_not_found" if exc.status == 404 and exc.param == "model" else exc.code
        retry: Any = getattr(exc, "retry_after", None)
        type_ = (
            "rate_limit_error"
            if exc.status == 429
            else "server_error"
            if exc.status >= 500
            else "invalid_request_error"
        )
        return Failure(exc.status, exc.message, code, type_, exc.param, retry)
    if isinstance(exc, EngineDeadError):
        return Failure(503, f"{exc}; it is restarting, retry shortly.", "worker_unavailable", "server_error")
    if isinstance(exc, EngineRequestError):
        status = engine_status(exc)
        retry_after = None
        if status == 429:  # a full queue: when a retry may find room (at least a second)
            retry_after = max(1, math.ceil(exc.retry_after or 1))
        return Failure(status, exc.message, exc.code, _TYPES.get(status, "server_error"), None, retry_after)
    if isinstance(exc, UpstreamStreamError):
        return Failure(502, exc.message, exc.code, "server_error")
    return None


def unexpected() -> Failure:
    return Failure(
        500, "The server had an error while processing your request.", "server_error", "server_error"
    )
