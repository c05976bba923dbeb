"""OpenAI-compatible endpoints under /v1: models, chat completions, completions.

The same NinjaAPI carries the Anthropic routes (`inference.api.anthropic`); `_error` is the
one place that picks the error shape per surface.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import msgspec
import numpy as np
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.views.decorators.csrf import csrf_exempt
from ninja import NinjaAPI
from ninja.errors import AuthenticationError, HttpError, ValidationError

from inference import gateway, media
from inference import protocol as p
from inference.api import anthropic, audio, responses
from inference.client import EngineDeadError, EngineRequestError, get_engine_client
from inference.dispatch import routed
from inference.schemas import ChatCompletionRequest, CompletionRequest, EmbeddingRequest
from mlxmanager.accounts import keycache, limits
from mlxmanager.audit import recorder as rec
from mlxmanager.audit.recorder import track_outputs
from mlxmanager.errors import DomainError
from mlxmanager.profiles.models import Profile
from mlxmanager.profiles.selectors import profile_list_served

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()


class ApiKeyAuth:
    """`Authorization: Bearer <key>` or `x-api-key: <key>`."""

    async def __call__(self, request: HttpRequest) -> Any:
        # META, not request.headers: that builds a dict of every header (hot path).
        header = request.META.get("HTTP_AUTHORIZATION", "")
        secret = header[7:].strip() if header[:7].lower() == "bearer " else ""
        secret = secret or request.META.get("HTTP_X_API_KEY", "").strip()
        key = await keycache.authenticate(secret)  # cached briefly: no query per request
        if key is not None:
            request.api_key = key  # type: ignore[attr-defined]
            await limits.check_request(key)  # 429 with Retry-After past a limit
        return key


api = NinjaAPI(
    title="MLX Manager gateway (OpenAI-compatible)",
    urls_namespace="v1",
    docs_url=None,
    auth=ApiKeyAuth(),
)
api.add_router("", anthropic.router)
api.add_router("", responses.router)
api.add_router("", audio.router)


def error_response(
    status: int, message: str, *, type_: str, param: str | None = None, code: str | None = None
) -> HttpResponse:
    body = {"error": {"message": message, "type": type_, "param": param, "code": code}}
    return HttpResponse(_json.encode(body), status=status, content_type="application/json")


def _error(
    request: HttpRequest,
    status: int,
    message: str,
    *,
    type_: str,
    param: str | None = None,
    code: str | None = None,
) -> HttpResponse:
    """Anthropic's error shape on its paths, OpenAI's everywhere else under /v1."""
    if anthropic.owns(request):
        return anthropic.error_response(status, message, param=param, code=code)
    return error_response(status, message, type_=type_, param=param, code=code)


def _pydantic_message(err: dict[str, Any]) -> tuple[str, str | None]:
    loc = [str(x) for x in err.get("loc", ()) if x not in ("body", "payload")]
    param = ".".join(loc) or None
    if err.get("type") == "extra_forbidden":
        return f"Unrecognized request argument supplied: {param}", param
    if err.get("type") == "missing" and loc:
        return f"Missing required parameter: '{param}'", param
    if err.get("type") == "json_invalid" or not loc:
        return f"We could not parse the JSON body of your request: {err.get('msg')}", None
    return f"Invalid value for '{param}': {err.get('msg')}", param


@api.exception_handler(ValidationError)
def _validation(request: HttpRequest, exc: ValidationError) -> HttpResponse:
    errors = exc.errors or [{"msg": "invalid request"}]
    message, param = _pydantic_message(errors[0])
    return _error(request, 400, message, type_="invalid_request_error", param=param)


@api.exception_handler(HttpError)
def _http(request: HttpRequest, exc: HttpError) -> HttpResponse:
    message = str(exc)
    if message.startswith("Cannot parse request body"):
        message = "We could not parse the JSON body of your request."
    return _error(request, exc.status_code, message, type_="invalid_request_error")


@csrf_exempt  # API-key clients send no CSRF token: a POST must get the JSON 404 too
async def not_found(request: HttpRequest, path: str = "") -> HttpResponse:
    """Unknown /v1 paths answer in their surface's error shape, not with an HTML page."""
    return _error(
        request,
        404,
        f"Unknown endpoint: {request.method} {request.path}",
        type_="invalid_request_error",
        code="unknown_url",
    )


