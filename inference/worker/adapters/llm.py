"""Text generation on one loaded mlx-lm model, with continuous batching.

All calls happen on the scheduler thread. The adapter wraps mlx-lm's own pieces
(`BatchGenerator`, `LRUPromptCache`, `make_sampler`, `make_logits_processors`, the
streaming detokenizer); what it adds is per-request bookkeeping: text-level stop strings,
usage counts and the mapping from batch uids to protocol request ids.
"""

from __future__ import annotations

import logging
import os
import time
from collections import deque
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from typing import Any, cast

import mlx.core as mx
import mlx.nn as nn
import msgspec
from mlx.utils import tree_flatten
from mlx_lm import load as mlx_load
from mlx_lm.generate import BatchGenerator, StopSequences, generate_step, speculative_generate_step
from mlx_lm.models.cache import (
    can_trim_prompt_cache,
    make_prompt_cache,
    trim_prompt_cache,
)
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    make_logits_processors,
    make_sampler,
)
from mlx_lm.utils import dequantize_model

from inference import protocol as p
from inference.worker import cpu_attention, disk_cache, memory, structured
from inference.worker import markup as mk
from inference.worker.fairness import lane_of
from inference.worker.prompt_cache import PromptCache
from inference.worker.prompts import BadRequest, Prompts

__all__ = ["BadRequest", "LLMEngine", "NoMemory"]

log = logging.getLogger(__name__)

# Prompt-cache budget per model (default; the pool's MLXM_PROMPT_CACHE_BYTES or the profile's
# own share applies); a cached prefix is reused by any later prompt sharing it.
PROMPT_CACHE_ENTRIES = 32
PROMPT_CACHE_BYTES = memory.DEFAULT_PROMPT_CACHE_BYTES
# Prompt tokens prefilled per step (chunked prefill). While other requests decode, a chunk is
# cut so that it takes about PREFILL_SLICE_S at the model's measured prefill rate (at least
# PREFILL_MIN_STEP tokens): a long prompt then freezes the others for about that long at a time.
PREFILL_STEP = 512
PREFILL_MIN_STEP = 64
PREFILL_SLICE_S = float(os.environ.get("MLXM_PREFILL_SLICE_MS", "1000")) / 1000
# With nobody waiting for tokens (one user's prompts only), a step of several prompts is still
# cut to about this long: another user's request arriving meanwhile waits for the rest of it.
PREFILL_BATCH_SLICE_S = 2.5 * PREFILL_SLICE_S
# A lone request whose uncached prompt is at most this long decodes on mlx-lm's
# generate_step (less work per token than a batch of one) until a second request arrives.
SOLO_MAX_PREFILL = PREFILL_STEP


class NoMemory(Exception):
    """A request's KV cache doesn't fit under the memory limit (the client gets a 503)."""


@dataclass
class _MemoryWait:
    """A request waiting for KV room under the memory limit (LLMEngine._retry_memory_waits)."""

    req: p.Generate
    conn: Any
    prompt: list[int]
    parser: mk.OutputParser
    extra: list[Any]
    need: int
    deadline: float  # time.monotonic()


class _SeededSampler:
    """make_sampler's filters with a private PRNG key, so a seed reproduces inside a batch."""

    def __init__(self, params: p.SamplingParams) -> None:
        self.params = params
        self.key = self._before = mx.random.key(params.seed or 0)

    def __call__(self, logprobs: mx.array) -> mx.array:
        params = self.params
        self._before = self.key
        self.key, sub = mx.random.split(self.key)
        if 0 < params.top_p < 1.0:
            logprobs = apply_top_p(logprobs, params.top_p)
        if params.min_p:
            logprobs = apply_min_p(logprobs, params.min_p)
        if params.top_k > 0:
            logprobs = apply_top_k(logprobs, params.top_k)
        return mx.random.categorical(logprobs * (1.0 / params.temperature), key=sub)

    def rewind(self) -> None:
        """Undo the last draw's key split (a draw whose token was thrown away)."""
        self.key = self._before


def make_request_sampler(params: p.SamplingParams) -> Any:
    if params.temperature > 0 and params.seed is not None:
        return _SeededSampler(params)
    # Greedy requests share one sampler object, so the batch samples them in one call.
    return make_sampler(params.temperature, top_p=params.top_p, min_p=params.min_p, top_k=params.top_k)


def make_request_processors(params: p.SamplingParams) -> list[Any]:
    return make_logits_processors(
        logit_bias=params.logit_bias or None,
        repetition_penalty=params.repetition_penalty,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
    )


@dataclass
class _Active:
    request_id: str
    conn: Any
    detokenizer: Any
    stops: list[str]
    holdback: int
    prompt_tokens: int
    cached_tokens: int
    max_tokens: int
    parser: mk.OutputParser
    single_call: bool = False  # parallel_tool_calls off: finish after the first call
    buffer: str = ""
    completion_tokens: int = 0
    stop_sequence: str | None = None
    # Set for requests served one at a time (draft model or quantized KV): a token iterator.
    sequential: Iterator[tuple[int, Any]] | None = None
    top_logprobs: int | None = None  # None: no logprobs asked
    owner: str = ""  # whose request (`fairness.lane_of`): prefill slices are shared by owner
    # Its first token went out ahead of the batch's report of it (LLMEngine._emit_first_tokens).
    primed: bool = False
    logprobs: list[p.TokenLogprob] = field(default_factory=list)  # not yet sent
    # perf_counter times: when it reached the worker, started in this engine (its prefill
    # begins), and made its first token; the final output carries them as durations.
    started: float = field(default_factory=time.perf_counter)
    arrived: float | None = None
    first_token_at: float | None = None

    def feed(self, text: str) -> tuple[str, bool]:
        """Add decoded text; return what is safe to emit and whether a stop string hit."""
        if not self.stops:
            return text, False
        self.buffer += text
        hits = [(i, s) for s in self.stops if (i := self.buffer.find(s)) >= 0]
        if hits:
            i, self.stop_sequence = min(hits)
            out, self.buffer = self.buffer[:i], ""
            return out, True
        # Hold back a tail that could still be the start of a stop string.
        cut = max(0, len(self.buffer) - self.holdback)
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


