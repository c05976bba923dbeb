"""`/v1/ws/chat`: chat completions over a WebSocket, for the playground.

The socket is opened with a short-lived JWT (`?token=`, purpose "ws-chat") minted for the
logged-in user. Client messages:

    {"type": "chat", "id": "<client id>", "body": {<a /v1/chat/completions body>}}
    {"type": "stop", "id": "<client id>"}

Server messages: `{"type": "delta", "id", "text"}` as tokens arrive (with `reasoning` and
`tool_calls` pieces when the model reasons or calls tools), then
`{"type": "done", "id", "finish_reason", "usage"}`, or `{"type": "error", "id", "error": {...}}`
(OpenAI's error object). "stop" and closing the socket abort the generation in the worker.

Each "chat" message is audited like a /v1 request: one request-log row per generation
(endpoint `/v1/ws/chat`, the user, client IP, model, tokens, TTFT, duration, tokens/s),
refused ones included; a stopped or abandoned generation is logged as 499 "cancelled".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from contextlib import aclosing
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.contrib.auth import get_user_model
from pydantic import ValidationError

from inference import gateway
from inference.api.openai import _engine_error_status
from inference.client import EngineDeadError, EngineRequestError, get_engine_client
from inference.schemas import ChatCompletionRequest
from mlxmanager.accounts.tokens import InvalidToken, token_verify
from mlxmanager.audit import recorder as rec
from mlxmanager.errors import DomainError

log = logging.getLogger(__name__)

CLOSE_UNAUTHORIZED = 4401
MAX_CONCURRENT_PER_SOCKET = 4
ENDPOINT = "/v1/ws/chat"


class ChatConsumer(AsyncJsonWebsocketConsumer):  # type: ignore[misc]
    async def connect(self) -> None:
        query = parse_qs(self.scope.get("query_string", b"").decode())
        token = (query.get("token") or [""])[0]
        try:
            user_id = token_verify(token, purpose="ws-chat")
            self.user = await get_user_model().objects.aget(pk=user_id, is_active=True)
        except (InvalidToken, get_user_model().DoesNotExist):
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
        self.tasks: dict[str, asyncio.Task[None]] = {}
        await self.accept()

    async def disconnect(self, code: int) -> None:
        for task in getattr(self, "tasks", {}).values():
            task.cancel()

    async def _error(
        self, rid: Any, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        err = {"message": message, "type": "invalid_request_error", "param": param, "code": code}
        await self.send_json({"type": "error", "id": rid, "error": err})

    def _audit(self, content: dict[str, Any]) -> rec.RequestAudit:
        """The audit record of one generation (the model as asked for, even if invalid)."""
        body = content.get("body")
        model = body.get("model") if isinstance(body, dict) else None
        model = model[:256] if isinstance(model, str) else ""
        client = self.scope.get("client") or (None, None)
        return rec.RequestAudit(
            endpoint=ENDPOINT,
            client_ip=(client[0] or None) and str(client[0])[:45],
            user_id=self.user.pk,
            username=self.user.get_username(),
            requested_model=model,
            backend=f"local:{model}" if model else "",
            stream=True,
            attempts=1,
        )

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not isinstance(content, dict):
            await self._error(None, "messages must be JSON objects")
            return
        rid = content.get("id")
        if not isinstance(rid, str) or not rid or len(rid) > 100:
            await self._error(None, "each message needs an 'id' string", param="id")
            return
        kind = content.get("type")
        if kind == "stop":
            task = self.tasks.get(rid)
            if task is not None:
                task.cancel()
            return
        if kind != "chat":
            await self._error(rid, f"unknown message type {kind!r}; use 'chat' or 'stop'", param="type")
            return
        if rid in self.tasks:
            await self._error(rid, "a generation with this id is already running", param="id")
            return
        if len(self.tasks) >= MAX_CONCURRENT_PER_SOCKET:
            await self._error(rid, "too many generations on this socket", code="too_many_requests")
            return
        audit = self._audit(content)
        try:
            body = ChatCompletionRequest.model_validate(content.get("body"))
            body.refuse_unsupported()
            if body.logprobs:  # deltas here carry text only
                raise DomainError("logprobs are served by POST /v1/chat/completions only", param="logprobs")
            target = await gateway.resolve(body.model)
        except ValidationError as exc:
            first = exc.errors()[0]
            param = ".".join(str(x) for x in first.get("loc", ())) or None
            self._refused(audit, 400, "invalid_request_error")
            await self._error(rid, f"Invalid value for '{param}': {first.get('msg')}", param=param)
            return
        except DomainError as exc:
            code = "model_not_found" if exc.status == 404 and exc.param == "model" else exc.code
            self._refused(audit, exc.status, code or "invalid_request_error")
            await self._error(rid, exc.message, param=exc.param, code=exc.code)
            return
        task = asyncio.create_task(self._generate(rid, gateway.chat_request(body, target), audit))
        self.tasks[rid] = task
        task.add_done_callback(lambda _t: self.tasks.pop(rid, None))

    @staticmethod
    def _refused(audit: rec.RequestAudit, status: int, error: str) -> None:
        if audit.finish(status, error):
            rec.record(audit)

    async def _generate(self, rid: str, req: Any, audit: rec.RequestAudit) -> None:
        rec.activate(audit)  # this task's own context: track_outputs sees the record
        status, error = 200, ""
        try:
            async with aclosing(rec.track_outputs(get_engine_client().generate(req))) as outputs:
                async for batch in outputs:
                    text = "".join(o.text for o in batch)
                    reasoning = "".join(o.reasoning for o in batch)
                    calls = [
                        {"index": c.index, "id": c.id, "name": c.name, "arguments": c.arguments}
                        for o in batch
                        for c in o.tool_calls
                    ]
                    if text or reasoning or calls:
                        delta: dict[str, Any] = {"type": "delta", "id": rid, "text": text}
                        if reasoning:
                            delta["reasoning"] = reasoning
                        if calls:
                            delta["tool_calls"] = calls
                        await self.send_json(delta)
                    final = batch[-1] if batch[-1].finish_reason else None
                    if final is not None:
                        usage = {
                            "prompt_tokens": final.prompt_tokens,
                            "completion_tokens": final.completion_tokens,
                            "total_tokens": final.prompt_tokens + final.completion_tokens,
                            "prompt_tokens_details": {"cached_tokens": final.cached_tokens},
                        }
                        await self.send_json(
                            {"type": "done", "id": rid, "finish_reason": final.finish_reason, "usage": usage}
                        )
        except asyncio.CancelledError:
            status, error = rec.CLIENT_CLOSED, "cancelled"
            with contextlib.suppress(Exception):
                await self.send_json({"type": "done", "id": rid, "finish_reason": "cancelled", "usage": None})
            raise
        except EngineDeadError as exc:
            status, error = 503, "worker_unavailable"
            await self._error(rid, str(exc), code="worker_unavailable")
        except EngineRequestError as exc:
            status, error = _engine_error_status(exc), exc.code
            await self._error(rid, exc.message, code=exc.code)
        except Exception:
            status, error = 500, "internal"
            log.exception("chat socket generation failed")
            await self._error(
                rid, "The server had an error while processing your request.", code="server_error"
            )
        finally:
            if audit.finish(status, error):
                rec.record(audit)
