"""OpenAI's audio endpoints under /v1: speech to text and text to speech.

- `POST /v1/audio/transcriptions` (and `/v1/audio/translations`, to English): a multipart
  upload, decoded and resampled here (inference/media.py), transcribed by a speech-to-text
  profile; `response_format` json, text, srt, vtt or verbose_json (segments, and words with
  `timestamp_granularities[]=word`).
- `POST /v1/audio/speech`: a text-to-speech profile's audio as wav, mp3, flac or pcm; wav
  and pcm stream as they are made, and `stream_format: "sse"` sends
  `speech.audio.delta` events.

Both are local only: routing rules don't apply (as for embeddings); limits and audit are
the pipeline's (`inference.pipeline.serve` with each route's own local step).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any, Literal

import msgspec
import numpy as np
from django.conf import settings
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from ninja import Router
from pydantic import BaseModel, ConfigDict, Field

from inference import encoders, gateway, media, pipeline
from inference import protocol as p
from inference.api.common import call_for
from inference.client import EngineDeadError, EngineRequestError
from inference.fleet import get_engine_client
from mlxmanager.audit import recorder as rec
from mlxmanager.errors import DomainError
from mlxmanager.profiles.models import Profile
from mlxmanager.validtext import ValidUnicode

router = Router(tags=["audio"])
_json = msgspec.json.Encoder()

TRANSCRIPTION_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
_FIELDS = {"model", "language", "prompt", "response_format", "temperature", "timestamp_granularities[]",
           "timestamp_granularities", "stream", "chunking_strategy", "include[]", "include"}  # fmt: skip


class TooLarge(DomainError):
    status = 413
    code = "request_too_large"


def _token_cap(profile: Profile) -> int | None:
    """The profile's `max_tokens` default: the model's token budget per 30 s window (speech to
    text) or per sentence (text to speech); None leaves the model's own."""
    value = (profile.defaults or {}).get("max_tokens") or profile.max_output_tokens
    return int(value) if value else None


# ---- speech to text -------------------------------------------------------------------


def _form(request: HttpRequest) -> tuple[dict[str, Any], bytes]:
    """The multipart fields and the uploaded file's bytes; 400 for anything malformed."""
    if not (request.content_type or "").startswith("multipart/form-data"):
        raise DomainError(
            "send the audio as multipart/form-data with a 'file' part (as the OpenAI SDK does)", param="file"
        )
    post, files = request.POST, request.FILES
    unknown = sorted(set(post) - _FIELDS)
    if unknown:
        raise DomainError(f"Unrecognized request argument supplied: {unknown[0]}", param=unknown[0])
    upload = files.get("file")
    if upload is None:
        raise DomainError("Missing required parameter: 'file'", param="file")
    if upload.size is not None and upload.size > settings.MLXM_AUDIO_MAX_BYTES:
        raise TooLarge(
            f"the audio file is {upload.size >> 20} MB, more than the "
            f"{settings.MLXM_AUDIO_MAX_BYTES >> 20} MB allowed",
            param="file",
        )
    fields: dict[str, Any] = {k: post.get(k) for k in post}
    fields["timestamp_granularities"] = post.getlist("timestamp_granularities[]") + post.getlist(
        "timestamp_granularities"
    )
    fields["include"] = post.getlist("include[]") + post.getlist("include")
    return fields, upload.read()


def _options(fields: dict[str, Any]) -> dict[str, Any]:
    model = (fields.get("model") or "").strip()
    if not model:
        raise DomainError("Missing required parameter: 'model'", param="model")
    fmt = fields.get("response_format") or "json"
    if fmt not in TRANSCRIPTION_FORMATS:
        raise DomainError(
            f"response_format must be one of {', '.join(TRANSCRIPTION_FORMATS)} (got '{fmt[:40]}')",
            param="response_format",
        )
    raw_temp = fields.get("temperature")
    try:
        temperature = float(raw_temp) if raw_temp not in (None, "") else 0.0
    except ValueError:
        temperature = -1.0
    if not 0.0 <= temperature <= 1.0:
        raise DomainError("temperature must be a number between 0 and 1", param="temperature")
    grains = set(fields["timestamp_granularities"])
    if grains - {"word", "segment"}:
        raise DomainError(
            "timestamp_granularities holds 'word' and/or 'segment'", param="timestamp_granularities"
        )
    if grains and fmt != "verbose_json":
        raise DomainError(
            "timestamp_granularities needs response_format 'verbose_json'", param="timestamp_granularities"
        )
    if (fields.get("stream") or "false").lower() not in ("false", "0", ""):
        raise DomainError("streamed transcriptions are not supported; leave out 'stream'", param="stream")
    if fields.get("chunking_strategy") not in (None, "", "auto"):
        raise DomainError("chunking_strategy is not supported (audio is split in 30 s windows)",
                          param="chunking_strategy")  # fmt: skip
    if fields["include"]:
        raise DomainError("include (logprobs) is not supported", param="include")
    language = (fields.get("language") or "").strip().lower() or None
    if language is not None and (len(language) > 8 or not language.replace("-", "").isalpha()):
        raise DomainError("language must be an ISO-639-1 code such as 'en'", param="language")
    prompt = fields.get("prompt") or None
    if prompt is not None and len(prompt) > 4096:
        raise DomainError("prompt is longer than 4096 characters", param="prompt")
    return {"model": model, "format": fmt, "temperature": temperature, "words": "word" in grains,
            "segments": not grains or "segment" in grains, "language": language, "prompt": prompt}  # fmt: skip


