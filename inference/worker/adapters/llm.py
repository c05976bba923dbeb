"""Text generation on one loaded mlx-lm model, with continuous batching.

All calls happen on the scheduler thread. The adapter wraps mlx-lm's own pieces
(`BatchGenerator`, `LRUPromptCache`, `make_sampler`, `make_logits_processors`, the
streaming detokenizer); what it adds is per-request bookkeeping: text-level stop strings,
usage counts and the mapping from batch uids to protocol request ids.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
from mlx.utils import tree_flatten
from mlx_lm import load as mlx_load
from mlx_lm.generate import BatchGenerator, StopSequences
from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache
from mlx_lm.sample_utils import (
    apply_min_p,
    apply_top_k,
    apply_top_p,
    make_logits_processors,
    make_sampler,
)

from inference import protocol as p

log = logging.getLogger(__name__)

# Prompt-cache budget per model; a cached prefix is reused by any later prompt sharing it.
PROMPT_CACHE_ENTRIES = 32
PROMPT_CACHE_BYTES = 512 * 1024 * 1024


class BadRequest(Exception):
    """The request cannot be served as sent (e.g. the chat template rejects it)."""


def _seeded_sampler(params: p.SamplingParams) -> Any:
    """make_sampler's filters with a private PRNG key, so a seed reproduces inside a batch."""
    key = mx.random.key(params.seed or 0)
    temp = params.temperature

    def sample(logprobs: mx.array) -> mx.array:
        nonlocal key
        key, sub = mx.random.split(key)
        if 0 < params.top_p < 1.0:
            logprobs = apply_top_p(logprobs, params.top_p)
        if params.min_p:
            logprobs = apply_min_p(logprobs, params.min_p)
        if params.top_k > 0:
            logprobs = apply_top_k(logprobs, params.top_k)
        return mx.random.categorical(logprobs * (1.0 / temp), key=sub)

    return sample