@api.exception_handler(AuthenticationError)
def _auth(request: HttpRequest, exc: AuthenticationError) -> HttpResponse:
    return _error(
        request,
        401,
        "Missing or invalid API key. Send it as 'Authorization: Bearer <key>' or 'x-api-key'.",
        type_="invalid_request_error",
        code="invalid_api_key",
    )


@api.exception_handler(limits.RateLimited)
def _rate_limited(request: HttpRequest, exc: limits.RateLimited) -> HttpResponse:
    audit = rec.current()
    if audit is not None:
        audit.error_type = "rate_limited"
    response = _error(request, 429, exc.message, type_="rate_limit_error", code=exc.code)
    response["Retry-After"] = str(exc.retry_after)
    return response


@api.exception_handler(DomainError)
def _domain(request: HttpRequest, exc: DomainError) -> HttpResponse:
    code = "model_not_found" if exc.status == 404 and exc.param == "model" else exc.code
    return _error(request, exc.status, exc.message, type_="invalid_request_error", param=exc.param, code=code)


@api.exception_handler(RequestDataTooBig)
def _too_big(request: HttpRequest, exc: RequestDataTooBig) -> HttpResponse:
    return _error(
        request,
        413,
        "The request body is too large.",
        type_="invalid_request_error",
        code="request_too_large",
    )


@api.exception_handler(EngineDeadError)
def _dead(request: HttpRequest, exc: EngineDeadError) -> HttpResponse:
    return _error(
        request,
        503,
        f"{exc}; it is restarting, retry shortly.",
        type_="server_error",
        code="worker_unavailable",
    )


def _engine_error_status(exc: EngineRequestError) -> int:
    return {p.ERR_BAD_REQUEST: 400, p.ERR_OVERLOADED: 503, p.ERR_MODEL_LOAD: 503}.get(exc.code, 500)


@api.exception_handler(EngineRequestError)
def _engine(request: HttpRequest, exc: EngineRequestError) -> HttpResponse:
    status = _engine_error_status(exc)
    type_ = "invalid_request_error" if status == 400 else "server_error"
    return _error(request, status, exc.message, type_=type_, code=exc.code)


@api.exception_handler(Exception)
def _unexpected(request: HttpRequest, exc: Exception) -> HttpResponse:
    log.exception("unhandled error on %s", request.path)
    return _error(
        request, 500, "The server had an error while processing your request.", type_="server_error"
    )


# ---- responses ---------------------------------------------------------------------


def _usage(final: p.Output) -> dict[str, Any]:
    return {
        "prompt_tokens": final.prompt_tokens,
        "completion_tokens": final.completion_tokens,
        "total_tokens": final.prompt_tokens + final.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": final.cached_tokens},
    }


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


class _Logprobs:
    """Per-token log-probabilities in the chat shape (`content: [...]`) or the legacy
    completions shape (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`)."""

    def __init__(self, *, chat: bool) -> None:
        self.chat = chat
        self.offset = 0

    def payload(self, items: list[p.TokenLogprob]) -> dict[str, Any]:
        if self.chat:
            content = [
                {"token": t.token, "logprob": t.logprob, "bytes": _bytes(t.token),
                 "top_logprobs": [{"token": a.token, "logprob": a.logprob, "bytes": _bytes(a.token)}
                                  for a in t.top]}
                for t in items
            ]  # fmt: skip
            return {"content": content, "refusal": None}
        offsets = []
        for t in items:
            offsets.append(self.offset)
            self.offset += len(t.token)
        return {
            "tokens": [t.token for t in items],
            "token_logprobs": [t.logprob for t in items],
            "top_logprobs": [{a.token: a.logprob for a in t.top} for t in items],
            "text_offset": offsets,
        }