@dataclass
class _Solo:
    """The lone request decoding on mlx-lm's `generate_step`. When a second request arrives
    it moves into the batch with its KV cache (`LLMEngine._join_solo`)."""

    act: _Active
    steps: Generator[tuple[Any, Any], None, None]  # (token id, logprobs)
    cache: list[Any]  # generate_step extends it in place
    tokens: list[int]  # the prompt, then every token yielded: what `cache` holds once started
    rest: list[int]  # the end of the prompt that `cache` lacks before the first step
    sampler: Any
    started: bool = False


def _use_float32() -> bool:
    """Half-precision math is slow on CPUs without native fp16 (Linux, mlx[cpu])."""
    return memory.use_float32()


# Set by a worker running over an MLX distributed group: models load tensor-sharded over it.
_GROUP: Any = None


def use_group(group: Any) -> None:
    global _GROUP
    _GROUP = group


def _load(path: str) -> tuple[Any, Any, dict[str, Any]]:
    if _GROUP is None:
        return cast(tuple[Any, Any, dict[str, Any]], mlx_load(path, return_config=True))
    from mlx_lm.utils import sharded_load

    try:
        return cast(
            tuple[Any, Any, dict[str, Any]], sharded_load(path, tensor_group=_GROUP, return_config=True)
        )
    except ValueError as exc:  # e.g. an architecture without tensor parallelism
        raise BadRequest(f"this model can't be sharded over the distributed group: {exc}") from exc


