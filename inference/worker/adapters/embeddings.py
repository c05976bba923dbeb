"""Embeddings models (BERT-style sentence encoders and others) through mlx-embeddings.

An `EmbeddingEngine` sits in the same pool, under the same memory limit, as the text
engines. A request is served whole when it arrives (one forward pass per chunk of inputs,
padded into a batch), in the scheduler thread between generation steps: it never has
requests in flight, so it is always idle for eviction and keep-alive.
"""

from __future__ import annotations

import time

import numpy as np

from inference import protocol as p
from inference.worker.adapters.base import SideEngine
from inference.worker.adapters.llm import BadRequest, _nbytes

MAX_INPUTS = 2048  # OpenAI's limit per request
BATCH = 32  # inputs per forward pass


class EmbeddingEngine(SideEngine):
    kind = "embeddings"

    def __init__(self, spec: p.ModelSpec) -> None:
        from mlx_embeddings.utils import load

        super().__init__(spec)
        t0 = time.perf_counter()
        self.model, self.tokenizer = load(spec.path)
        config = getattr(self.model, "config", None)
        self.max_tokens = int(getattr(config, "max_position_embeddings", 0) or 512)
        self.vocab_size = int(getattr(config, "vocab_size", 0) or len(self.tokenizer))
        self.pad_id = int(getattr(self.tokenizer, "pad_token_id", None) or 0)
        self.load_seconds = time.perf_counter() - t0
        self.weight_bytes = _nbytes(self.model)
        self.inputs_embedded = 0

    @property
    def context_length(self) -> int:
        return self.max_tokens

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