def _batch_logprobs(batch: list[p.Output]) -> list[p.TokenLogprob]:
    return [t for out in batch for t in out.logprobs or ()]


class _Collected:
    def __init__(self) -> None:
        self.parts: list[str] = []
        self.logprobs: list[p.TokenLogprob] = []
        self.reasoning: list[str] = []
        self.calls: dict[int, dict[str, Any]] = {}
        self.final: p.Output | None = None

    def add(self, batch: list[p.Output]) -> None:
        for out in batch:
            self.parts.append(out.text)
            if out.logprobs:
                self.logprobs.extend(out.logprobs)
            if out.reasoning:
                self.reasoning.append(out.reasoning)
            for tc in out.tool_calls:
                call = self.calls.setdefault(
                    tc.index,
                    {"id": tc.id, "type": "function", "function": {"name": tc.name, "arguments": ""}},
                )
                call["function"]["arguments"] += tc.arguments
            if out.finish_reason is not None:
                self.final = out

    async def drain(self, outputs: AsyncGenerator[list[p.Output], None]) -> None:
        async for batch in outputs:
            self.add(batch)

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def message(self) -> dict[str, Any]:
        """The assistant message: content (null when it only called tools), reasoning, calls."""
        text = self.text
        msg: dict[str, Any] = {"role": "assistant", "content": text if text or not self.calls else None}
        msg["refusal"] = None
        if self.reasoning:
            msg["reasoning_content"] = "".join(self.reasoning)
        if self.calls:
            msg["tool_calls"] = [self.calls[i] for i in sorted(self.calls)]
        return msg


def _chat_deltas(batch: list[p.Output]) -> list[dict[str, Any]]:
    """The deltas of one batch that carries reasoning or tool calls, in generation order;
    argument pieces of one call are joined."""
    deltas: list[dict[str, Any]] = []
    for out in batch:
        if out.reasoning:
            if deltas and "reasoning_content" in deltas[-1]:
                deltas[-1]["reasoning_content"] += out.reasoning
            else:
                deltas.append({"reasoning_content": out.reasoning})
        if out.text:
            if deltas and "content" in deltas[-1]:
                deltas[-1]["content"] += out.text
            else:
                deltas.append({"content": out.text})
        for tc in out.tool_calls:
            last = deltas[-1]["tool_calls"][-1] if deltas and "tool_calls" in deltas[-1] else None
            if tc.id is None and last is not None and last["index"] == tc.index:
                last["function"]["arguments"] += tc.arguments
                continue
            item: dict[str, Any] = {"index": tc.index, "function": {"arguments": tc.arguments}}
            if tc.id is not None:
                item = {"index": tc.index, "id": tc.id, "type": "function",
                        "function": {"name": tc.name, "arguments": tc.arguments}}  # fmt: skip
            if deltas and "tool_calls" in deltas[-1]:
                deltas[-1]["tool_calls"].append(item)
            else:
                deltas.append({"tool_calls": [item]})
    return deltas


class _SSE:
    """Pre-encodes the constant parts of a chunk so each token costs one small encode."""

    def __init__(self, *, rid: str, model: str, created: int, chat: bool) -> None:
        head = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": created, "model": model}  # fmt: skip
        self.head = b"data: " + _json.encode(head)[:-1]
        self.chat = chat

    def content(self, text: str) -> bytes:
        if self.chat:
            return (
                b'%b,"choices":[{"index":0,"delta":{"content":%b},"logprobs":null,"finish_reason":null}]}\n\n'
                % (self.head, _json.encode(text))
            )  # noqa: E501
        return b'%b,"choices":[{"index":0,"text":%b,"logprobs":null,"finish_reason":null}]}\n\n' % (
            self.head,
            _json.encode(text),
        )  # noqa: E501

    def event(self, **fields: Any) -> bytes:
        return self.head + b"," + _json.encode(fields)[1:] + b"\n\n"


async def _first(outputs: AsyncGenerator[list[p.Output], None]) -> list[p.Output]:
    """Wait for the worker's first answer, so setup errors still get a proper status."""
    return await outputs.__anext__()