class LLMEngine:
    """One loaded text model: a continuous batch, plus a sequential lane for features
    mlx-lm can't batch (speculative decoding, quantized KV cache)."""

    kind = "llm"
    _solo: _Solo | None = None  # a lone request on generate_step (see _Solo)

    def __init__(self, spec: p.ModelSpec, *, dequantize: bool = False, pool: Any = None) -> None:
        """`dequantize`: on the CPU, dequantize a quantized model to float32 at load (the pool
        decides from its memory budget). `pool`: the Pool keeping the memory limit, which
        admits each request's KV cache (None: no limit)."""
        self.spec = spec
        self.pinned = spec.pinned
        self.pool = pool
        t0 = time.perf_counter()
        if _GROUP is not None and spec.draft_path:
            raise BadRequest("speculative decoding is not available on a distributed worker")
        self.model, self.tokenizer, config = _load(spec.path)
        self.config = config  # the sizes a prefill step's activations are estimated from
        self.model_context = int(config.get("max_position_embeddings") or 0) or None
        self.draft_model = mlx_load(spec.draft_path)[0] if spec.draft_path else None
        self.weights_form = _weights_form(self.model)
        if _use_float32():
            self.model = _to_float32(self.model, dequantize=dequantize)
            if self.draft_model is not None:
                self.draft_model = _to_float32(self.draft_model, dequantize=dequantize)
            self.weights_form = _weights_form(self.model, was=self.weights_form)
        # KV bytes per token of context (both models' caches with a draft model).
        self._kv_per_token = memory.kv_bytes_per_token(config, _float_bytes(self.model), spec.kv_bits)
        if spec.draft_path and self.draft_model is not None:
            draft_config = memory.read_config(spec.draft_path)
            self._kv_per_token += memory.kv_bytes_per_token(draft_config, _float_bytes(self.draft_model))
        self._kv: dict[str, int] = {}  # request id -> its KV reservation, while it runs
        self._starting: str | None = None  # the request `_begin` is starting
        self._mem_waiting: deque[_MemoryWait] = deque()
        if cpu_attention.enabled():
            cpu_attention.use_for(self.model)
        self.kv_group_size = _kv_group_size(self.model, spec.kv_bits)
        vocab = config.get("vocab_size") or (config.get("text_config") or {}).get("vocab_size")
        self.grammars = structured.Grammars(
            self.tokenizer,
            vocab_size=int(vocab or len(self.tokenizer)),
            eos_ids=list(self.tokenizer.eos_token_ids),
        )
        self.prompts = Prompts(self.tokenizer, self.grammars, name=spec.name)
        self._token_texts: dict[int, str] = {}  # token id -> its text alone, for logprobs
        self.load_seconds = time.perf_counter() - t0
        self.weight_bytes = _nbytes(self.model) + (_nbytes(self.draft_model) if self.draft_model else 0)
        max_batch = max(1, spec.max_concurrent)
        self.batch = BatchGenerator(
            self.model,
            completion_batch_size=max_batch,
            prefill_batch_size=min(8, max_batch),
            # Chunked prefill: a long prompt advances this many tokens per step.
            prefill_step_size=PREFILL_STEP,
        )
        self._prefill_rate = 0.0  # prompt tokens/s, measured on this model's prefill chunks
        self._eos = StopSequences([(t,) for t in self.tokenizer.eos_token_ids])
        self._eos_ids = set(self.tokenizer.eos_token_ids)
        self.prompt_cache = PromptCache(
            max_size=PROMPT_CACHE_ENTRIES, max_bytes=self._prompt_cache_share(spec), disk=self._disk_tier()
        )
        self._by_uid: dict[int, _Active] = {}
        self._uid_by_request: dict[str, int] = {}
        self._sequential: dict[str, _Active] = {}
        self._waiting: deque[tuple[p.Generate, Any]] = deque()
        self._arrivals: dict[str, float] = {}  # request_id -> arrival, until it starts (_new_active)
        self.last_used = time.time()
        self.tokens_generated = 0
        self.cache_hit_tokens = 0
        self.prompt_tokens_seen = 0

    def _disk_tier(self) -> disk_cache.ModelDisk | None:
        """The prompt cache's disk tier for this model (none on a distributed worker: each
        rank holds a shard of the KV). Keyed by the weights and how they are computed: the
        same files dequantized, or cast to float32, make other KV values."""
        if _GROUP is not None:
            return None
        quantized = any(
            isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding) for _, m in self.model.named_modules()
        )
        dtypes = sorted({str(v.dtype) for v in _arrays(self.model)})
        variant = f"quantized={quantized} dtypes={dtypes} cpu_attention={cpu_attention.enabled()}"
        return disk_cache.for_model(self.spec.path, variant)

    # ---- bookkeeping -------------------------------------------------------------

    def apply_policy(self, spec: p.ModelSpec) -> None:
        """Pool policy from the latest request: pin, keep-alive, concurrency, context."""
        self.spec = spec
        self.pinned = self.pinned or spec.pinned
        # BatchGenerator reads these on every step; more requests wait in its queue.
        self.batch.completion_batch_size = max(1, spec.max_concurrent)
        self.batch.prefill_batch_size = min(8, self.batch.completion_batch_size)

    def _prompt_cache_share(self, spec: p.ModelSpec) -> int:
        if self.pool is not None:
            return int(self.pool.prompt_cache_share(spec))
        return spec.prompt_cache_bytes if spec.prompt_cache_bytes is not None else PROMPT_CACHE_BYTES

    @property
    def context_length(self) -> int | None:
        return self.spec.context_length or self.model_context

    @property
    def active(self) -> int:
        return self.running + len(self._mem_waiting)

    @property
    def running(self) -> int:
        """Requests started or queued in this engine, not counting those waiting for memory."""
        return len(self._by_uid) + len(self._sequential) + len(self._waiting) + (self._solo is not None)

    # ---- memory ------------------------------------------------------------------

    def kv_need(self, tokens: int) -> int:
        """Bytes of KV cache a request of `tokens` (prompt + max_tokens) takes at most."""
        return self._kv_per_token * memory.kv_tokens(tokens)

    @property
    def kv_bytes(self) -> int:
        """The reservations of the requests holding a KV cache now (finished ones dropped).
        The batch's rows share one cache as long as its longest row (mlx-lm pads them to it):
        they count as that many rows of the largest reservation."""
        live = {a.request_id for a in self._by_uid.values()} | set(self._sequential)
        live |= {req.request_id for req, _ in self._waiting}
        if self._solo is not None:
            live.add(self._solo.act.request_id)
        if self._starting is not None:
            live.add(self._starting)
        if len(live) != len(self._kv):
            self._kv = {rid: n for rid, n in self._kv.items() if rid in live}
        rows = self._batch_reservations()
        return sum(self._kv.values()) - sum(rows) + len(rows) * max(rows, default=0)

    def _batch_reservations(self) -> list[int]:
        return [self._kv[a.request_id] for a in self._by_uid.values() if a.request_id in self._kv]

    def _kv_increase(self, need: int) -> int:
        """What a new request of KV `need` adds: a batch row lengthens every row to the longest."""
        if self.spec.kv_bits is not None:
            return need  # the sequential lane: a cache of its own
        rows = self._batch_reservations()
        longest = max(rows, default=0)
        return (len(rows) + 1) * max(longest, need) - len(rows) * longest

    def _room_for(self, need: int) -> bool:
        """Room for a new request's KV cache (`need` bytes). What a prefill step takes for a
        moment is kept within what is left by cutting its chunks (`_prefill_step`)."""
        return self.pool is None or self.pool.make_kv_room(self, self._kv_increase(need))

    def _keep_prompt_cache(self, tokens: list[int], cache: list[Any]) -> None:
        """Store a finished request's cache in the prompt cache, within the memory limit: it
        goes to the disk tier only if the copy its writer takes fits beside it, and least
        recently used entries leave memory if the limit is passed."""
        room = self._transient_room()
        nbytes = sum(int(getattr(c, "nbytes", 0)) for c in cache)
        self.prompt_cache.insert_cache(self.spec.path, tokens, cache, to_disk=room is None or nbytes <= room)
        if self.pool is not None:
            self.pool.make_kv_room(self, 0)

    def _transient_room(self) -> int | None:
        """Bytes left under the memory limit for a step's activations (None: no limit)."""
        if self.pool is None:
            return None
        return self.pool.memory_limit - self.pool.used_bytes

    def _no_room(self, need: int) -> str:
        pool = self.pool
        free = max(0, pool.memory_limit - pool.used_bytes) if pool is not None else 0
        limit = pool.memory_limit if pool is not None else 0
        return (
            f"needs about {_mb(need)} MB of KV cache; {_mb(free)} MB free under the memory limit "
            f"of {_mb(limit)} MB. Retry later, or shorten the prompt or max_tokens."
        )

    def _reserve(
        self, req: p.Generate, conn: Any, prompt: list[int], parser: mk.OutputParser, extra: list[Any]
    ) -> bool:
        """Reserve the request's KV cache under the memory limit. False: it waits (other
        requests are running, whose end frees room); raises NoMemory when nothing will."""
        need = self.kv_need(len(prompt) + req.sampling.max_tokens)
        if (not self._mem_waiting or self.pool is None or not self.pool.running) and self._room_for(need):
            self._kv[req.request_id] = need
            return True
        if self.pool is not None and self.pool.memory_limit - self.pool.weight_bytes < need:
            raise NoMemory(self._no_room(need))  # more than the limit holds with every cache empty
        if self.pool is None or not self.pool.running or _GROUP is not None:
            # Over a distributed group every rank must decide alike: no clock-bound waits.
            raise NoMemory(self._no_room(need))
        deadline = time.monotonic() + memory.memory_wait_s()
        self._mem_waiting.append(_MemoryWait(req, conn, prompt, parser, extra, need, deadline))
        return False

    def _retry_memory_waits(self, outputs: list[tuple[Any, Any]]) -> None:
        """Start the requests waiting for memory that fit now, in arrival order; refuse those
        past MLXM_MEMORY_WAIT_S, or all once nothing runs that could free room."""
        while self._mem_waiting:
            wait = self._mem_waiting[0]
            if self._room_for(wait.need):
                self._mem_waiting.popleft()
                self._kv[wait.req.request_id] = wait.need
                try:
                    self._begin(wait.req, wait.conn, wait.prompt, wait.parser, wait.extra)
                except Exception as exc:  # noqa: BLE001 - one request's failure, not the step's
                    self._kv.pop(wait.req.request_id, None)
                    outputs.append((wait.conn, _error(wait.req.request_id, p.ERR_INTERNAL, str(exc))))
                continue
            stuck = self.pool is None or not self.pool.running
            if not stuck and time.monotonic() < wait.deadline:
                return
            self._mem_waiting.popleft()
            self._arrivals.pop(wait.req.request_id, None)
            message = self._no_room(wait.need)
            if not stuck:
                message += f" (waited {memory.memory_wait_s():.0f}s for running requests to finish)"
            outputs.append((wait.conn, _error(wait.req.request_id, p.ERR_OVERLOADED, message)))

    def stats(self) -> dict[str, Any]:
        disk_entries, disk_bytes = self.prompt_cache.disk_stats()
        return {
            "name": self.spec.name,
            "path": self.spec.path,
            "kind": self.kind,
            "active_requests": self.active,
            "queued_requests": len(self._waiting),
            "weight_bytes": self.weight_bytes,
            "weights_form": self.weights_form,
            "kv_bytes": self.kv_bytes,
            "memory_waiting": len(self._mem_waiting),
            "prompt_cache_bytes": self.prompt_cache.nbytes,
            "prompt_cache_limit_bytes": self.prompt_cache.max_bytes,
            "prompt_cache_entries": len(self.prompt_cache),
            "cache_hit_tokens": self.cache_hit_tokens,
            "memory_hit_tokens": self.prompt_cache.memory_hit_tokens,
            "disk_hit_tokens": self.prompt_cache.disk_hit_tokens,
            "disk_cache_entries": disk_entries,
            "disk_cache_bytes": disk_bytes,
            "prompt_tokens": self.prompt_tokens_seen,
            "tokens_generated": self.tokens_generated,
            "load_seconds": round(self.load_seconds, 3),
            "last_used": self.last_used,
            "speculative": self.draft_model is not None,
            "kv_bits": self.spec.kv_bits,
            "pinned": self.pinned,
            "keep_alive_s": self.spec.keep_alive_s,
            "context_length": self.context_length,
            "max_concurrent": self.max_concurrent,
        }

    @property
    def max_concurrent(self) -> int:
        return int(self.batch.completion_batch_size)

    @property
    def prefill_full(self) -> bool:
        """Whether as many rows are prefilling as the batch prefills at once: a request added
        now would wait in the batch's first-come queue (the scheduler's fair queue holds it)."""
        prefilling = sum(1 for a in self._by_uid.values() if not a.completion_tokens)
        return prefilling >= self.batch.prefill_batch_size

    def prefilling(self, owner: str) -> int:
        """How many of the batch's rows prefill a prompt of `owner` (`fairness.lane_of`)."""
        return sum(1 for a in self._by_uid.values() if not a.completion_tokens and a.owner == owner)

    # ---- requests ----------------------------------------------------------------

    def markup(self, tool_parser: str = "", reasoning_parser: str = "") -> mk.Markup:
        return self.prompts.markup(tool_parser, reasoning_parser)

    def _tools(self, req: p.Generate | p.CountTokens) -> list[dict[str, Any]] | None:
        return self.prompts.tools(req)

    def _chat(self, req: p.Generate | p.CountTokens) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return self.prompts.chat(req)

    def _tokenize(self, req: p.Generate | p.CountTokens) -> list[int]:
        return self.prompts.tokenize(req)

    def count_tokens(self, req: p.CountTokens) -> int:
        return len(self._tokenize(req))

    def _new_active(
        self, req: p.Generate, conn: Any, prompt: list[int], cached: int, parser: mk.OutputParser
    ) -> _Active:
        stops = [s for s in req.sampling.stop if s]
        self.prompt_tokens_seen += len(prompt)
        self.cache_hit_tokens += cached
        self.last_used = time.time()
        return _Active(
            arrived=self._arrivals.pop(req.request_id, None),
            request_id=req.request_id,
            conn=conn,
            detokenizer=self.tokenizer.detokenizer,
            stops=stops,
            holdback=max((len(s) for s in stops), default=1) - 1,
            prompt_tokens=len(prompt),
            cached_tokens=cached,
            max_tokens=req.sampling.max_tokens,
            parser=parser,
            single_call=bool(self._tools(req)) and not req.parallel_tool_calls,
            top_logprobs=req.logprobs,
            owner=lane_of(req),
        )

    def _prepare(self, req: p.Generate, prompt: list[int]) -> tuple[mk.OutputParser, list[Any]]:
        return self.prompts.prepare(req, prompt)

    def _wants_sequential(self) -> bool:
        # KV quantization never batches; a draft model helps only a lone stream.
        if self.spec.kv_bits is not None:
            return True
        return self.draft_model is not None and not self._by_uid and not self._sequential

    def _check_context(self, req: p.Generate, prompt: list[int]) -> p.Generate:
        """Refuse prompts that don't fit; shorten max_tokens to what's left of the context."""
        limit = self.context_length
        if not limit:
            return req
        if len(prompt) >= limit:
            raise BadRequest(
                f"This model's maximum context length is {limit} tokens, but the prompt is "
                f"{len(prompt)} tokens. Shorten the messages."
            )
        room = limit - len(prompt)
        if req.sampling.max_tokens > room:
            sampling = msgspec.structs.replace(req.sampling, max_tokens=room)
            return msgspec.structs.replace(req, sampling=sampling)
        return req

    def add(
        self, req: p.Generate, conn: Any, *, arrived: float | None = None, prompt: list[int] | None = None
    ) -> None:
        """Start (or queue) a generation; `arrived`: when it reached the worker (perf_counter);
        `prompt`: its tokens, when the scheduler tokenized it already (a request that waited)."""
        prompt = self._tokenize(req) if prompt is None else prompt
        req = self._check_context(req, prompt)
        parser, extra = self._prepare(req, prompt)  # compiles grammars: errors are the client's
        self._note_arrival(req.request_id, arrived)
        if self._reserve(req, conn, prompt, parser, extra):
            self._begin(req, conn, prompt, parser, extra)

    def _begin(
        self, req: p.Generate, conn: Any, prompt: list[int], parser: mk.OutputParser, extra: list[Any]
    ) -> None:
        """Start a request whose KV cache is reserved (or queue it on the sequential lane)."""
        self._starting = req.request_id  # its reservation is live while it starts
        try:
            self._start_text(req, conn, prompt, parser, extra)
        finally:
            self._starting = None

    def _start_text(
        self, req: p.Generate, conn: Any, prompt: list[int], parser: mk.OutputParser, extra: list[Any]
    ) -> None:
        if self.spec.kv_bits is not None and self._sequential:
            self._waiting.append((req, conn))  # one quantized-KV stream at a time
            return
        # A draft model proposes tokens the grammar never saw: constrained requests batch.
        if self._wants_sequential() and (not extra or self.spec.kv_bits is not None):
            self._add_sequential(req, conn, prompt, parser, extra)
            return
        params = req.sampling
        cache, rest = self.prompt_cache.fetch_nearest_cache(self.spec.path, prompt)
        if cache is not None and not rest:
            # The whole prompt is cached: recompute the last token to get logits.
            if can_trim_prompt_cache(cache):
                trim_prompt_cache(cache, 1)
                rest = prompt[-1:]
            else:
                cache, rest = None, prompt
        cached = len(prompt) - len(rest)
        self.prompt_cache.count_hit(cached)
        act = self._new_active(req, conn, prompt, cached, parser)
        sampler, processors = make_request_sampler(params), make_request_processors(params) + extra
        if self._solo_fits(rest, processors, len(prompt)):
            if cache is None:
                cache = make_prompt_cache(self.model)
            if can_trim_prompt_cache(cache):  # joining the batch later trims one token
                steps = generate_step(
                    mx.array(rest),
                    self.model,
                    max_tokens=params.max_tokens,
                    sampler=sampler,
                    prompt_cache=cache,
                    prefill_step_size=PREFILL_STEP,
                )
                self._solo = _Solo(act, steps, cache, list(prompt), rest, sampler)
                return
        self._join_solo()
        self._insert(act, rest, cache, prompt[:cached], act.max_tokens, sampler, processors)

    def _insert(
        self,
        act: _Active,
        rest: list[int],
        cache: list[Any] | None,
        cached: list[int],
        max_tokens: int,
        sampler: Any,
        processors: list[Any],
    ) -> None:
        """Add a row to the batch: `rest` still to prefill after `cache` (holding `cached`)."""
        (uid,) = self.batch.insert(
            [rest],
            max_tokens=[max_tokens],
            caches=[cache] if cache is not None else None,
            all_tokens=[cached],
            samplers=[sampler],
            logits_processors=[processors],
            stop_sequences=[self._eos],
        )
        self._by_uid[uid] = act
        self._uid_by_request[act.request_id] = uid

    def _note_arrival(self, request_id: str, arrived: float | None) -> None:
        self._arrivals[request_id] = arrived if arrived is not None else time.perf_counter()

    def _solo_transient_fits(self, tokens: int, context: int) -> bool:
        """generate_step prefills a short prompt in one piece, every position's logits with it."""
        room = self._transient_room()
        need = memory.prefill_transient_bytes(self.config, rows=1, chunk=tokens, context=context, logits=True)
        return room is None or need <= room

    def _solo_fits(self, rest: list[int], processors: list[Any], context: int) -> bool:
        """Whether a new request may run alone on generate_step: nothing else running, a
        short prefill (generate_step runs it whole) whose activations fit the memory left, and
        nothing generate_step would do differently from the batch (logits processors see only
        its own tokens there)."""
        return (
            self._solo is None
            and not self._by_uid
            and not self._sequential
            and not self._waiting
            and not processors
            and len(rest) <= SOLO_MAX_PREFILL
            and self._solo_transient_fits(len(rest), context)
            and self.draft_model is None
            and self.spec.kv_bits is None
            and _GROUP is None
        )

    def _join_solo(self) -> None:
        """Move the lone generate_step request into the batch, keeping its KV cache."""
        solo, self._solo = self._solo, None
        if solo is None:
            return
        act = solo.act
        if not solo.started:  # nothing ran yet: it enters the batch as it came
            cached = solo.tokens[: len(solo.tokens) - len(solo.rest)]
            self._insert(act, solo.rest, solo.cache, cached, act.max_tokens, solo.sampler, [])
            return
        solo.steps.close()
        # generate_step has already fed the last yielded token and drawn the next one; the
        # batch feeds that token again, so it comes off the cache and its draw is undone.
        trim_prompt_cache(solo.cache, 1)
        if isinstance(solo.sampler, _SeededSampler):
            solo.sampler.rewind()
        remaining = act.max_tokens - act.completion_tokens
        self._insert(act, solo.tokens[-1:], solo.cache, solo.tokens[:-1], remaining, solo.sampler, [])

    def _add_sequential(
        self, req: p.Generate, conn: Any, prompt: list[int], parser: mk.OutputParser, extra: list[Any]
    ) -> None:
        params = req.sampling
        common: dict[str, Any] = {
            "max_tokens": params.max_tokens,
            "sampler": make_request_sampler(params),
            "logits_processors": make_request_processors(params) + extra,
        }
        if self.spec.kv_bits is not None:
            common.update(kv_bits=self.spec.kv_bits, kv_group_size=self.kv_group_size, quantized_kv_start=0)
        prompt_arr = mx.array(prompt)
        if self.draft_model is not None:
            tokens: Iterator[Any] = speculative_generate_step(
                prompt_arr,
                self.model,
                self.draft_model,
                num_draft_tokens=self.spec.num_draft_tokens,
                **common,
            )
        else:
            tokens = generate_step(prompt_arr, self.model, **common)
        act = self._new_active(req, conn, prompt, 0, parser)
        act.sequential = (item[:2] for item in tokens)
        self._sequential[req.request_id] = act

    def abort(self, request_id: str) -> bool:
        self._arrivals.pop(request_id, None)
        for i, wait in enumerate(self._mem_waiting):
            if wait.req.request_id == request_id:
                del self._mem_waiting[i]
                return True
        if self._solo is not None and self._solo.act.request_id == request_id:
            self._solo.steps.close()
            self._solo = None
            return True
        if self._sequential.pop(request_id, None) is not None:
            self._admit_waiting()
            return True
        for i, (req, _) in enumerate(self._waiting):
            if req.request_id == request_id:
                del self._waiting[i]
                return True
        uid = self._uid_by_request.pop(request_id, None)
        if uid is None:
            return False
        self._by_uid.pop(uid, None)
        self.batch.remove([uid])
        return True

    def fail_all(self) -> list[Any]:
        """Drop every request (after a failed step); returns (request_id, conn) pairs."""
        dropped = [(a.request_id, a.conn) for a in [*self._by_uid.values(), *self._sequential.values()]]
        dropped += [(req.request_id, conn) for req, conn in self._waiting]
        dropped += [(w.req.request_id, w.conn) for w in self._mem_waiting]
        self._mem_waiting.clear()
        if self._solo is not None:
            dropped.append((self._solo.act.request_id, self._solo.act.conn))
            self._solo = None
        if self._by_uid:
            self.batch.remove(list(self._by_uid))
        self._by_uid.clear()
        self._uid_by_request.clear()
        self._sequential.clear()
        self._waiting.clear()
        self._arrivals.clear()
        return dropped

    def owned_by(self, conn: Any) -> list[str]:
        acts = [*self._by_uid.values(), *self._sequential.values()]
        if self._solo is not None:
            acts.append(self._solo.act)
        return (
            [a.request_id for a in acts if a.conn is conn]
            + [req.request_id for req, c in self._waiting if c is conn]
            + [w.req.request_id for w in self._mem_waiting if w.conn is conn]
        )

    def _token_text(self, token: int) -> str:
        text = self._token_texts.get(token)
        if text is None:
            text = self._token_texts[token] = self.tokenizer.decode([token])
        return text

    def _logprob(self, act: _Active, token: int, logprobs: Any) -> None:
        """Record a token's log-probability (and its top alternatives) for the next output."""
        k = act.top_logprobs or 0
        top: list[p.TopLogprob] = []
        if k:
            ids = mx.argpartition(-logprobs, kth=k - 1)[:k]
            ids_list = cast(list[int], ids.tolist())
            values = cast(list[float], logprobs[ids].tolist())
            pairs = sorted(zip(ids_list, values, strict=True), key=lambda x: -x[1])
            top = [p.TopLogprob(self._token_text(i), v) for i, v in pairs]
        act.logprobs.append(p.TokenLogprob(self._token_text(token), logprobs[token].item(), top))

    def _on_token(
        self, act: _Active, token: int, finish: str | None, logprobs: Any = None
    ) -> tuple[p.Output | None, bool]:
        """Account one generated token. Returns (output or None, finished early: by a stop
        string, or by the first tool call when parallel calls are off)."""
        act.completion_tokens += 1
        if act.first_token_at is None:
            act.first_token_at = time.perf_counter()
        if act.top_logprobs is not None and logprobs is not None and finish != "stop":
            self._logprob(act, token, logprobs)
        detok = act.detokenizer
        if finish == "stop":  # an EOS token: never part of the text
            detok.finalize()
        else:
            detok.add_token(token)
            if finish is not None:
                detok.finalize()
        text, stopped = act.feed(detok.last_segment)
        if stopped:
            finish = "stop"
        delta = act.parser.feed(text)
        if finish is None and act.single_call and act.parser.closed_calls:
            finish, stopped = "stop", True
        if finish is None:
            if not delta:
                return None, False
            # Prompt counts ride along from the first output on (Anthropic's message_start needs them).
            return self._output(act, delta, None), False
        return self._final(act, delta, finish, flush=not stopped), stopped

    def _output(self, act: _Active, delta: mk.Delta, finish: str | None) -> p.Output:
        logprobs = None
        if act.top_logprobs is not None:
            logprobs, act.logprobs = act.logprobs, []
        queued = prefill = None
        if finish is not None:  # the timings ride on the final output only
            queued = max(0.0, act.started - act.arrived) if act.arrived is not None else None
            if act.first_token_at is not None:
                prefill = max(0.0, act.first_token_at - act.started)
        return p.Output(
            act.request_id,
            delta.text,
            act.completion_tokens,
            finish,
            act.prompt_tokens,
            act.cached_tokens,
            act.stop_sequence if finish else None,
            delta.reasoning,
            delta.tool_calls,
            logprobs,
            queued,
            prefill,
        )

    def _final(self, act: _Active, delta: mk.Delta, finish: str, *, flush: bool) -> p.Output:
        if flush:
            delta = _merge(delta, act.parser.feed(act.flush()))
        delta = _merge(delta, act.parser.finish())
        if finish == "stop" and act.parser.made_calls:
            finish = "tool_calls"
        return self._output(act, delta, finish)

    def step(self) -> list[tuple[Any, p.Output]]:
        """Run one step; return (connection, output) for every request that advanced."""
        outputs: list[tuple[Any, p.Output]] = []
        if self._mem_waiting:
            self._retry_memory_waits(outputs)
        if self._solo is not None:
            self._step_solo(self._solo, outputs)
        if self._by_uid:
            self._step_batch(outputs)
        if self._sequential:
            self._step_sequential(outputs)
        if outputs:
            self.last_used = time.time()
        return outputs

    def _prefill_step(self) -> int:
        """Prompt tokens per prefill chunk: the time slice's (`_slice_step`), cut further so
        that the step's activations fit in the memory left under the limit."""
        rows = [a for a in self._by_uid.values() if not a.completion_tokens]
        step = self._slice_step(rows)
        if not rows or self.pool is None:
            return step  # nothing prefills (a decode step), or no limit
        room = self.pool.memory_limit - self.pool.used_bytes
        prefilling = min(len(rows), max(1, self.batch.prefill_batch_size))
        context = max(a.prompt_tokens for a in rows)
        need = memory.prefill_transient_bytes(self.config, rows=prefilling, chunk=step, context=context)
        if need > room and self.pool.reclaim():
            room = self.pool.memory_limit - self.pool.used_bytes  # the heap's free pages given back
        return memory.prefill_chunk_for(self.config, rows=prefilling, context=context, room=room, most=step)

    def _slice_step(self, rows: list[_Active]) -> int:
        """At most PREFILL_STEP, cut so that one step takes about PREFILL_SLICE_S while someone
        waits for tokens (rows decoding, or prompts of more than one user: a short one
        finishes within a slice instead of behind a long one's full chunks), else about
        PREFILL_BATCH_SLICE_S."""
        if not PREFILL_SLICE_S or not self._prefill_rate or not rows:
            return PREFILL_STEP
        waited_on = len(rows) < len(self._by_uid) or len({a.owner for a in rows}) > 1
        budget = PREFILL_SLICE_S if waited_on else PREFILL_BATCH_SLICE_S
        step = int(self._prefill_rate * budget / len(rows))
        return max(PREFILL_MIN_STEP, min(PREFILL_STEP, step))

    def _step_batch(self, outputs: list[tuple[Any, p.Output]]) -> None:
        # BatchGenerator counts its prompt tokens and prompt time (mlx-lm 0.32.2, pinned).
        counters = self.batch._counters
        tokens0, time0 = counters.prompt_tokens, counters.prompt_time
        self.batch.prefill_step_size = self._prefill_step()
        _, responses = self.batch.next()
        done, spent = counters.prompt_tokens - tokens0, counters.prompt_time - time0
        if done >= PREFILL_MIN_STEP and spent > 0:
            # The latest chunk's rate alone: a slice too long (its rate measured on bigger
            # chunks, or earlier in the prompt) is corrected at the next one.
            self._prefill_rate = done / spent
        stopped_early: list[int] = []
        reported = len(responses)
        out: p.Output | None
        for r in responses:
            act = self._by_uid.get(r.uid)
            if act is None:
                continue
            if act.primed:  # this token went out a step ago
                act.primed = False
                reported -= 1
                if r.finish_reason is None:
                    continue
                # Not expected (`_finish_of` ends it where the batch would): end it all the same.
                out, stopped = self._final(act, mk.Delta(), r.finish_reason, flush=True), False
            else:
                out, stopped = self._on_token(act, r.token, r.finish_reason, r.logprobs)
            if out is None:
                continue
            outputs.append((act.conn, out))
            if out.finish_reason is None:
                continue
            if stopped and r.finish_reason is None:
                stopped_early.append(r.uid)  # still in the batch: removed below
            elif r.prompt_cache is not None and r.all_tokens is not None:
                self._keep_prompt_cache(list(r.all_tokens), r.prompt_cache)
            self._by_uid.pop(r.uid, None)
            self._uid_by_request.pop(act.request_id, None)
        self.tokens_generated += reported
        self._start_decoding()
        stopped_early += self._emit_first_tokens(outputs)
        if stopped_early:
            # Ended outside the batch's criteria: keep their KV for the next turn's prefix.
            for cache, tokens in self.batch.remove(stopped_early, return_prompt_caches=True).values():
                self._keep_prompt_cache(list(tokens), cache)

    def _start_decoding(self) -> None:
        """Move the rows whose prefill ended in this step into the generation batch now.

        mlx-lm's BatchGenerator does it at the start of its next step, after that step's
        forward of every decoding row: a new row's first token would wait for it. Here the
        same split (mlx-lm 0.32.2's, pinned: the rows left with their last prompt token get
        their first forward and join the decoding ones) runs at the end of this step. With
        nothing decoding, the next step starts them first thing anyway."""
        batch = self.batch
        if not len(batch._generation_batch):
            return
        pending = batch._currently_processing  # [segments, processed, total] per prompt row
        ready = [
            i for i, (segments, *_) in enumerate(pending) if len(segments) == 1 and len(segments[0]) == 1
        ]
        if not ready:
            return
        last = [pending[i][0][0] for i in ready]
        batch._currently_processing = [seq for i, seq in enumerate(pending) if i not in ready]
        with mx.stream(batch._stream):
            batch._generation_batch.extend(batch._prompt_batch.split(ready).generate(last))

    def _emit_first_tokens(self, outputs: list[tuple[Any, p.Output]]) -> list[int]:
        """Send the first token of the rows that left prefill in this step.

        mlx-lm's BatchGenerator computes it (a forward of the new rows) in the step that ends
        their prefill, but reports it only at the next step, after one more forward of the
        whole batch: under load, a batch step of waiting added to every TTFT. Here it is read
        at once (mlx-lm 0.32.2's GenerationBatch, pinned) and the batch's later report of it
        is skipped. Returns the rows this token ended (EOS, max_tokens 1, a stop string),
        still in the batch."""
        gen = self.batch._generation_batch
        fresh = [
            (i, act)
            for i, uid in enumerate(gen.uids)
            if (act := self._by_uid.get(uid)) is not None and not act.completion_tokens
        ]
        if not fresh:
            return []
        tokens = cast(list[int], gen._next_tokens.tolist())  # waits for the new rows' forward
        ended: list[int] = []
        for i, act in fresh:
            act.primed = True
            token = tokens[i]
            out, _ = self._on_token(act, token, self._finish_of(act, token), gen._next_logprobs[i])
            self.tokens_generated += 1
            if out is None:
                continue
            outputs.append((act.conn, out))
            if out.finish_reason is not None:
                uid = gen.uids[i]
                ended.append(uid)
                self._by_uid.pop(uid, None)
                self._uid_by_request.pop(act.request_id, None)
        return ended

    def _finish_of(self, act: _Active, token: int) -> str | None:
        """How `token` ends a request the engine stops itself (outside the batch's own
        criteria): an EOS token, or the last token `max_tokens` allows."""
        if token in self._eos_ids:
            return "stop"
        return "length" if act.completion_tokens + 1 >= act.max_tokens else None

    def _step_solo(self, solo: _Solo, outputs: list[tuple[Any, p.Output]]) -> None:
        act = solo.act
        solo.started = True
        token, logprobs = next(solo.steps)
        solo.tokens.append(token)
        self.tokens_generated += 1
        out, _ = self._on_token(act, token, self._finish_of(act, token), logprobs)
        if out is None:
            return
        outputs.append((act.conn, out))
        if out.finish_reason is not None:
            self._solo = None
            solo.steps.close()
            # The cache holds every token yielded: kept for the next turn's prefix.
            self._keep_prompt_cache(solo.tokens, solo.cache)

    def _step_sequential(self, outputs: list[tuple[Any, p.Output]]) -> None:
        for rid, act in list(self._sequential.items()):
            assert act.sequential is not None
            out: p.Output | None
            try:
                token, logprobs = next(act.sequential)
            except StopIteration:  # generate_step stops at max_tokens
                act.detokenizer.finalize()
                text, _ = act.feed(act.detokenizer.last_segment)
                out = self._final(act, act.parser.feed(text), "length", flush=True)
            else:
                out, _ = self._on_token(act, token, self._finish_of(act, token), logprobs)
                self.tokens_generated += 1
            if out is not None:
                outputs.append((act.conn, out))
                if out.finish_reason is not None:
                    del self._sequential[rid]
                    self._sequential_done(rid)
                    self._admit_waiting()

    def _sequential_done(self, request_id: str) -> None:
        """A request of the sequential lane finished (a subclass may keep its cache)."""

    def _admit_waiting(self) -> None:
        while self._waiting and not self._sequential:
            req, conn = self._waiting.popleft()
            try:
                prompt = self._tokenize(req)
                self._add_sequential(req, conn, prompt, *self._prepare(req, prompt))
            except BadRequest:
                continue  # cannot happen: it tokenized on arrival

    def close(self) -> None:
        self.fail_all()
        self.batch.close()