def make_request_sampler(params: p.SamplingParams) -> Any:
    if params.temperature > 0 and params.seed is not None:
        return _seeded_sampler(params)
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
    buffer: str = ""
    completion_tokens: int = 0
    started: float = field(default_factory=time.perf_counter)

    def feed(self, text: str) -> tuple[str, bool]:
        """Add decoded text; return what is safe to emit and whether a stop string hit."""
        if not self.stops:
            return text, False
        self.buffer += text
        hits = [i for i in (self.buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            out, self.buffer = self.buffer[: min(hits)], ""
            return out, True
        # Hold back a tail that could still be the start of a stop string.
        cut = max(0, len(self.buffer) - self.holdback)
        out, self.buffer = self.buffer[:cut], self.buffer[cut:]
        return out, False

    def flush(self) -> str:
        out, self.buffer = self.buffer, ""
        return out


class LLMEngine:
    """One loaded text model and its continuous batch."""

    kind = "llm"

    def __init__(self, spec: p.ModelSpec, *, max_batch: int = 32) -> None:
        self.spec = spec
        t0 = time.perf_counter()
        loaded = mlx_load(spec.path)
        self.model, self.tokenizer = loaded[0], loaded[1]
        self.load_seconds = time.perf_counter() - t0
        self.weight_bytes = sum(int(v.nbytes) for _, v in tree_flatten(self.model.parameters()))  # type: ignore[misc,union-attr,str-unpack]
        self.batch = BatchGenerator(
            self.model,
            completion_batch_size=max_batch,
            prefill_batch_size=min(8, max_batch),
            # Chunked prefill: a long prompt advances this many tokens per step.
            prefill_step_size=512,
        )
        self._eos = StopSequences([(t,) for t in self.tokenizer.eos_token_ids])
        self.prompt_cache = LRUPromptCache(max_size=PROMPT_CACHE_ENTRIES, max_bytes=PROMPT_CACHE_BYTES)
        self._by_uid: dict[int, _Active] = {}
        self._uid_by_request: dict[str, int] = {}
        self.last_used = time.time()
        self.tokens_generated = 0
        self.cache_lookups = 0
        self.cache_hit_tokens = 0
        self.prompt_tokens_seen = 0

    # ---- bookkeeping -------------------------------------------------------------

    @property
    def active(self) -> int:
        return len(self._by_uid)

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "path": self.spec.path,
            "kind": self.kind,
            "active_requests": self.active,
            "weight_bytes": self.weight_bytes,
            "prompt_cache_bytes": self.prompt_cache.nbytes,
            "prompt_cache_entries": len(self.prompt_cache),
            "cache_hit_tokens": self.cache_hit_tokens,
            "prompt_tokens": self.prompt_tokens_seen,
            "tokens_generated": self.tokens_generated,
            "load_seconds": round(self.load_seconds, 3),
            "last_used": self.last_used,
        }

    # ---- requests ----------------------------------------------------------------

    def _tokenize(self, req: p.Generate) -> list[int]:
        tok = self.tokenizer
        try:
            if req.messages is not None:
                if not tok.has_chat_template:
                    raise BadRequest(f"model '{self.spec.name}' has no chat template")
                ids = tok.apply_chat_template(
                    req.messages, add_generation_prompt=True, **req.chat_template_kwargs
                )
            else:
                ids = tok.encode(req.prompt or "")
        except BadRequest:
            raise
        except Exception as exc:  # template errors are the client's message shape
            raise BadRequest(f"could not build the prompt: {exc}") from exc
        ids = list(ids)
        if not ids:
            raise BadRequest("the prompt is empty")
        return ids

    def add(self, req: p.Generate, conn: Any) -> None:
        prompt = self._tokenize(req)
        params = req.sampling
        cache, rest = self.prompt_cache.fetch_nearest_cache(self.spec.path, prompt)
        self.cache_lookups += 1
        if cache is not None and not rest:
            # The whole prompt is cached: recompute the last token to get logits.
            if can_trim_prompt_cache(cache):
                trim_prompt_cache(cache, 1)
                rest = prompt[-1:]
            else:
                cache, rest = None, prompt
        cached = len(prompt) - len(rest)
        (uid,) = self.batch.insert(
            [rest],
            max_tokens=[params.max_tokens],
            caches=[cache] if cache is not None else None,
            all_tokens=[prompt[:cached]],
            samplers=[make_request_sampler(params)],
            logits_processors=[make_request_processors(params)],
            stop_sequences=[self._eos],
        )
        stops = [s for s in params.stop if s]
        self._by_uid[uid] = _Active(
            request_id=req.request_id,
            conn=conn,
            detokenizer=self.tokenizer.detokenizer,
            stops=stops,
            holdback=max((len(s) for s in stops), default=1) - 1,
            prompt_tokens=len(prompt),
            cached_tokens=cached,
        )
        self._uid_by_request[req.request_id] = uid
        self.cache_hit_tokens += cached
        self.prompt_tokens_seen += len(prompt)
        self.last_used = time.time()

    def abort(self, request_id: str) -> bool:
        uid = self._uid_by_request.pop(request_id, None)
        if uid is None:
            return False
        self._by_uid.pop(uid, None)
        self.batch.remove([uid])
        return True

    def fail_all(self) -> list[_Active]:
        """Drop every request (after a failed step); returns them so callers can report."""
        dropped = list(self._by_uid.values())
        if self._by_uid:
            self.batch.remove(list(self._by_uid))
        self._by_uid.clear()
        self._uid_by_request.clear()
        return dropped

    def owned_by(self, conn: Any) -> list[str]:
        return [a.request_id for a in self._by_uid.values() if a.conn is conn]

    def step(self) -> list[tuple[Any, p.Output]]:
        """Run one batch step; return (connection, output) for every request that advanced."""
        if not self._by_uid:
            return []
        _, responses = self.batch.next()
        outputs: list[tuple[Any, p.Output]] = []
        finished: list[int] = []
        for r in responses:
            act = self._by_uid.get(r.uid)
            if act is None:
                continue
            act.completion_tokens += 1
            detok = act.detokenizer
            finish = r.finish_reason
            if finish == "stop":  # an EOS token: never part of the text
                detok.finalize()
            else:
                detok.add_token(r.token)
                if finish is not None:
                    detok.finalize()
            text, stopped = act.feed(detok.last_segment)
            if stopped and finish is None:
                finish = "stop"
                finished.append(r.uid)  # still in the batch: remove it below
            if finish is not None:
                if not stopped:
                    text += act.flush()
                if r.prompt_cache is not None and r.all_tokens is not None:
                    self.prompt_cache.insert_cache(self.spec.path, list(r.all_tokens), r.prompt_cache)
                self._by_uid.pop(r.uid, None)
                self._uid_by_request.pop(act.request_id, None)
                outputs.append(
                    (
                        act.conn,
                        p.Output(
                            act.request_id,
                            text,
                            act.completion_tokens,
                            finish,
                            act.prompt_tokens,
                            act.cached_tokens,
                        ),
                    )
                )
            elif text:
                outputs.append((act.conn, p.Output(act.request_id, text, act.completion_tokens)))
        if finished:
            # Stopped by a stop string: keep their KV for the next turn's prefix.
            for cache, tokens in self.batch.remove(finished, return_prompt_caches=True).values():
                self.prompt_cache.insert_cache(self.spec.path, list(tokens), cache)
        self.tokens_generated += len(responses)
        if responses:
            self.last_used = time.time()
        return outputs

    def close(self) -> None:
        self.fail_all()
        self.batch.close()