async def _run(
    request: HttpRequest, req: p.Generate, *, stream: bool, include_usage: bool, chat: bool, echo: str = ""
) -> HttpResponseBase:
    """Answer one generation; `echo` (completions) is text that precedes the generated one."""
    client = get_engine_client()
    outputs = track_outputs(client.generate(req))
    created = int(time.time())
    model = req.model.name
    try:
        first = await _first(outputs)
    except BaseException:
        await outputs.aclose()
        raise

    wants_logprobs = req.logprobs is not None
    if not stream:
        collected = _Collected()
        collected.add(first)
        async with aclosing(outputs):
            if collected.final is None:
                await collected.drain(outputs)
        final = collected.final
        assert final is not None
        if chat:
            choice: dict[str, Any] = {
                "index": 0,
                "message": collected.message(),
                "logprobs": _Logprobs(chat=True).payload(collected.logprobs) if wants_logprobs else None,
                "finish_reason": final.finish_reason,
            }
            obj = "chat.completion"
        else:
            choice = {
                "index": 0,
                "text": echo + collected.text,
                "logprobs": _Logprobs(chat=False).payload(collected.logprobs) if wants_logprobs else None,
                "finish_reason": final.finish_reason,
            }
            obj = "text_completion"
        body = {"id": req.request_id, "object": obj, "created": created, "model": model,
                "choices": [choice], "usage": _usage(final), "system_fingerprint": None}  # fmt: skip
        return HttpResponse(_json.encode(body), content_type="application/json")

    sse = _SSE(rid=req.request_id, model=model, created=created, chat=chat)
    lp = _Logprobs(chat=chat)

    async def events() -> AsyncIterator[bytes]:
        async with aclosing(outputs):
            if chat:
                yield sse.event(choices=[{"index": 0, "delta": {"role": "assistant", "content": ""},
                                          "logprobs": None, "finish_reason": None}])  # fmt: skip
            elif echo:
                yield sse.content(echo)
            batch: list[p.Output] | None = first
            try:
                while batch is not None:
                    final = batch[-1] if batch[-1].finish_reason else None
                    if wants_logprobs:
                        # Slow path: each chunk carries the log-probabilities of its tokens.
                        for event in _logprob_chunks(sse, lp, batch, chat=chat):
                            yield event
                    elif chat and any(o.reasoning or o.tool_calls for o in batch):
                        for delta in _chat_deltas(batch):
                            yield sse.event(
                                choices=[
                                    {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
                                ]
                            )
                    elif text := "".join(o.text for o in batch):
                        yield sse.content(text)
                    if final is not None:
                        if chat:
                            done = {
                                "index": 0,
                                "delta": {},
                                "logprobs": None,
                                "finish_reason": final.finish_reason,
                            }
                        else:
                            done = {
                                "index": 0,
                                "text": "",
                                "logprobs": None,
                                "finish_reason": final.finish_reason,
                            }
                        yield sse.event(choices=[done])
                        if include_usage:
                            yield sse.event(choices=[], usage=_usage(final))
                        break
                    batch = await outputs.__anext__()
            except (EngineDeadError, EngineRequestError) as exc:
                code = exc.code if isinstance(exc, EngineRequestError) else "worker_unavailable"
                err = {"message": str(exc), "type": "server_error", "param": None, "code": code}
                yield b"data: " + _json.encode({"error": err}) + b"\n\n"
        yield b"data: [DONE]\n\n"

    response = StreamingHttpResponse(events(), content_type="text/event-stream")
    response["Cache-Control"] = "no-cache"
    response["X-Accel-Buffering"] = "no"
    return response


def _logprob_chunks(sse: _SSE, lp: _Logprobs, batch: list[p.Output], *, chat: bool) -> list[bytes]:
    """A batch's chunks with its tokens' log-probabilities on the first one (an empty delta
    carries them when the batch produced no visible text, e.g. a held-back stop string)."""
    tokens = _batch_logprobs(batch)
    choices: list[dict[str, Any]]
    if chat:
        deltas = _chat_deltas(batch)
        choices = [{"index": 0, "delta": d, "logprobs": None, "finish_reason": None} for d in deltas]
    else:
        text = "".join(o.text for o in batch)
        choices = [{"index": 0, "text": text, "logprobs": None, "finish_reason": None}] if text else []
    if tokens:
        if not choices:
            empty: dict[str, Any] = {"delta": {}} if chat else {"text": ""}
            choices = [{"index": 0, **empty, "logprobs": None, "finish_reason": None}]
        choices[0]["logprobs"] = lp.payload(tokens)
    return [sse.event(choices=[c]) for c in choices]


@api.get("/models")
async def list_models(request: HttpRequest) -> HttpResponse:
    profiles = await profile_list_served()
    data = [
        {
            "id": pr.name,
            "object": "model",
            "created": int(pr.created_at.timestamp()),
            "owned_by": "mlx-manager",
        }
        for pr in profiles
    ]
    return HttpResponse(_json.encode({"object": "list", "data": data}), content_type="application/json")


@api.post("/chat/completions")
@routed("chat")
async def chat_completions(request: HttpRequest, body: ChatCompletionRequest) -> HttpResponseBase:
    body.refuse_unsupported()
    target = await gateway.resolve(body.model)
    gateway.require_kind(target, gateway.TEXT_KINDS, model=body.model)
    images = await media.load_images(
        body.image_sources(), model=body.model, vision=target.profile.kind == Profile.KIND_VISION
    )
    req = gateway.chat_request(body, target, images)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return await _run(request, req, stream=body.stream, include_usage=include_usage, chat=True)


@api.post("/completions")
@routed("completions")
async def completions(request: HttpRequest, body: CompletionRequest) -> HttpResponseBase:
    body.refuse_unsupported()
    target = await gateway.resolve(body.model)
    gateway.require_kind(target, gateway.TEXT_KINDS, model=body.model)
    req = gateway.completion_request(body, target)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    echo = body.prompt_text() if body.echo else ""
    return await _run(request, req, stream=body.stream, include_usage=include_usage, chat=False, echo=echo)


@api.post("/embeddings")
async def embeddings(request: HttpRequest, body: EmbeddingRequest) -> HttpResponseBase:
    """Vectors from an embeddings profile (local only; routing rules don't apply here)."""
    audit = rec.current()
    if audit is not None:
        audit.requested_model = body.model
        audit.backend = f"local:{body.model}"
        audit.attempts = 1
    limits.check_model(getattr(request, "api_key", None), body.model)
    target = await gateway.resolve(body.model)
    gateway.require_kind(target, (Profile.KIND_EMBEDDINGS,), model=body.model)
    spec = target.spec
    texts, token_ids = body.inputs()
    reply = await get_engine_client().embed(
        p.Embed(request_id=uuid.uuid4().hex, model=spec, texts=texts, token_ids=token_ids)
    )
    if body.dimensions is not None and body.dimensions != reply.dims:
        return _error(
            request,
            400,
            f"'{body.model}' makes {reply.dims}-dimensional embeddings and cannot shorten them: "
            f"leave out 'dimensions' or set it to {reply.dims}",
            type_="invalid_request_error",
            param="dimensions",
        )
    vectors = np.frombuffer(reply.data, dtype="<f4").reshape(reply.count, reply.dims)
    if audit is not None:
        audit.tokens(completion=0, prompt=reply.prompt_tokens)
    if body.encoding_format == "base64":
        encoded: list[Any] = [base64.b64encode(row.tobytes()).decode() for row in vectors]
    else:
        encoded = vectors.tolist()
    data = [{"object": "embedding", "index": i, "embedding": e} for i, e in enumerate(encoded)]
    usage = {"prompt_tokens": reply.prompt_tokens, "total_tokens": reply.prompt_tokens}
    payload = {"object": "list", "data": data, "model": body.model, "usage": usage}
    return HttpResponse(_json.encode(payload), content_type="application/json")