def _merge(a: mk.Delta, b: mk.Delta) -> mk.Delta:
    return mk.Delta(a.text + b.text, a.reasoning + b.reasoning, a.tool_calls + b.tool_calls)


def _kv_group_size(model: Any, kv_bits: int | None) -> int:
    """MLX quantizes in groups of 32, 64 or 128 along the head dimension."""
    if kv_bits is None:
        return 64
    args = getattr(model, "args", None)
    head_dim = getattr(args, "head_dim", None) or (
        getattr(args, "hidden_size", 0) // max(1, getattr(args, "num_attention_heads", 1))
    )
    for size in (64, 32, 128):
        if head_dim and head_dim % size == 0:
            return size
    raise ValueError(f"kv_bits needs a head dimension divisible by 32; this model's is {head_dim}")


def _mb(n: int) -> int:
    return round(n / 1e6)


def _error(request_id: str, code: str, message: str) -> Any:
    return p.RequestError(request_id=request_id, code=code, message=message)


def _quant_bits(model: Any) -> int | None:
    bits = [
        m.bits for _, m in model.named_modules() if isinstance(m, nn.QuantizedLinear | nn.QuantizedEmbedding)
    ]
    return max(set(bits), key=bits.count) if bits else None


_DTYPE_NAMES = {mx.float32: "float32", mx.float16: "float16", mx.bfloat16: "bfloat16"}


