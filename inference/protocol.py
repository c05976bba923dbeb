"""The typed message protocol between the web process and the inference worker.

Both sides import this module and nothing else of each other. Frames are a 4-byte
big-endian length followed by a msgpack-encoded, tagged `msgspec.Struct`. The worker
coalesces every token a scheduler step produces for one connection into one `Outputs`
frame, so IPC cost is per step, not per token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import struct
from typing import Any

import msgspec

# 2: CountTokens / TokenCount; 3: tools, reasoning, response_format; 4: logprobs; 5: Embed;
# 6: Challenge + Hello.auth for workers reached over TCP; 7: images, Transcribe, Speak.
PROTOCOL_VERSION = 7
MAX_FRAME_BYTES = 64 * 1024 * 1024
# Before a TCP peer has proven it knows the shared secret, no frame may be larger than this.
MAX_HANDSHAKE_BYTES = 4096
_LEN = struct.Struct(">I")


# The one default answer length, wherever a client leaves it out (local or relayed).
DEFAULT_MAX_TOKENS = 512


class SamplingParams(msgspec.Struct, frozen=True, kw_only=True):
    """Everything that shapes token selection; defaults mean "off"."""

    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    seed: int | None = None
    stop: list[str] = []
    logit_bias: dict[int, float] | None = None


class ModelSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Which weights to serve, and how. The worker keys its pool by `key`."""

    name: str
    path: str
    kind: str = "llm"
    draft_path: str | None = None
    num_draft_tokens: int = 3
    kv_bits: int | None = None
    # Pool policy (not part of the engine's identity): the latest request's spec wins.
    pinned: bool = False
    keep_alive_s: float | None = None
    max_concurrent: int = 32
    context_length: int | None = None
    # This model's prompt-cache share in bytes (None: the worker's MLXM_PROMPT_CACHE_BYTES).
    prompt_cache_bytes: int | None = None

    @property
    def key(self) -> tuple[str, str | None, int, int | None]:
        # Two profiles on the same weights share one engine unless they change its shape.
        return (self.path, self.draft_path, self.num_draft_tokens, self.kv_bits)


# ---- web -> worker -------------------------------------------------------------


class Hello(msgspec.Struct, tag="hello", kw_only=True):
    version: int = PROTOCOL_VERSION
    # Over TCP: auth_digest(shared secret, the worker's Challenge nonce). Empty on a Unix socket.
    auth: bytes = b""


class Generate(msgspec.Struct, tag="generate", kw_only=True):
    """Start a generation. Exactly one of `messages` (chat) or `prompt` (completion)."""

    request_id: str
    model: ModelSpec
    sampling: SamplingParams
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    chat_template_kwargs: dict[str, Any] = {}
    # Function tools in OpenAI's shape ({"type": "function", "function": {...}}): rendered by
    # the chat template (or injected into the system prompt) and parsed out of the answer.
    tools: list[dict[str, Any]] | None = None
    tool_choice: str = "auto"  # TOOL_CHOICES; "function" names the tool in `tool_name`
    tool_name: str | None = None
    parallel_tool_calls: bool = True
    # The profile's overrides of what mlx-lm infers from the tokenizer ("" = inferred).
    tool_parser: str = ""
    reasoning_parser: str = ""
    # Constrained decoding: {"type": "json_object"} or {"type": "json_schema", "schema": {...}}.
    response_format: dict[str, Any] | None = None
    # Reasoning tokens allowed before the end-of-thinking marker is forced.
    thinking_budget: int | None = None
    # Per-token log-probabilities: None = off; N = each token's, with its N most likely alternatives.
    logprobs: int | None = None
    # Vision models: the encoded images (PNG, JPEG, ...) that the messages' {"type": "image"}
    # parts stand for, in order. Checked by the gateway (format, size, decodable).
    images: list[bytes] = []
    # Who asked, for fair turns between users (inference/worker/fairness.py): the user's
    # name ("" for none), the API key's prefix (never its secret), and the priority weight
    # of their turns (MLXM_PRIORITY_WEIGHTS).
    user: str = ""
    key: str = ""
    weight: float = 1.0


TOOL_CHOICES = ("auto", "none", "required", "function")


