"""Vision-language models (images + text in, text out) through mlx-vlm.

A `VisionEngine` is an `LLMEngine` whose requests all run in the sequential lane: each
request is an mlx-vlm `generate_step` iterator (the vision tower and the prompt on its first
step, one token per step after), and the scheduler advances every running request once per
round, so several image chats stream at once next to the text models. Everything after the
token is the text engine's: stop strings, tool calls and reasoning, logprobs, usage.

Not batched: mlx-vlm 0.7.10's batch path merges image features assuming one image
request per batch for LLaVA (rows swap images), so requests interleave instead.

Prompt cache: a finished request's KV cache is kept in the engine's `LRUPromptCache` under
the model path plus a digest of its images, so the next turn of the same conversation (the
same images sent again, as chat clients do) prefills only its new text.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
from mlx_lm.generate import StopSequences
from mlx_lm.models.cache import LRUPromptCache, can_trim_prompt_cache, trim_prompt_cache

from inference import protocol as p
from inference.worker import markup as mk
from inference.worker import structured
from inference.worker.adapters.llm import (
    PROMPT_CACHE_BYTES,
    PROMPT_CACHE_ENTRIES,
    BadRequest,
    LLMEngine,
    _nbytes,
    make_request_processors,
    make_request_sampler,
)

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
        self._markups: dict[tuple[str, str], mk.Markup] = {}
        self._token_texts: dict[int, str] = {}
        self.load_seconds = time.perf_counter() - t0
        self.weight_bytes = _nbytes(self.model)
        self._eos = StopSequences([(t,) for t in self.tokenizer.eos_token_ids])
        self._eos_ids = set(self.tokenizer.eos_token_ids)
        self.prompt_cache = LRUPromptCache(max_size=PROMPT_CACHE_ENTRIES, max_bytes=PROMPT_CACHE_BYTES)
        self._by_uid = {}
        self._uid_by_request = {}
        self._sequential = {}
        self._waiting = deque()
        self._running: dict[str, _Running] = {}
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
        self.fail_all()
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

    def add(self, req: p.Generate, conn: Any) -> None:
        ids, pixels, mask = self._inputs(req)
        req = self._check_context(req, ids)
        parser, extra = self._prepare(req, ids)  # compiles grammars: errors are the client's
        if len(self._sequential) >= self.max_concurrent:
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
        from mlx_vlm.generate import generate_step
        from mlx_vlm.models.cache import make_prompt_cache

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
        running = _Running(key, ids, cache)
        self._running[req.request_id] = running
        act = self._new_active(req, conn, ids, cached, parser)
        act.sequential = self._track(tokens, running)
        self._sequential[req.request_id] = act

    @staticmethod
    def _track(tokens: Iterator[Any], running: _Running) -> Iterator[tuple[int, Any]]:
        for raw, logprobs in tokens:
            token = int(cast(Any, raw.item() if isinstance(raw, mx.array) else raw))
            running.generated.append(token)
            yield token, logprobs

    def _sequential_done(self, request_id: str) -> None:
        """Keep a finished request's KV cache for the next turn of its conversation."""
        running = self._running.pop(request_id, None)
        if running is None or not running.cache:
            return
        tokens = running.prompt + running.generated
        offset = getattr(running.cache[0], "offset", None)
        if offset == len(tokens):  # the cache holds exactly these tokens (else: not reusable)
            self.prompt_cache.insert_cache(running.key, tokens, running.cache)

    def abort(self, request_id: str) -> bool:
        self._running.pop(request_id, None)
        return super().abort(request_id)

    def fail_all(self) -> list[Any]:
        self._running.clear()
        return super().fail_all()

    def _admit_waiting(self) -> None:
        while self._waiting and len(self._sequential) < self.max_concurrent:
            req, conn = self._waiting.popleft()
            try:
                ids, pixels, mask = self._inputs(req)
                self._start(req, conn, ids, pixels, mask, *self._prepare(req, ids))
            except BadRequest:
                log.exception("a queued vision request could not start")  # it checked out on arrival
