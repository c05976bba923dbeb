"""Speech models through mlx-audio: text to speech (streamed) and speech to text.

`TTSEngine` streams: a request's text is cut into sentences and each scheduler step
makes the next piece of audio for every running request, so speech reaches the client
sentence by sentence while other models keep decoding between pieces.

`STTEngine` serves a transcription whole, in the scheduler thread, like embeddings:
mlx-audio decodes every 30 s window in one call.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference import protocol as p
from inference.worker.adapters.base import SideEngine
from inference.worker.adapters.llm import BadRequest, _nbytes

# Sentence ends (., !, ?, ;, the CJK ones) followed by space, and line breaks.
_SENTENCE_END = re.compile(r"(?<=[.!?;。！？])\s+|\n+")
MAX_PIECE_CHARS = 400


def sentences(text: str) -> list[str]:
    """`text` in speakable pieces: sentences, long ones cut at spaces."""
    pieces: list[str] = []
    for sentence in _SENTENCE_END.split(text):
        sentence = sentence.strip()
        while len(sentence) > MAX_PIECE_CHARS:
            cut = sentence.rfind(" ", 0, MAX_PIECE_CHARS)
            cut = cut if cut > 0 else MAX_PIECE_CHARS
            pieces.append(sentence[:cut].strip())
            sentence = sentence[cut:].strip()
        if sentence:
            pieces.append(sentence)
    return pieces


@dataclass
class _Speaking:
    request_id: str
    conn: Any
    audio: Iterator[np.ndarray]
    input_tokens: int


class TTSEngine(SideEngine):
    kind = "tts"

    def __init__(self, spec: p.ModelSpec) -> None:
        from mlx_audio.tts.utils import load_model

        super().__init__(spec)
        t0 = time.perf_counter()
        # A Path: mlx-audio resolves a str through the Hugging Face hub.
        self.model = load_model(Path(spec.path))
        self.sample_rate = int(getattr(self.model, "sample_rate", 24000))
        self.tokenizer = getattr(self.model, "tokenizer", None)
        self.load_seconds = time.perf_counter() - t0
        self.weight_bytes = _nbytes(self.model)
        self._running: dict[str, _Speaking] = {}
        self.seconds_spoken = 0.0

    @property
    def active(self) -> int:
        return len(self._running)

    def _count(self, text: str) -> int:
        tok = self.tokenizer
        if tok is not None and hasattr(tok, "encode"):
            with contextlib.suppress(Exception):  # a tokenizer that needs more than the text
                return len(tok.encode(text))
        return len(text.split())

    def _pieces(self, req: p.Speak, parts: list[str]) -> Iterator[np.ndarray]:
        import mlx.core as mx

        kwargs: dict[str, Any] = {"speed": req.speed, "verbose": False}
        if req.voice:
            kwargs["voice"] = req.voice
        if req.instructions:
            kwargs["instruct"] = req.instructions
        if req.max_tokens is not None:
            kwargs["max_tokens"] = req.max_tokens
        for part in parts:
            for result in self.model.generate(text=part, **kwargs):
                audio = result.audio
                if isinstance(audio, mx.array):
                    audio = np.asarray(audio.astype(mx.float32))
                yield np.asarray(audio, dtype=np.float32).reshape(-1)

    def add(self, req: p.Speak, conn: Any) -> None:
        parts = sentences(req.text)
        if not parts:
            raise BadRequest("input has nothing to say")
        audio = self._pieces(req, parts)
        self._running[req.request_id] = _Speaking(req.request_id, conn, audio, self._count(req.text))
        self.last_used = time.time()

    def abort(self, request_id: str) -> bool:
        return self._running.pop(request_id, None) is not None

    def owned_by(self, conn: Any) -> list[str]:
        return [rid for rid, s in self._running.items() if s.conn is conn]

    def fail_all(self) -> list[Any]:
        dropped = [(s.request_id, s.conn) for s in self._running.values()]
        self._running.clear()
        return dropped

    def step(self) -> list[Any]:
        """The next piece of audio of every running request (the last one `final`)."""
        out: list[Any] = []
        for rid, s in list(self._running.items()):
            try:
                samples = next(s.audio)
            except StopIteration:
                del self._running[rid]
                self.prompt_tokens_seen += s.input_tokens
                out.append(
                    (
                        s.conn,
                        p.AudioChunk(
                            request_id=rid,
                            samples=b"",
                            sample_rate=self.sample_rate,
                            final=True,
                            input_tokens=s.input_tokens,
                        ),
                    )
                )
                continue
            except ValueError as exc:  # e.g. an unknown voice
                del self._running[rid]
                out.append((s.conn, p.RequestError(request_id=rid, code=p.ERR_BAD_REQUEST, message=str(exc))))
                continue
            self.seconds_spoken += len(samples) / self.sample_rate
            out.append(
                (
                    s.conn,
                    p.AudioChunk(
                        request_id=rid, samples=samples.astype("<f4").tobytes(), sample_rate=self.sample_rate
                    ),
                )
            )
        if out:
            self.last_used = time.time()
        return out


def _finite(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return 0.0
    return number if np.isfinite(number) else 0.0


# OpenAI's temperature 0 for transcriptions: start greedy, raise it while the output looks
# like a failed decode (too repetitive or too unlikely), as Whisper's own transcribe does.
_FALLBACK_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class STTEngine(SideEngine):
    kind = "stt"

    def __init__(self, spec: p.ModelSpec) -> None:
        import inspect

        from mlx_audio.stt import load

        super().__init__(spec)
        t0 = time.perf_counter()
        self.model = load(Path(spec.path))  # a Path: a str is looked up on the hub
        self._accepts = set(inspect.signature(self.model.generate).parameters)
        self._open_kwargs = any(
            prm.kind is inspect.Parameter.VAR_KEYWORD
            for prm in inspect.signature(self.model.generate).parameters.values()
        )
        self.load_seconds = time.perf_counter() - t0
        self.weight_bytes = _nbytes(self.model)
        self.seconds_heard = 0.0

    def _options(self, req: p.Transcribe) -> dict[str, Any]:
        wanted: dict[str, Any] = {
            "language": req.language,
            "task": req.task,
            "temperature": req.temperature if req.temperature > 0 else _FALLBACK_TEMPERATURES,
            "word_timestamps": req.word_timestamps,
            "initial_prompt": req.prompt,
            "verbose": None,
        }
        if req.max_tokens is not None:
            wanted["sample_len"] = req.max_tokens  # Whisper's cap on tokens per 30 s window
        if req.task == "translate" and "task" not in self._accepts:
            raise BadRequest(f"'{self.spec.name}' cannot translate; use /v1/audio/transcriptions")
        return {
            k: v for k, v in wanted.items() if k in self._accepts or (self._open_kwargs and v is not None)
        }

    def transcribe(self, req: p.Transcribe) -> p.TranscriptionReply:
        import mlx.core as mx

        audio = np.frombuffer(req.audio, dtype="<i2").astype(np.float32) / 32768.0
        if audio.size == 0:
            raise BadRequest("the audio holds no samples")
        duration = audio.size / p.AUDIO_SAMPLE_RATE
        try:
            result = self.model.generate(mx.array(audio), **self._options(req))
        except (ValueError, KeyError) as exc:  # e.g. a language the model doesn't know
            raise BadRequest(f"could not transcribe: {exc}") from exc

        def clamp(value: Any, low: float = 0.0) -> float:
            """Within the audio and never before `low`: a weak model's timestamps can run past
            the end or go backwards."""
            return min(max(_finite(value), low), duration)

        segments = []
        for i, seg in enumerate(getattr(result, "segments", None) or []):
            if not isinstance(seg, dict):
                continue
            start = clamp(seg.get("start"))
            words = []
            for w in seg.get("words") or []:
                w_start = clamp(w.get("start"), start)
                words.append(p.Word(str(w.get("word", "")), w_start, clamp(w.get("end"), w_start)))
            segments.append(
                p.Segment(
                    id=i,
                    start=start,
                    end=clamp(seg.get("end"), start),
                    text=str(seg.get("text", "")),
                    tokens=[int(t) for t in seg.get("tokens") or []],
                    temperature=_finite(seg.get("temperature")),
                    avg_logprob=_finite(seg.get("avg_logprob")),
                    compression_ratio=_finite(seg.get("compression_ratio")),
                    no_speech_prob=_finite(seg.get("no_speech_prob")),
                    words=words,
                )
            )
        language = getattr(result, "language", None) or req.language or ""
        self.seconds_heard += duration
        self.last_used = time.time()
        return p.TranscriptionReply(
            request_id=req.request_id,
            text=str(getattr(result, "text", "")).strip(),
            language=language_name(language),
            duration=duration,
            segments=segments,
        )


def language_name(code: str) -> str:
    """OpenAI reports the language by name ("english"); Whisper by code ("en")."""
    try:
        from mlx_audio.stt.models.whisper.tokenizer import LANGUAGES
    except ImportError:  # pragma: no cover - mlx-audio always ships it
        return code
    return str(LANGUAGES.get(code, code))