class CountTokens(msgspec.Struct, tag="count_tokens", kw_only=True):
    """Tokenize a prompt exactly as `Generate` would, without generating; reply `TokenCount`."""

    request_id: str
    model: ModelSpec
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    chat_template_kwargs: dict[str, Any] = {}
    tools: list[dict[str, Any]] | None = None
    tool_parser: str = ""
    images: list[bytes] = []


class Abort(msgspec.Struct, tag="abort", kw_only=True):
    request_id: str


class Health(msgspec.Struct, tag="health", kw_only=True):
    request_id: str


class PoolCommand(msgspec.Struct, tag="pool", kw_only=True):
    """An admin action on the pool: "load", "unload", "pin" or "unpin"."""

    request_id: str
    action: str
    model: ModelSpec


class Configure(msgspec.Struct, tag="configure", kw_only=True):
    """Settings changed at run time (the Settings page, mlxmanager/sitesettings); reply
    `PoolReply`. The queue limits are sent whole (None: no limit); a memory size of None keeps
    the worker's current one."""

    request_id: str
    max_queue: int | None = None
    max_user: int | None = None
    queue_timeout_s: float | None = None
    memory_limit_bytes: int | None = None
    prompt_cache_bytes: int | None = None


class Embed(msgspec.Struct, tag="embed", kw_only=True):
    """Embed texts, or pre-tokenized inputs, with an embeddings model; reply `EmbeddingsReply`."""

    request_id: str
    model: ModelSpec
    texts: list[str] | None = None
    token_ids: list[list[int]] | None = None


AUDIO_SAMPLE_RATE = 16000  # what the gateway resamples uploads to for speech-to-text


class Transcribe(msgspec.Struct, tag="transcribe", kw_only=True):
    """Speech to text; reply `TranscriptionReply`. `audio` is mono 16-bit little-endian PCM at
    AUDIO_SAMPLE_RATE (the gateway decodes and resamples the upload)."""

    request_id: str
    model: ModelSpec
    audio: bytes
    language: str | None = None  # ISO-639-1; None: detected
    prompt: str | None = None
    temperature: float = 0.0
    task: str = "transcribe"  # or "translate" (to English)
    word_timestamps: bool = False
    max_tokens: int | None = None  # the profile's cap on tokens per 30 s window


class Speak(msgspec.Struct, tag="speak", kw_only=True):
    """Text to speech; replies `AudioChunk` frames, the last with `final`."""

    request_id: str
    model: ModelSpec
    text: str
    voice: str | None = None
    speed: float = 1.0
    instructions: str | None = None
    max_tokens: int | None = None  # the profile's cap on the model's audio tokens per sentence


ToWorker = (
    Hello | Generate | CountTokens | Abort | Health | PoolCommand | Configure | Embed | Transcribe | Speak
)


# ---- worker -> web -------------------------------------------------------------


class ToolCallDelta(msgspec.Struct, array_like=True):
    """A piece of tool call `index`: its first piece has `id` and `name`, later ones append
    to `arguments` (a JSON object once all pieces are joined)."""

    index: int
    id: str | None = None
    name: str | None = None
    arguments: str = ""


class TopLogprob(msgspec.Struct, array_like=True):
    token: str
    logprob: float


class TokenLogprob(msgspec.Struct, array_like=True):
    """One generated token (decoded on its own) and its log-probability after the request's
    logits processors (penalties, bias, constraints), before temperature."""

    token: str
    logprob: float
    top: list[TopLogprob] = []


class Output(msgspec.Struct, array_like=True):
    """One request's progress since the last frame. `finish_reason` set means final.

    `text` is answer content; reasoning and tool calls come apart, with their markup removed.
    `finish_reason` is "stop", "length" or "tool_calls" (the model stopped after calling tools).
    """

    request_id: str
    text: str
    completion_tokens: int
    finish_reason: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    stop_sequence: str | None = None  # which stop string ended it, if one did
    reasoning: str = ""
    tool_calls: list[ToolCallDelta] = []
    logprobs: list[TokenLogprob] | None = None  # the tokens since the last output, when asked
    # The worker's timings, on a request's final output only (the web side's trace spans,
    # mlxmanager/tracing.py): from its arrival in the worker to its start in an engine (waiting
    # for the scheduler thread, a model load, a free batch row), then from there to its first
    # token (prefill). Trailing and optional: frames without them still decode.
    queued_s: float | None = None
    prefill_s: float | None = None


