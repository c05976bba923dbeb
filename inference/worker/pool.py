"""The model pool: loads on demand, keeps models resident within a memory limit.

Admission control: before a load, idle unpinned models are evicted least-recently-used
first until the new model's estimated size fits; if it still doesn't fit (everything left
is busy or pinned), the load is refused with `PoolFull` (the gateway answers 503), never
an out-of-memory crash. Idle models past their keep-alive are unloaded by `expire`.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from inference import protocol as p

log = logging.getLogger(__name__)


class ModelLoadError(Exception):
    pass


class PoolFull(Exception):
    pass


def default_memory_limit() -> int:
    """MLXM_MEMORY_LIMIT_BYTES, else 75% of physical memory."""
    raw = os.environ.get("MLXM_MEMORY_LIMIT_BYTES")
    if raw:
        return int(raw)
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 16 << 30
    return int(total * 0.75)


def estimate_bytes(spec: p.ModelSpec) -> int:
    """What loading `spec` will take, from its weight files on disk."""
    total = 0
    for path in filter(None, (spec.path, spec.draft_path)):
        total += sum(f.stat().st_size for f in Path(path).glob("*.safetensors"))
    return total


class Pool:
    """Engines keyed by `ModelSpec.key`. Only the scheduler thread touches it."""

    def __init__(self, *, memory_limit: int | None = None, max_models: int = 16) -> None:
        self.memory_limit = memory_limit if memory_limit is not None else default_memory_limit()
        self.max_models = max_models
        self._engines: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self.evictions = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._engines.values()))

    def __len__(self) -> int:
        return len(self._engines)

    @property
    def used_bytes(self) -> int:
        return sum(e.weight_bytes for e in self._engines.values())

    def find(self, spec: p.ModelSpec) -> Any | None:
        return self._engines.get(spec.key)

    def get(self, spec: p.ModelSpec) -> Any:
        engine = self._engines.get(spec.key)
        if engine is not None:
            self._engines.move_to_end(spec.key)
            engine.apply_policy(spec)
            return engine
        if not Path(spec.path).is_dir():
            raise ModelLoadError(f"could not load model '{spec.name}': no model directory at {spec.path}")
        self._make_room(spec)
        log.info("loading %s from %s", spec.name, spec.path)
        t0 = time.perf_counter()
        try:
            engine = self._load(spec)
        except Exception as exc:
            raise ModelLoadError(f"could not load model '{spec.name}': {exc}") from exc
        log.info("loaded %s in %.2fs (%d MB)", spec.name, time.perf_counter() - t0, engine.weight_bytes >> 20)
        self._engines[spec.key] = engine
        return engine

    def _load(self, spec: p.ModelSpec) -> Any:
        if spec.kind == "embeddings":
            from inference.worker.adapters.embeddings import EmbeddingEngine

            return EmbeddingEngine(spec)
        if spec.kind == "tts":
            from inference.worker.adapters.speech import TTSEngine

            return TTSEngine(spec)
        if spec.kind == "stt":
            from inference.worker.adapters.speech import STTEngine

            return STTEngine(spec)
        if spec.kind == "vision":
            from inference.worker.adapters.vision import VisionEngine

            return VisionEngine(spec)
        if spec.kind != "llm":
            raise ModelLoadError(f"model kind '{spec.kind}' is not supported yet")
        from inference.worker.adapters.llm import LLMEngine

        return LLMEngine(spec)

    def _evictable(self) -> list[tuple[Any, ...]]:
        """Idle, unpinned engines, least recently used first."""
        idle = [(e.last_used, key) for key, e in self._engines.items() if e.active == 0 and not e.pinned]
        return [key for _, key in sorted(idle, key=lambda t: t[0])]

    def _make_room(self, spec: p.ModelSpec) -> None:
        need = estimate_bytes(spec)
        if need > self.memory_limit:
            raise PoolFull(
                f"model '{spec.name}' needs about {need >> 20} MB, more than the pool's memory limit "
                f"of {self.memory_limit >> 20} MB"
            )
        victims = self._evictable()
        while victims and (
            self.used_bytes + need > self.memory_limit or len(self._engines) >= self.max_models
        ):
            self.unload(victims.pop(0), reason="to make room")
            self.evictions += 1
        if self.used_bytes + need > self.memory_limit:
            busy = ", ".join(e.spec.name for e in self._engines.values())
            raise PoolFull(
                f"not enough memory to load '{spec.name}' (about {need >> 20} MB): "
                f"{self.used_bytes >> 20} of {self.memory_limit >> 20} MB are held by busy or pinned "
                f"models ({busy}); retry when they are idle"
            )

    def unload(self, key: tuple[Any, ...], *, reason: str = "") -> bool:
        engine = self._engines.pop(key, None)
        if engine is None:
            return False
        log.info("unloading %s %s", engine.spec.name, reason)
        engine.close()
        del engine
        gc.collect()
        import mlx.core as mx

        mx.clear_cache()
        return True

    def expire(self, now: float) -> list[str]:
        """Unload idle models past their keep-alive; returns their names."""
        gone = []
        for key, e in list(self._engines.items()):
            ttl = e.spec.keep_alive_s
            if ttl is not None and not e.pinned and e.active == 0 and now - e.last_used > ttl:
                name = e.spec.name
                if self.unload(key, reason=f"after {ttl:.0f}s idle"):
                    gone.append(name)
        return gone

    def stats(self) -> list[dict[str, Any]]:
        return [e.stats() for e in self._engines.values()]