def _float_bytes(model: Any) -> int:
    """Bytes per element of the model's float weights (its activations' and KV cache's dtype)."""
    sizes = [v.dtype.size for v in _arrays(model) if v.dtype in _DTYPE_NAMES]
    return max(set(sizes), key=sizes.count) if sizes else 2


def _weights_form(model: Any, *, was: str | None = None) -> str:
    """How the weights are held: "4-bit", "float16", "float32 (dequantized from 4-bit)"..."""
    bits = _quant_bits(model)
    if bits is not None:
        return f"{bits}-bit"
    names = [_DTYPE_NAMES[v.dtype] for v in _arrays(model) if v.dtype in _DTYPE_NAMES]
    form = max(set(names), key=names.count) if names else "float32"
    if was and was != form:
        return f"{form} ({'dequantized' if was.endswith('-bit') else 'cast'} from {was})"
    return form


def _arrays(model: Any) -> list[Any]:
    return [v for _, v in cast(list[tuple[str, Any]], tree_flatten(model.parameters()))]


def _nbytes(model: Any) -> int:
    return sum(int(v.nbytes) for v in _arrays(model))


def _to_float32(model: Any, *, dequantize: bool = False) -> Any:
    """Float32 weights for the CPU: half-precision cast up; a quantized model dequantized when
    `dequantize` (the pool's budget decides, see Pool._dequantize)."""
    half = {mx.float16, mx.bfloat16}
    if dequantize and _quant_bits(model) is not None:
        model = dequantize_model(model)
    if any(v.dtype in half for v in _arrays(model)):
        model.set_dtype(mx.float32, lambda dtype: dtype in half)
    mx.eval(model.parameters())
    return model
