"""Embeddings models (BERT-style sentence encoders and others) through mlx-embeddings.

An `EmbeddingEngine` sits in the same pool, under the same memory limit, as the text
engines. A request is served whole when it arrives (one forward pass per chunk of inputs,
padded into a batch), in the scheduler thread between generation steps: it never has
requests in flight, so it is always idle for eviction and keep-alive.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from inference import protocol as p
from inference.worker.adapters.llm import BadRequest, _nbytes

MAX_INPUTS = 2048  # OpenAI's limit per request
BATCH = 32  # inputs per forward pass


class EmbeddingEngine:
    kind = "embeddings"

    def __init__(self, spec: p.ModelSpec) -> None:
        from mlx_embeddings.utils import load

        self.spec = spec
        self.pinned = spec.pinned
        t0 = time.perf_counter()
        self.model, self.tokenizer = load(spec.path)
        config = getattr(self.model, "config", None)
        self.max_tokens = int(getattr(config, "max_position_embeddings", 0) or 512)
        self.vocab_size = int(getattr(config, "vocab_size", 0) or len(self.tokenizer))
        self.pad_id = int(getattr(self.tokenizer, "pad_token_id", None) or 0)
        self.load_seconds = time.perf_counter() - t0
        self.weight_bytes = _nbytes(self.model)
        self.last_used = time.time()
        self.inputs_embedded = 0
        self.prompt_tokens_seen = 0

    # ---- the pool's view ---------------------------------------------------------

    active = 0  # requests are served whole in one call: never in flight
    tokens_generated = 0  # nothing is generated; the tokens/s chart counts generation only

    def apply_policy(self, spec: p.ModelSpec) -> None:
        self.spec = spec
        self.pinned = self.pinned or spec.pinned

    @property
    def context_length(self) -> int:
        return self.max_tokens

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "path": self.spec.path,
            "kind": self.kind,
            "active_requests": 0,
            "queued_requests": 0,
            "weight_bytes": self.weight_bytes,
            "prompt_cache_bytes": 0,
            "prompt_cache_entries": 0,
            "cache_hit_tokens": 0,
            "prompt_tokens": self.prompt_tokens_seen,
            "tokens_generated": 0,
            "load_seconds": round(self.load_seconds, 3),
            "last_used": self.last_used,
            "speculative": False,
            "kv_bits": None,
            "pinned": self.pinned,
            "keep_alive_s": self.spec.keep_alive_s,
            "context_length": self.max_tokens,
            "max_concurrent": self.spec.max_concurrent,
        }

    def owned_by(self, conn: Any) -> list[str]:
        return []

    def abort(self, request_id: str) -> bool:
        return False

    def fail_all(self) -> list[Any]:
        return []

    def step(self) -> list[Any]:
        return []

    def close(self) -> None:
        pass

    # ---- embedding -----------------------------------------------------------------

    def _tokenize(self, req: p.Embed) -> list[list[int]]:
        if req.token_ids is not None:
            ids = req.token_ids
        else:
            ids = [
                list(self.tokenizer(text, add_special_tokens=True)["input_ids"]) for text in req.texts or []
            ]
        if not ids:
            raise BadRequest("input is empty: give a string or a list of them")
        if len(ids) > MAX_INPUTS:
            raise BadRequest(f"at most {MAX_INPUTS} inputs per request (got {len(ids)})")
        for i, seq in enumerate(ids):
            if not seq:
                raise BadRequest(f"input {i} is empty")
            if req.token_ids is not None and not all(0 <= t < self.vocab_size for t in seq):
                raise BadRequest(
                    f"input {i} holds token ids outside the vocabulary (0-{self.vocab_size - 1})"
                )
            if len(seq) > self.max_tokens:
                raise BadRequest(
                    f"input {i} has {len(seq)} tokens, more than the {self.max_tokens} that "
                    f"'{self.spec.name}' reads; shorten it"
                )
        return ids

    def embed(self, req: p.Embed) -> p.EmbeddingsReply:
        import mlx.core as mx

        ids = self._tokenize(req)
        vectors: list[np.ndarray] = []
        for start in range(0, len(ids), BATCH):
            chunk = ids[start : start + BATCH]
            width = max(len(seq) for seq in chunk)
            tokens = np.full((len(chunk), width), self.pad_id, dtype=np.int32)
            mask = np.zeros((len(chunk), width), dtype=np.int32)
            for row, seq in enumerate(chunk):
                tokens[row, : len(seq)] = seq
                mask[row, : len(seq)] = 1
            out = self.model(mx.array(tokens), attention_mask=mx.array(mask))
            embeds = out.text_embeds  # pooled and L2-normalised by mlx-embeddings
            vectors.append(np.asarray(embeds.astype(mx.float32)))
        data = np.concatenate(vectors).astype("<f4")
        prompt_tokens = sum(len(seq) for seq in ids)
        self.last_used = time.time()
        self.inputs_embedded += len(ids)
        self.prompt_tokens_seen += prompt_tokens
        return p.EmbeddingsReply(
            request_id=req.request_id,
            count=int(data.shape[0]),
            dims=int(data.shape[1]),
            data=data.tobytes(),
            prompt_tokens=prompt_tokens,
        )