def _clock(seconds: float, sep: str) -> str:
    ms = max(0, round(seconds * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def subtitles(segments: list[p.Segment], *, vtt: bool) -> str:
    """SubRip (srt) or WebVTT text of timed segments."""
    lines = ["WEBVTT", ""] if vtt else []
    for i, seg in enumerate(segments, start=1):
        if not vtt:
            lines.append(str(i))
        sep = "." if vtt else ","
        lines.append(f"{_clock(seg.start, sep)} --> {_clock(seg.end, sep)}")
        lines.append(seg.text.strip())
        lines.append("")
    return "\n".join(lines)


def _verbose(reply: p.TranscriptionReply, task: str, opts: dict[str, Any]) -> dict[str, Any]:
    body: dict[str, Any] = {"task": task, "language": reply.language, "duration": round(reply.duration, 3),
                            "text": reply.text}  # fmt: skip
    if opts["segments"]:
        body["segments"] = [
            {
                "id": s.id,
                "seek": 0,
                "start": round(s.start, 3),
                "end": round(s.end, 3),
                "text": s.text,
                "tokens": s.tokens,
                "temperature": s.temperature,
                "avg_logprob": s.avg_logprob,
                "compression_ratio": s.compression_ratio,
                "no_speech_prob": s.no_speech_prob,
            }  # fmt: skip
            for s in reply.segments
        ]
    if opts["words"]:
        body["words"] = [
            {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
            for s in reply.segments
            for w in s.words
        ]
    body["usage"] = {"type": "duration", "seconds": round(reply.duration, 3)}
    return body


def transcription_options(fields: dict[str, Any]) -> dict[str, Any]:
    """The options of a transcription from form-like fields (also the playground's socket)."""
    return _options({"timestamp_granularities": [], "include": [], **fields})


def transcribe_step(raw: bytes, opts: dict[str, Any], task: str = "transcribe") -> pipeline.LocalStep:
    """The local step of a transcription of `raw` (any audio file ffmpeg decodes)."""

    async def run(call: pipeline.Call, target: gateway.Target) -> p.TranscriptionReply:
        gateway.require_kind(target, (Profile.KIND_STT,), model=opts["model"])
        pcm, _seconds = await asyncio.to_thread(media.decode_audio, raw)
        reply = await get_engine_client().transcribe(
            p.Transcribe(
                request_id=gateway.worker_id("stt-"),
                model=target.spec,
                audio=pcm,
                language=opts["language"] if task == "transcribe" else None,
                prompt=opts["prompt"],
                temperature=opts["temperature"],
                task=task,
                word_timestamps=opts["words"],
                max_tokens=_token_cap(target.profile),
            )
        )
        if call.audit is not None:
            call.audit.first_output()
        return reply

    return run


async def _transcribe(request: HttpRequest, task: str) -> HttpResponseBase:
    fields, raw = _form(request)
    opts = _options(fields)
    run = transcribe_step(raw, opts, task)
    reply = await pipeline.serve(call_for(request, "transcriptions", opts["model"]), local=run)
    fmt = opts["format"]
    if fmt == "text":
        return HttpResponse(reply.text + "\n", content_type="text/plain; charset=utf-8")
    if fmt in ("srt", "vtt"):
        ctype = "text/vtt" if fmt == "vtt" else "application/x-subrip"
        return HttpResponse(
            subtitles(reply.segments, vtt=fmt == "vtt"), content_type=f"{ctype}; charset=utf-8"
        )
    if fmt == "verbose_json":
        body = _verbose(reply, "translate" if task == "translate" else "transcribe", opts)
    else:
        body = {"text": reply.text, "usage": {"type": "duration", "seconds": round(reply.duration, 3)}}
    return encoders.json_response(body)


@router.post("/audio/transcriptions")
async def transcriptions(request: HttpRequest) -> HttpResponseBase:
    """Speech to text (multipart: file, model, language, prompt, response_format, temperature,
    timestamp_granularities[])."""
    return await _transcribe(request, "transcribe")


@router.post("/audio/translations")
async def translations(request: HttpRequest) -> HttpResponseBase:
    """Speech in any language to English text (multipart, as for transcriptions)."""
    return await _transcribe(request, "translate")


# ---- text to speech -------------------------------------------------------------------


class VoiceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(min_length=1, max_length=200)


class SpeechRequest(ValidUnicode):
    """`POST /v1/audio/speech`."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1, max_length=256)
    input: str = Field(min_length=1)
    voice: str | VoiceRef | None = None
    instructions: str | None = Field(default=None, max_length=4096)
    response_format: str = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"

    def check(self) -> None:
        if len(self.input) > settings.MLXM_SPEECH_MAX_CHARS:
            raise DomainError(
                f"input is {len(self.input)} characters, more than the {settings.MLXM_SPEECH_MAX_CHARS} allowed",
                param="input",
            )
        if self.response_format not in media.SPEECH_FORMATS:
            raise DomainError(
                f"response_format '{self.response_format[:20]}' is not supported: use "
                + ", ".join(media.SPEECH_FORMATS),
                param="response_format",
            )

    @property
    def voice_name(self) -> str | None:
        return self.voice.id if isinstance(self.voice, VoiceRef) else self.voice


def _samples(chunk: p.AudioChunk) -> np.ndarray:
    return np.frombuffer(chunk.samples, dtype="<f4")


def speech_step(body: SpeechRequest) -> pipeline.LocalStep:
    """The local step of a speech request: its first audio chunk, and the rest to come."""

    async def run(call: pipeline.Call, target: gateway.Target) -> tuple[p.AudioChunk, Any]:
        gateway.require_kind(target, (Profile.KIND_TTS,), model=body.model)
        req = p.Speak(request_id=gateway.worker_id("tts-"), model=target.spec, text=body.input,
                      voice=body.voice_name, speed=body.speed, instructions=body.instructions,
                      max_tokens=_token_cap(target.profile))  # fmt: skip
        chunks = get_engine_client().speak(req)
        try:
            first = await chunks.__anext__()  # setup errors still get a proper status
        except BaseException:
            await chunks.aclose()
            raise
        return first, chunks

    return run


async def speech_all(body: SpeechRequest, call: pipeline.Call) -> bytes:
    """The whole of a speech request's audio, in its response format (the playground's socket)."""
    first, chunks = await pipeline.serve(call, local=speech_step(body))
    if call.audit is not None:
        call.audit.first_output()
    pieces = [(_samples(first), first.sample_rate)]
    chunk = first
    async with aclosing(chunks):
        while not chunk.final:
            try:
                chunk = await chunks.__anext__()
            except StopAsyncIteration:
                break
            pieces.append((_samples(chunk), chunk.sample_rate))
    if call.audit is not None:
        call.audit.usage(chunk.input_tokens, 0, 0)
    return media.encode_speech(pieces, body.response_format)


@router.post("/audio/speech")
async def speech(request: HttpRequest, body: SpeechRequest) -> HttpResponseBase:
    """Text to speech from a text-to-speech profile."""
    body.check()
    sse = body.stream_format == "sse"
    call = call_for(request, "speech", body.model, stream=sse)
    first, chunks = await pipeline.serve(call, local=speech_step(body))
    audit = call.audit
    if audit is not None:
        audit.first_output()
    fmt = body.response_format
    if first.final:  # all of it at once: one body with exact lengths
        await chunks.aclose()
        if audit is not None:
            audit.usage(first.input_tokens, 0, 0)
        data = media.encode_speech([(_samples(first), first.sample_rate)], fmt)
        if body.stream_format == "sse":
            return encoders.event_stream(_sse_events([data], first.input_tokens))
        return HttpResponse(data, content_type=media.SPEECH_MEDIA_TYPES[fmt])
    encoder = media.SpeechEncoder(fmt)

    async def pieces() -> AsyncIterator[bytes]:
        async with aclosing(chunks):
            chunk: p.AudioChunk | None = first
            while chunk is not None:
                if data := encoder.add(_samples(chunk), chunk.sample_rate):
                    yield data
                if chunk.final:
                    if audit is not None:
                        audit.usage(chunk.input_tokens, 0, 0)
                    break
                chunk = await chunks.__anext__()
            if tail := encoder.finish():
                yield tail

    if body.stream_format == "sse":
        return encoders.event_stream(_sse_events(pieces(), None, audit=audit))
    response = StreamingHttpResponse(_guarded(pieces()), content_type=media.SPEECH_MEDIA_TYPES[fmt])
    response["X-Accel-Buffering"] = "no"
    return response


async def _guarded(pieces: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """A stream whose worker fails midway ends early (the status is already sent)."""
    try:
        async for data in pieces:
            yield data
    except (EngineDeadError, EngineRequestError):
        return


async def _sse_events(
    pieces: Any, input_tokens: int | None, *, audit: rec.RequestAudit | None = None
) -> AsyncGenerator[bytes, None]:
    try:
        if isinstance(pieces, list):
            for data in pieces:
                yield encoders.frame({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
        else:
            async for data in pieces:
                yield encoders.frame({"type": "speech.audio.delta", "audio": base64.b64encode(data).decode()})
    except (EngineDeadError, EngineRequestError) as exc:
        yield encoders.frame({"type": "error", "error": {"message": str(exc), "type": "server_error"}})
        return
    tokens = input_tokens if input_tokens is not None else (audit.prompt_tokens if audit else 0)
    usage = {"input_tokens": tokens, "output_tokens": 0, "total_tokens": tokens}
    yield encoders.frame({"type": "speech.audio.done", "usage": usage})