class Outputs(msgspec.Struct, tag="outputs"):
    items: list[Output]


class RequestError(msgspec.Struct, tag="error", kw_only=True):
    """A request failed in the worker. `code` is a stable identifier for the gateway."""

    request_id: str
    code: str
    message: str
    # ERR_QUEUE_FULL: seconds after which a retry may find room (the gateway's Retry-After).
    retry_after: float | None = None


class HealthReply(msgspec.Struct, tag="health_reply", kw_only=True):
    request_id: str
    state: dict[str, Any]


class TokenCount(msgspec.Struct, tag="token_count", kw_only=True):
    request_id: str
    input_tokens: int


class Challenge(msgspec.Struct, tag="challenge", kw_only=True):
    """The first frame a worker sends a TCP peer: prove you know the secret for this nonce."""

    nonce: bytes


def auth_digest(secret: bytes, nonce: bytes) -> bytes:
    return hmac.new(secret, b"mlxm-worker-auth-v1:" + nonce, hashlib.sha256).digest()


class Welcome(msgspec.Struct, tag="welcome", kw_only=True):
    version: int = PROTOCOL_VERSION
    pid: int = 0


class PoolReply(msgspec.Struct, tag="pool_reply", kw_only=True):
    request_id: str
    message: str


class EmbeddingsReply(msgspec.Struct, tag="embeddings", kw_only=True):
    """One vector per input, in order: `data` is `count` x `dims` little-endian float32."""

    request_id: str
    count: int
    dims: int
    data: bytes
    prompt_tokens: int


class Word(msgspec.Struct, array_like=True):
    word: str
    start: float
    end: float


class Segment(msgspec.Struct, kw_only=True):
    id: int
    start: float
    end: float
    text: str
    tokens: list[int] = []
    temperature: float = 0.0
    avg_logprob: float = 0.0
    compression_ratio: float = 0.0
    no_speech_prob: float = 0.0
    words: list[Word] = []


class TranscriptionReply(msgspec.Struct, tag="transcription", kw_only=True):
    request_id: str
    text: str
    language: str
    duration: float  # seconds of audio
    segments: list[Segment] = []


class AudioChunk(msgspec.Struct, tag="audio", kw_only=True):
    """A piece of generated speech: mono little-endian float32 samples at `sample_rate`."""

    request_id: str
    samples: bytes
    sample_rate: int
    final: bool = False
    input_tokens: int = 0  # on the final chunk: the text's length in the model's tokens


FromWorker = (
    Challenge
    | Welcome
    | Outputs
    | RequestError
    | HealthReply
    | TokenCount
    | PoolReply
    | EmbeddingsReply
    | TranscriptionReply
    | AudioChunk
)

# Error codes carried by RequestError.
ERR_BAD_REQUEST = "bad_request"
ERR_MODEL_LOAD = "model_load_failed"
ERR_OVERLOADED = "overloaded"
ERR_INTERNAL = "internal"
# The model's queue (MLXM_MAX_QUEUE) or the user's share of it (MLXM_MAX_USER_CONCURRENT) is
# full: a 429 with Retry-After. A request that waited longer than MLXM_QUEUE_TIMEOUT: a 503.
ERR_QUEUE_FULL = "queue_full"
ERR_QUEUE_TIMEOUT = "queue_timeout"


class FrameCodec:
    """Length-prefixed msgpack framing for one direction of a connection."""

    def __init__(self, decode_type: Any) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder = msgspec.msgpack.Decoder(decode_type)

    def encode(self, msg: msgspec.Struct) -> bytes:
        body = self._encoder.encode(msg)
        return _LEN.pack(len(body)) + body

    async def read(self, reader: asyncio.StreamReader, max_size: int = MAX_FRAME_BYTES) -> Any:
        """Read one frame; raises `asyncio.IncompleteReadError` at EOF."""
        header = await reader.readexactly(_LEN.size)
        (size,) = _LEN.unpack(header)
        if size > max_size:
            raise ValueError(f"frame of {size} bytes exceeds the protocol limit")
        return self._decoder.decode(await reader.readexactly(size))


def worker_codec() -> FrameCodec:
    """Codec the worker uses: decodes what the web sends."""
    return FrameCodec(ToWorker)


def client_codec() -> FrameCodec:
    """Codec the web uses: decodes what the worker sends."""
    return FrameCodec(FromWorker)
