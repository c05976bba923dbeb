"""What the pool and the scheduler need of every engine that isn't a text LLM.

`SideEngine` holds the bookkeeping (pinning, keep-alive, the pool page's stats); a
subclass loads its model and adds its own request methods. An engine that serves each
request whole in one call (embeddings, speech to text) never has requests in flight, so
it is always idle for eviction; a streaming one (text to speech) overrides the request
methods below.
"""

from __future__ import annotations

import time
from typing import Any

from inference import protocol as p


class SideEngine:
    kind = "?"
    tokens_generated = 0  # the tokens/s chart counts text generation only

    def __init__(self, spec: p.ModelSpec) -> None:
        self.spec = spec
        self.pinned = spec.pinned
        self.last_used = time.time()
        self.load_seconds = 0.0
        self.weight_bytes = 0
        self.prompt_tokens_seen = 0

    @property
    def active(self) -> int:
        return 0

    @property
    def context_length(self) -> int | None:
        return None

    def apply_policy(self, spec: p.ModelSpec) -> None:
        self.spec = spec
        self.pinned = self.pinned or spec.pinned

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "path": self.spec.path,
            "kind": self.kind,
            "active_requests": self.active,
            "queued_requests": 0,
            "weight_bytes": self.weight_bytes,
            "prompt_cache_bytes": 0,
            "prompt_cache_entries": 0,
            "cache_hit_tokens": 0,
            "memory_hit_tokens": 0,
            "disk_hit_tokens": 0,
            "disk_cache_entries": 0,
            "disk_cache_bytes": 0,
            "prompt_tokens": self.prompt_tokens_seen,
            "tokens_generated": 0,
            "load_seconds": round(self.load_seconds, 3),
            "last_used": self.last_used,
            "speculative": False,
            "kv_bits": None,
            "pinned": self.pinned,
            "keep_alive_s": self.spec.keep_alive_s,
            "context_length": self.context_length,
            "max_concurrent": self.spec.max_concurrent,
        }

    # ---- requests in flight (none, unless a subclass streams) ----------------------

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
