"""Vision-language models (images + text in, text out) through mlx-vlm.

A `VisionEngine` is an `LLMEngine` with two lanes that together run up to the profile's
`max_concurrent` requests (the rest wait in the engine's queue):

- The batched lane (a new request, no logprobs asked): mlx-vlm's `BatchGenerator` on the
  language model. Each request's embeddings (its images' features merged into its text) are
  computed alone with `model.get_input_embeddings` (mlx-vlm's own `batch_generate` would
  merge LLaVA images across rows), then new rows are prefilled together, left-padded, and all
  rows decode together: one forward pass per step. The batch has one sampler, argmax; a
  request with a temperature draws its own token in its last logits processor (`_Draw`: its
  own top-p/top-k/min-p and seeded PRNG key, as the sequential lane's sampler), so greedy and
  sampled requests share a batch and each answers as it would alone (up to floating-point
  differences between a batched and a lone forward pass, none on the test model). The
  engine, not the batch, ends a row (EOS, max_tokens, stop strings, tool calls) and takes
  its KV cache out first.
- The sequential lane: a request whose prompt has a cached prefix (a later turn of a
  conversation) or that asks for logprobs runs as its own mlx-vlm `generate_step` iterator
  (mlx-vlm's batch takes no per-request cache and we don't sample logprobs in it), advanced
  one token per scheduler step next to the batch.

Everything after the token is the text engine's: stop strings, tool calls and reasoning,
logprobs, usage. No speculative decoding or KV quantization in either lane. In the batch,
logits processors see the whole prompt plus the generated tokens; mlx-vlm's `generate_step`
passes them only the tail of the prompt it prefilled last, so repetition/presence/frequency
penalties can weigh prompt tokens differently between the lanes (greedy and seeded sampling
without penalties answer the same in both).

Prompt cache: a finished request's KV cache (from either lane) is kept in the engine's
`LRUPromptCache` under the model path plus a digest of its images, so the next turn of the
same conversation (the same images sent again, as chat clients do) prefills only its new text.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import mlx.core as mx
from mlx_lm.generate import StopSequences
from mlx_lm.models.cache import can_trim_prompt_cache, trim_prompt_cache

from inference import protocol as p
from inference.worker import markup as mk
from inference.worker import memory, structured
from inference.worker.adapters.llm import (
    PROMPT_CACHE_BYTES,
    PROMPT_CACHE_ENTRIES,
    BadRequest,
    LLMEngine,
    _nbytes,
    _weights_form,
    make_request_processors,
    make_request_sampler,
)
from inference.worker.prompt_cache import PromptCache
from inference.worker.prompts import Prompts

log = logging.getLogger(__name__)


def _drop_unknown_image_kwargs(processor: Any) -> None:
    """mlx-vlm passes `padding=True` to every processor call, and transformers 5's image
    processors refuse keywords they don't declare (mlx-vlm issue #870, open in 0.7.10):
    let the image processor see only the ones it declares."""
    ip = getattr(processor, "image_processor", None)
    declared = getattr(getattr(ip, "valid_kwargs", None), "__annotations__", None)
    if ip is None or declared is None or getattr(ip, "_mlxm_filtered", False):
        return
    allowed = set(declared)
    original = ip.preprocess

    def preprocess(images: Any, *args: Any, **kwargs: Any) -> Any:
        return original(images, *args, **{k: v for k, v in kwargs.items() if k in allowed})

    ip.preprocess = preprocess
    ip._mlxm_filtered = True


def _open_images(blobs: list[bytes]) -> list[Any]:
    from PIL import Image

    images = []
    for i, raw in enumerate(blobs):
        try:
            img = Image.open(io.BytesIO(raw))
            img.load()
        except Exception as exc:  # the gateway checked them: this is a corrupt frame
            raise BadRequest(f"image {i} could not be decoded: {exc}") from exc
        images.append(img.convert("RGB"))
    return images


class _Running:
    """The cache bookkeeping of one request in flight."""

    def __init__(self, key: str, prompt: list[int], cache: list[Any]) -> None:
        self.key = key
        self.prompt = prompt
        self.cache = cache
        self.generated: list[int] = []


class _NeverStop:
    """Stands in for the tokenizer's stopping criteria in the batch: the engine ends a row
    itself (EOS, length, stop strings, tool calls), so that it can take the row's KV cache
    out of the batch before the row leaves it."""

    def add_eos_token_ids(self, *_: Any) -> None:
        pass

    def __call__(self, token: int) -> bool:
        return False


def _argmax(logprobs: mx.array) -> mx.array:
    return mx.argmax(logprobs, axis=-1)


class _Draw:
    """A request's own sampler, run as its last logits processor inside the batch.

    mlx-vlm's BatchGenerator samples every row with one sampler; ours is argmax. A request
    with a temperature draws its token here, with its own settings and (seeded) PRNG key,
    from the same log-probabilities the sequential lane's sampler sees, and leaves only that
    token finite, so the shared argmax picks it. Greedy requests need no `_Draw`.
    """

    def __init__(self, params: p.SamplingParams) -> None:
        self.sampler = make_request_sampler(params)

    def __call__(self, tokens: mx.array, logits: mx.array) -> mx.array:
        logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
        token = self.sampler(logprobs)
        drawn = mx.arange(logits.shape[-1]) == token.reshape(-1, 1)
        return mx.where(drawn, mx.array(0.0, logits.dtype), mx.array(-mx.inf, logits.dtype))


class _Batch:
    """mlx-vlm's `BatchGenerator` over the language model, fed with embeddings.

    Each request's embeddings (its image features merged into its text) are computed alone
    with `model.get_input_embeddings`, then the rows are prefilled together (left-padded)
    and decoded together, one forward pass per step for all of them.
    """

    def __init__(self, model: Any) -> None:
        from mlx_vlm.generate import BatchGenerator

        tokenizer = SimpleNamespace(stopping_criteria=_NeverStop())
        self.gen = BatchGenerator(
            model.language_model,
            SimpleNamespace(tokenizer=tokenizer),
            sampler=_argmax,
            compute_logprobs=False,  # requests asking for logprobs take the sequential lane
            # The engine admits at most max_concurrent requests: the batch takes them all,
            # prefilling up to eight new prompts together.
            completion_batch_size=1 << 20,
            prefill_batch_size=8,
            prefill_step_size=512,
        )

    def insert(self, ids: list[int], embeds: mx.array, max_tokens: int, processors: list[Any]) -> int:
        (uid,) = self.gen.insert(
            [ids],
            # One more than the request's budget: the engine ends the row at its budget.
            max_tokens=[max_tokens + 1],
            prompt_kwargs=[{"inputs_embeds": embeds}],
            logits_processors=[processors],
        )
        return int(uid)

    def next(self) -> list[Any]:
        _, responses = self.gen.next()
        return cast(list[Any], responses)

    def take(self, uid: int) -> list[Any] | None:
        """Remove a row; return its KV cache (one row, no padding) if it was decoding."""
        batch = self.gen._generation_batch
        cache = None
        if uid in batch.uids:
            idx = batch.uids.index(uid)
            cache = [c.extract(idx) for c in batch.prompt_cache]
            mx.eval([c.state for c in cache])
        self.gen.remove(uid)
        return cache

    def remove(self, uids: list[int]) -> None:
        for uid in uids:
            self.gen.remove(uid)

    def close(self) -> None:
        self.gen.close()


class VisionEngine(LLMEngine):
    kind = "vision"

    def __init__(self, spec: p.ModelSpec) -> None:  # noqa: PLW0231 - no mlx-lm BatchGenerator here
        import mlx_vlm
        from mlx_lm.tokenizer_utils import load as load_tokenizer

        from inference.worker.adapters.llm import _GROUP

        if _GROUP is not None:
            raise BadRequest("vision models are not served on a distributed worker")
        if spec.draft_path or spec.kv_bits is not None:
            raise BadRequest("vision profiles take no draft model and no KV quantization")
        self.spec = spec
        self.pinned = spec.pinned
        t0 = time.perf_counter()
        self.model, self.processor = mlx_vlm.load(spec.path)
        _drop_unknown_image_kwargs(self.processor)
        config = self.model.config
        self.image_token = int(getattr(config, "image_token_index", -1) or -1)
        text_config = getattr(config, "text_config", None)
        self.model_context = int(getattr(text_config, "max_position_embeddings", 0) or 0) or None
        eos = getattr(config, "eos_token_id", None)
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        # mlx-lm's tokenizer wrapper: its streaming detokenizer, EOS ids and the tool-call and
        # reasoning formats it infers drive the text side as for any text model.
        self.tokenizer = load_tokenizer(Path(spec.path), eos_token_ids=eos_ids or None)
        vocab = getattr(text_config, "vocab_size", None) or len(self.tokenizer)
        self.grammars = structured.Grammars(
            self.tokenizer, vocab_size=int(vocab), eos_ids=list(self.tokenizer.eos_token_ids)
        )
        from mlx_vlm.utils import should_add_special_tokens

        self._special_tokens = bool(
            should_add_special_tokens(getattr(config, "model_type", ""), self.processor)
        )
        self.draft_model = None
        self.kv_group_size = 64
        self.prompts = Prompts(self.tokenizer, self.grammars, name=spec.name)
        self._token_texts: dict[int, str] = {}
        self.load_seconds = time.perf_counter() - t0
        self.weight_bytes = _nbytes(self.model)
        self._eos = StopSequences([(t,) for t in self.tokenizer.eos_token_ids])
        self._eos_ids = set(self.tokenizer.eos_token_ids)
        self.prompt_cache = PromptCache(max_size=PROMPT_CACHE_ENTRIES, max_bytes=PROMPT_CACHE_BYTES)
        # The memory budget's KV admission is the text engine's (LLMEngine._reserve); here the
        # weights and the prompt cache count under the pool's limit.
        self.pool = None
        self.weights_form = _weights_form(self.model)
        self._kv_per_token = 0
        self._kv = {}
        self._starting = None
        self.config = memory.read_config(spec.path)
        self._mem_waiting = deque()
        self._by_uid = {}
        self._uid_by_request = {}
        self._sequential = {}
        self._waiting = deque()
        self._arrivals = {}
        self._running: dict[str, _Running] = {}  # both lanes, by request id
        self.batch = _Batch(self.model)  # type: ignore[assignment]  # mlx-vlm's, not mlx-lm's
        self.last_used = time.time()
        self.tokens_generated = 0
        self.cache_hit_tokens = 0
        self.prompt_tokens_seen = 0
        self.images_seen = 0

    # ---- bookkeeping ---------------------------------------------------------------

    def apply_policy(self, spec: p.ModelSpec) -> None:
        self.spec = spec
        self.pinned = self.pinned or spec.pinned
        self._admit_waiting()  # a raised max_concurrent lets waiting requests in

    @property
    def max_concurrent(self) -> int:
        return max(1, self.spec.max_concurrent)

    def stats(self) -> dict[str, Any]:
        return {**super().stats(), "images": self.images_seen}

    def close(self) -> None:
        super().close()
        self._running.clear()

    # ---- prompts -------------------------------------------------------------------

    def _inputs(self, req: p.Generate | p.CountTokens) -> tuple[list[int], Any, Any]:
        """Prompt token ids (each image expanded to its image tokens), pixel values, mask."""
        if not req.images:
            return self._tokenize(req), None, None
        if req.messages is None:
            raise BadRequest("images need chat messages")
        from mlx_vlm.utils import prepare_inputs

        messages, kwargs = self._chat(req)
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
        except Exception as exc:
            raise BadRequest(f"could not build the prompt: {exc}") from exc
        placed = text.count(self.processor.image_token) if hasattr(self.processor, "image_token") else None
        if placed is not None and placed != len(req.images):
            raise BadRequest(
                f"the chat template of '{self.spec.name}' placed {placed} of the {len(req.images)} images"
            )
        images = _open_images(req.images)
        try:
            inputs = prepare_inputs(
                self.processor,
                images=images,
                prompts=text,
                image_token_index=self.image_token,
                add_special_tokens=self._special_tokens,
            )
        except Exception as exc:
            raise BadRequest(f"could not prepare the images: {exc}") from exc
        ids = cast(list[int], inputs["input_ids"][0].tolist())
        return ids, inputs.get("pixel_values"), inputs.get("attention_mask")

    def count_tokens(self, req: p.CountTokens) -> int:
        return len(self._inputs(req)[0])

    def _cache_key(self, images: list[bytes]) -> str:
        if not images:
            return self.spec.path
        digest = hashlib.sha256()
        for raw in images:
            digest.update(hashlib.sha256(raw).digest())
        return f"{self.spec.path}#images:{digest.hexdigest()}"

    # ---- requests ------------------------------------------------------------------

    @property
    def _busy(self) -> int:
        return len(self._sequential) + len(self._by_uid)

    def add(
        self, req: p.Generate, conn: Any, *, arrived: float | None = None, prompt: list[int] | None = None
    ) -> None:
        # `prompt` (the text's tokens, from the scheduler's queue) is not used: images expand here.
        ids, pixels, mask = self._inputs(req)
        req = self._check_context(req, ids)
        parser, extra = self._prepare(req, ids)  # compiles grammars: errors are the client's
        self._note_arrival(req.request_id, arrived)
        if self._busy >= self.max_concurrent:
            self._waiting.append((req, conn))
            return
        self._start(req, conn, ids, pixels, mask, parser, extra)

    def _start(
        self,
        req: p.Generate,
        conn: Any,
        ids: list[int],
        pixels: Any,
        mask: Any,
        parser: mk.OutputParser,
        extra: list[Any],
    ) -> None:
        self.images_seen += len(req.images)
        key = self._cache_key(req.images)
        cache, rest = self.prompt_cache.fetch_nearest_cache(key, ids)
        if cache is not None and not rest:
            # The whole prompt is cached: recompute its last token to get logits.
            if can_trim_prompt_cache(cache):
                trim_prompt_cache(cache, 1)
                rest = ids[-1:]
            else:
                cache, rest = None, ids
        if cache is not None and self.image_token in rest:
            cache, rest = None, ids  # the uncached part holds image positions: start over
        running = _Running(key, ids, [])
        self._running[req.request_id] = running
        # A cached prefix (a later turn of a conversation) and logprobs take the sequential
        # lane: mlx-vlm's batch takes no per-request cache and samples no logprobs for us.
        if cache is None and req.logprobs is None:
            self._start_batched(req, conn, ids, pixels, mask, parser, extra, running)
        else:
            self._start_sequential(req, conn, ids, pixels, mask, parser, extra, running, cache, rest)

    def _start_batched(
        self,
        req: p.Generate,
        conn: Any,
        ids: list[int],
        pixels: Any,
        mask: Any,
        parser: mk.OutputParser,
        extra: list[Any],
        running: _Running,
    ) -> None:
        params = req.sampling
        # This request's image features merged into its own text embeddings, alone (lazy:
        # computed when the batch prefills it).
        embeds = self.model.get_input_embeddings(mx.array([ids]), pixels, mask=mask).inputs_embeds
        processors = make_request_processors(params) + extra
        if params.temperature > 0:
            processors.append(_Draw(params))
        uid = cast(_Batch, self.batch).insert(ids, embeds, params.max_tokens, processors)
        self._by_uid[uid] = self._new_active(req, conn, ids, 0, parser)
        self._uid_by_request[req.request_id] = uid

    def _start_sequential(
        self,
        req: p.Generate,
        conn: Any,
        ids: list[int],
        pixels: Any,
        mask: Any,
        parser: mk.OutputParser,
        extra: list[Any],
        running: _Running,
        cache: list[Any] | None,
        rest: list[int],
    ) -> None:
        from mlx_vlm.generate import generate_step
        from mlx_vlm.models.cache import make_prompt_cache

        cached = len(ids) - len(rest)
        if cache is None:
            cache = make_prompt_cache(self.model.language_model)
            prompt, step_pixels, step_mask = mx.array([ids]), pixels, mask
        else:
            prompt, step_pixels, step_mask = mx.array([rest]), None, None
        params = req.sampling
        tokens = generate_step(
            prompt,
            self.model,
            step_pixels,
            step_mask,
            max_tokens=params.max_tokens,
            sampler=make_request_sampler(params),
            logits_processors=make_request_processors(params) + extra,
            prompt_cache=cache,
        )
        running.cache = cache
        act = self._new_active(req, conn, ids, cached, parser)
        act.sequential = self._track(tokens, running)
        self._sequential[req.request_id] = act

    @staticmethod
    def _track(tokens: Iterator[Any], running: _Running) -> Iterator[tuple[int, Any]]:
        for raw, logprobs in tokens:
            token = int(cast(Any, raw.item() if isinstance(raw, mx.array) else raw))
            running.generated.append(token)
            yield token, logprobs

    def _step_batch(self, outputs: list[tuple[Any, p.Output]]) -> None:
        responses = cast(_Batch, self.batch).next()
        done: list[tuple[int, str]] = []
        for r in responses:
            act = self._by_uid.get(r.uid)
            if act is None:
                continue
            token = int(r.token)
            running = self._running.get(act.request_id)
            if running is not None:
                running.generated.append(token)
            # The engine ends rows (the batch's own criteria never do): as the sequential lane.
            out, _ = self._on_token(act, token, self._finish_of(act, token))
            self.tokens_generated += 1
            if out is None:
                continue
            outputs.append((act.conn, out))
            if out.finish_reason is not None:
                done.append((r.uid, act.request_id))
        for uid, rid in done:
            self._by_uid.pop(uid, None)
            self._uid_by_request.pop(rid, None)
            running = self._running.pop(rid, None)
            cache = cast(_Batch, self.batch).take(uid)
            if running is not None and cache is not None:
                running.cache = cache
                self._keep(running)
        if done:
            self._admit_waiting()

    def _sequential_done(self, request_id: str) -> None:
        running = self._running.pop(request_id, None)
        if running is not None:
            self._keep(running)

    def _keep(self, running: _Running) -> None:
        """Keep a finished request's KV cache for the next turn of its conversation."""
        if not running.cache:
            return
        tokens = running.prompt + running.generated
        offset = getattr(running.cache[0], "offset", None)
        if offset == len(tokens):  # the cache holds exactly these tokens (else: not reusable)
            self.prompt_cache.insert_cache(running.key, tokens, running.cache)

    def abort(self, request_id: str) -> bool:
        self._running.pop(request_id, None)
        uid = self._uid_by_request.pop(request_id, None)
        if uid is not None:
            self._by_uid.pop(uid, None)
            cast(_Batch, self.batch).remove([uid])
            self._admit_waiting()
            return True
        return super().abort(request_id)

    def fail_all(self) -> list[Any]:
        self._running.clear()
        if self._by_uid:  # after a failed step the batch's state is suspect: start a new one
            self.batch.close()
            self.batch = _Batch(self.model)  # type: ignore[assignment]
        return super().fail_all()

    def _admit_waiting(self) -> None:
        while self._waiting and self._busy < self.max_concurrent:
            req, conn = self._waiting.popleft()
            try:
                ids, pixels, mask = self._inputs(req)
                self._start(req, conn, ids, pixels, mask, *self._prepare(req, ids))
            except BadRequest:
                log.exception("a queued vision request could not start")  # it checked out on arrival
