"""`/v1/ws/chat`: chat completions over a WebSocket, for the playground.

The socket is opened with a short-lived JWT (`?token=`, purpose "ws-chat") minted for the
logged-in user. Client messages:

    {"type": "chat", "id": "<client id>", "body": {<a /v1/chat/completions body>}}
    {"type": "stop", "id": "<client id>"}

Server messages: `{"type": "delta", "id", "text"}` as tokens arrive (with `reasoning` and
`tool_calls` pieces when the model reasons or calls tools), then
`{"type": "done", "id", "finish_reason", "usage"}`, or `{"type": "error", "id", "error": {...}}`
(OpenAI's error object). "stop" and closing the socket abort the generation in the worker.

Speech, for the playground's dictation and read-aloud (local speech profiles, as on /v1/audio):

    {"type": "transcribe", "id", "model": "<stt profile>", "audio": "<base64 audio file>", "language"?}
        → {"type": "transcript", "id", "text"}
    {"type": "speech", "id", "model": "<tts profile>", "input": "<text>", "voice"?}
        → {"type": "audio", "id", "format": "wav", "data": "<base64 wav>"}

(or the same `error` message), each audited as one request of its own.

Each "chat" message is a call of the request pipeline (`inference.pipeline`), like any /v1
request: the user's limits, routing rules and fallbacks apply (a rule may send it to a cloud
upstream, whose answer is decoded into the same events), and it is audited: one request-log
row per generation (endpoint `/v1/ws/chat`, the user, client IP, model, backend, tokens,
TTFT, duration, tokens/s), refused ones included; a stopped or abandoned generation is
logged as 499 "cancelled". The user is checked again for every message: a deactivated user's
socket is refused and closed.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
from typing import Any
from urllib.parse import parse_qs

from channels.generic.websocket import AsyncJsonWebsocketConsumer
from django.conf import settings
from django.contrib.auth import get_user_model
from pydantic import ValidationError

from inference import encoders, pipeline
from inference.api import audio
from inference.api.openai import chat_prompt
from inference.events import Failure, Stream, failure_of, unexpected
from inference.schemas import ChatCompletionRequest
from mlxmanager import request_ids, tracing
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

    async def _send_failure(self, rid: Any, f: Failure, request_id: str = "") -> None:
        await self.send_json(encoders.ws_error(rid, f, request_id))

    async def _error(
        self, rid: Any, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        await self._send_failure(rid, Failure(400, message, code, "invalid_request_error", param))

    def _audit(self, content: dict[str, Any]) -> rec.RequestAudit:
        """The audit record of one generation (the model as asked for, even if invalid)."""
        body = content.get("body")
        model = body.get("model") if isinstance(body, dict) else content.get("model")
        model = model[:256] if isinstance(model, str) else ""
        client = self.scope.get("client") or (None, None)
        return rec.RequestAudit(
            endpoint=ENDPOINT,
            client_ip=(client[0] or None) and str(client[0])[:45],
            user_id=self.user.pk,
            username=self.user.get_username(),
            requested_model=model,
            stream=True,
            request_id=request_ids.new(),
        )

    async def _still_active(self) -> bool:
        return await get_user_model().objects.filter(pk=self.user.pk, is_active=True).aexists()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        if not await self._still_active():
            await self.close(code=CLOSE_UNAUTHORIZED)
            return
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
        if kind not in ("chat", "transcribe", "speech"):
            await self._error(
                rid,
                f"unknown message type {kind!r}; use 'chat', 'stop', 'transcribe' or 'speech'",
                param="type",
            )
            return
        if rid in self.tasks:
            await self._error(rid, "a generation with this id is already running", param="id")
            return
        if len(self.tasks) >= MAX_CONCURRENT_PER_SOCKET:
            await self._error(rid, "too many generations on this socket", code="too_many_requests")
            return
        audit = self._audit(content)
        if kind != "chat":
            await self._speech_request(rid, kind, content, audit)
            return
        try:
            body = ChatCompletionRequest.model_validate(content.get("body"))
            body.refuse_unsupported()
            if body.logprobs:  # deltas here carry text only
                raise DomainError("logprobs are served by POST /v1/chat/completions only", param="logprobs")
            raw = dict(content["body"])
            raw["stream"] = True
            call = pipeline.Call(surface="ws", model=body.model, stream=True, prompt=chat_prompt(body), raw=raw,
                                 audit=audit, user=self.user, request_id=audit.request_id)  # fmt: skip
        except (ValidationError, DomainError) as exc:
            await self._refuse(rid, audit, exc)
            return
        task = asyncio.create_task(self._generate(rid, call))
        self.tasks[rid] = task
        task.add_done_callback(lambda _t: self.tasks.pop(rid, None))

    async def _refuse(self, rid: str, audit: rec.RequestAudit, exc: ValidationError | DomainError) -> None:
        """A request refused before it is served: audited, and answered in the socket's shape."""
        if isinstance(exc, ValidationError):
            first = exc.errors()[0]
            param = ".".join(str(x) for x in first.get("loc", ())) or None
            self._refused(audit, 400, "invalid_request_error")
            await self._error(rid, f"Invalid value for '{param}': {first.get('msg')}", param=param)
            return
        f = failure_of(exc) or unexpected()
        self._refused(audit, f.status, f.code or "invalid_request_error")
        await self._send_failure(rid, f)

    async def _speech_request(
        self, rid: str, kind: str, content: dict[str, Any], audit: rec.RequestAudit
    ) -> None:
        """A "transcribe" or "speech" message: checked here, served in a task of its own."""
        audit.stream = False
        try:
            model = content.get("model")
            if not isinstance(model, str) or not model.strip():
                raise DomainError("Missing required parameter: 'model'", param="model")
            if kind == "transcribe":
                text = content.get("audio")
                if not isinstance(text, str) or not text:
                    raise DomainError("'audio' must be the audio file in base64", param="audio")
                if len(text) > settings.MLXM_AUDIO_MAX_BYTES * 4 // 3 + 4:
                    raise DomainError(
                        f"the audio is more than the {settings.MLXM_AUDIO_MAX_BYTES >> 20} MB allowed",
                        param="audio",
                    )
                try:
                    raw = base64.b64decode(text, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise DomainError("'audio' is not valid base64", param="audio") from exc
                language = content.get("language")
                opts = audio.transcription_options(
                    {"model": model, "language": language if isinstance(language, str) else None}
                )
                job = self._transcribe(rid, model, raw, opts, audit)
            else:
                body = audio.SpeechRequest.model_validate(
                    {
                        "model": model,
                        "input": content.get("input"),
                        "voice": content.get("voice"),
                        "response_format": "wav",
                    }  # fmt: skip
                )
                body.check()
                job = self._speak(rid, body, audit)
        except (ValidationError, DomainError) as exc:
            await self._refuse(rid, audit, exc)
            return
        task = asyncio.create_task(self._audited(rid, job, audit))
        self.tasks[rid] = task
        task.add_done_callback(lambda _t: self.tasks.pop(rid, None))

    def _call(self, surface: str, model: str, audit: rec.RequestAudit) -> pipeline.Call:
        return pipeline.Call(
            surface=surface, model=model, audit=audit, user=self.user, request_id=audit.request_id
        )

    async def _transcribe(
        self, rid: str, model: str, raw: bytes, opts: dict[str, Any], audit: rec.RequestAudit
    ) -> dict[str, Any]:
        reply = await pipeline.serve(
            self._call("transcriptions", model, audit), local=audio.transcribe_step(raw, opts)
        )
        return {"type": "transcript", "id": rid, "text": reply.text}

    async def _speak(self, rid: str, body: audio.SpeechRequest, audit: rec.RequestAudit) -> dict[str, Any]:
        data = await audio.speech_all(body, self._call("speech", body.model, audit))
        return {"type": "audio", "id": rid, "format": "wav", "data": base64.b64encode(data).decode()}

    async def _audited(self, rid: str, job: Any, audit: rec.RequestAudit) -> None:
        rec.activate(audit)
        status, error = 200, ""
        with request_ids.bound(audit.request_id):
            try:
                await self.send_json(await job)
            except asyncio.CancelledError:
                status, error = rec.CLIENT_CLOSED, "cancelled"
                raise
            except Exception as exc:
                f = failure_of(exc)
                if f is None:
                    log.exception("chat socket speech request failed")
                    f = unexpected()
                status, error = f.status, f.code or f.type_
                await self._send_failure(rid, f, audit.request_id)
            finally:
                if audit.finish(status, error):
                    rec.record(audit)

    @staticmethod
    def _refused(audit: rec.RequestAudit, status: int, error: str) -> None:
        if audit.finish(status, error):
            rec.record(audit)

    async def _generate(self, rid: str, call: pipeline.Call) -> None:
        audit = call.audit
        assert audit is not None
        rec.activate(audit)  # this task's own context
        tr = tracing.begin_ws(call.request_id, self.user.pk)  # None unless tracing is on
        status, error = 200, ""
        with request_ids.bound(call.request_id):
            try:
                answer = await pipeline.serve(call)
                assert isinstance(answer, Stream)
                try:
                    async for message in encoders.ws_messages(answer, rid):
                        await self.send_json(message)
                finally:
                    await answer.aclose()
            except asyncio.CancelledError:
                status, error = rec.CLIENT_CLOSED, "cancelled"
                with contextlib.suppress(Exception):
                    await self.send_json(
                        {"type": "done", "id": rid, "finish_reason": "cancelled", "usage": None}
                    )
                raise
            except Exception as exc:
                f = failure_of(exc)
                if f is None:
                    log.exception("chat socket generation failed")
                    f = unexpected()
                status, error = f.status, f.code or f.type_
                await self._send_failure(rid, f, call.request_id)
            finally:
                if audit.finish(status, error):
                    rec.record(audit)
                if tr is not None:
                    tr.end(status, error)
