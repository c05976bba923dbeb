"""The model pool: loads on demand, keeps models resident within one memory limit.

The limit (`MLXM_MEMORY_LIMIT`, inference/worker/memory.py) covers the loaded weights, the
live requests' KV caches, the prompt caches and, in the worker, the process's own memory outside
MLX (Python, libraries, tokenizers: `runtime_bytes`, measured) together (`used_bytes`); what a
prefill step takes for a moment is kept within what is left by the engine's prefill chunks
(`LLMEngine._prefill_step`). Admission control:
before a load, idle unpinned models are evicted least-recently-used first until the new
model's size (as it will be loaded: dequantized or cast to float32 on the CPU) fits; if it
still doesn't fit (everything left is busy or pinned), the load is refused with `PoolFull`
(the gateway answers 503), never an out-of-memory crash. Before a request's prefill its KV
need is checked by `make_kv_room`, which gives back prompt-cache entries least recently used
first. Idle models past their keep-alive are unloaded by `expire`.
"""

from __future__ import annotations

import gc
import logging
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from inference import protocol as p
from inference.worker import disk_cache, memory

log = logging.getLogger(__name__)


# While requests run, the process's memory outside MLX is read at most this often.
RUNTIME_EVERY_S = 0.05
# When room is short, the heap's free pages are given back at most this often.
RECLAIM_EVERY_S = 0.5


class ModelLoadError(Exception):
    pass


class PoolFull(Exception):
    pass


def default_memory_limit() -> int:
    """MLXM_MEMORY_LIMIT (or MLXM_MEMORY_LIMIT_BYTES), else 75% of physical memory."""
    return memory.memory_limit_from_env()


def _float32(spec: p.ModelSpec) -> bool:
    """Whether the engine casts `spec`'s half-precision weights to float32 (text models on
    the CPU, see adapters/llm.py)."""
    return spec.kind == "llm" and memory.use_float32()


def estimate_bytes(spec: p.ModelSpec, *, dequantize: bool = False) -> int:
    """What loading `spec` will take, from its weight files' headers: as loaded (float32 on
    the CPU), or dequantized to float32 when `dequantize`."""
    total = 0
    for path in filter(None, (spec.path, spec.draft_path)):
        sizes = memory.weight_sizes(path, float32=_float32(spec))
        total += sizes.float32_bytes if dequantize and sizes.bits else sizes.loaded_bytes
    return total


def is_quantized(spec: p.ModelSpec) -> bool:
    return memory.weight_sizes(spec.path, float32=False).bits is not None


def _prompt_cache_bytes(engine: Any) -> int:
    cache = getattr(engine, "prompt_cache", None)
    return int(cache.nbytes) if cache is not None else 0


class Pool:
    """Engines keyed by `ModelSpec.key`. Only the scheduler thread touches it."""

    def __init__(
        self, *, memory_limit: int | None = None, max_models: int = 16, count_runtime: bool = False
    ) -> None:
        self.memory_limit = memory_limit if memory_limit is not None else default_memory_limit()
        # The worker counts its own process's memory outside MLX (`measure_runtime`); a pool
        # inside another process (tests) has nothing of its own to count.
        self.count_runtime = count_runtime
        self.runtime_bytes = 0
        self._runtime_at = float("-inf")  # never read yet
        self._reclaimed_at = float("-inf")  # never yet
        self._headroom = (-1, 0)  # (the limit it was worked out for, bytes): read on every step
        # Each model's prompt-cache share, unless its profile sets one (ModelSpec.prompt_cache_bytes).
        self.prompt_cache_bytes = memory.prompt_cache_bytes_from_env(self.memory_limit)
        self.max_models = max_models
        self._engines: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
        self.evictions = 0

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._engines.values()))

    def __len__(self) -> int:
        return len(self._engines)

    @property
    def weight_bytes(self) -> int:
        return sum(e.weight_bytes for e in self._engines.values())

    @property
    def kv_bytes(self) -> int:
        """The live requests' KV caches (their reservations: prompt + max_tokens each)."""
        return sum(int(getattr(e, "kv_bytes", 0)) for e in self._engines.values())

    @property
    def prompt_cache_used(self) -> int:
        return sum(_prompt_cache_bytes(e) for e in self._engines.values())

    @property
    def disk_pending_bytes(self) -> int:
        """The disk tier's copies of prompt-cache entries until written (the worker's only)."""
        return disk_cache.held_bytes() if self.count_runtime else 0

    @property
    def headroom_bytes(self) -> int:
        """Kept free for what is not measured ahead (MLXM_MEMORY_HEADROOM; the worker's only)."""
        if not self.count_runtime:
            return 0
        if self._headroom[0] != self.memory_limit:  # the limit can change at run time (Configure)
            self._headroom = (self.memory_limit, memory.headroom_bytes(self.memory_limit))
        return self._headroom[1]

    @property
    def process_bytes(self) -> int:
        """The worker's own share: its runtime, the disk tier's pending copies, the headroom."""
        return self.runtime_bytes + self.disk_pending_bytes + self.headroom_bytes

    @property
    def used_bytes(self) -> int:
        return self.process_bytes + self.weight_bytes + self.kv_bytes + self.prompt_cache_used

    def measure_runtime(self, *, rising: bool = False) -> None:
        """Re-measure the process's memory outside MLX (`memory.runtime_bytes`): at start, after
        a load or an unload and while no request runs; after each step with `rising` (only a
        rise counts then: what a busy process holds stays held until it is idle again)."""
        if not self.count_runtime:
            return
        at = time.monotonic()
        if rising and at - self._runtime_at < RUNTIME_EVERY_S:
            return  # ~15 us a reading: not after every one of a small model's steps
        self._runtime_at = at
        now = memory.runtime_bytes()
        self.runtime_bytes = max(self.runtime_bytes, now) if rising else now

    @property
    def free_bytes(self) -> int:
        return max(0, self.memory_limit - self.used_bytes)

    @property
    def running(self) -> int:
        """Requests generating now in any engine (what will free KV room when they end)."""
        return sum(int(getattr(e, "running", e.active)) for e in self._engines.values())

    def reclaim(self) -> bool:
        """When room is short: give the heap's free pages back to the system (`memory.trim_heap`)
        and re-measure the runtime, at most every RECLAIM_EVERY_S. True when it ran."""
        if not self.count_runtime:
            return False
        now = time.monotonic()
        if now - self._reclaimed_at < RECLAIM_EVERY_S or not memory.trim_heap():
            return False
        self._reclaimed_at = self._runtime_at = now
        self.runtime_bytes = memory.runtime_bytes()
        return True

    def make_kv_room(self, engine: Any, need: int) -> bool:
        """Whether `need` more bytes of KV cache fit under the limit, after giving back the
        heap's free pages (`reclaim`), then prompt cache entries least recently used first:
        `engine`'s own, then the other models' (least recently used model first)."""
        if need <= self.memory_limit - self.used_bytes:
            return True
        if self.reclaim() and need <= self.memory_limit - self.used_bytes:
            return True
        others = sorted((e for e in self._engines.values() if e is not engine), key=lambda e: e.last_used)
        for e in [engine, *others]:
            cache = getattr(e, "prompt_cache", None)
            if cache is None or not cache.nbytes:
                continue
            short = need - (self.memory_limit - self.used_bytes)
            cache.trim_to(n_bytes=max(0, cache.nbytes - short))
            if need <= self.memory_limit - self.used_bytes:
                return True
        return False

    def memory_stats(self) -> dict[str, int]:
        weights, kv, cache = self.weight_bytes, self.kv_bytes, self.prompt_cache_used
        pending, headroom = self.disk_pending_bytes, self.headroom_bytes
        used = self.runtime_bytes + pending + headroom + weights + kv + cache
        return {
            "used_bytes": used,
            "limit_bytes": self.memory_limit,
            "runtime_bytes": self.runtime_bytes,
            "disk_pending_bytes": pending,
            "headroom_bytes": headroom,
            "weights_bytes": weights,
            "kv_bytes": kv,
            "prompt_cache_bytes": cache,
            "free_bytes": max(0, self.memory_limit - used),
            "evictions": self.evictions,
            **memory.mlx_memory(),
        }

    def find(self, spec: p.ModelSpec) -> Any | None:
        return self._engines.get(spec.key)

    def get(self, spec: p.ModelSpec) -> Any:
        engine = self._engines.get(spec.key)
        if engine is not None:
            self._engines.move_to_end(spec.key)
            engine.apply_policy(spec)
            self._size_prompt_cache(engine, spec)
            return engine
        if not Path(spec.path).is_dir():
            raise ModelLoadError(f"could not load model '{spec.name}': no model directory at {spec.path}")
        dequantize = self._dequantize(spec)
        self._make_room(spec, estimate_bytes(spec, dequantize=dequantize))
        log.info("loading %s from %s%s", spec.name, spec.path, " (dequantizing)" if dequantize else "")
        t0 = time.perf_counter()
        try:
            engine = self._load(spec, dequantize)
        except Exception as exc:
            raise ModelLoadError(f"could not load model '{spec.name}': {exc}") from exc
        log.info("loaded %s in %.2fs (%d MB)", spec.name, time.perf_counter() - t0, engine.weight_bytes >> 20)
        self._size_prompt_cache(engine, spec)
        self._engines[spec.key] = engine
        self.measure_runtime()  # its tokenizer and the like
        return engine

    def _dequantize(self, spec: p.ModelSpec) -> bool:
        """On the CPU, whether to dequantize a quantized text model at load (MLX's CPU quantized
        matmul is several times slower than float32's): when its float32 weights fit what is
        free under the limit, less a margin for its prompt cache and one full context of KV.
        MLXM_CPU_DEQUANTIZE=off never does, =on always does."""
        if not _float32(spec) or not is_quantized(spec):
            return False
        mode = memory.cpu_dequantize_mode()
        if mode != "auto":
            return mode == "on"
        config = memory.read_config(spec.path)
        context = spec.context_length or int(config.get("max_position_embeddings") or 0) or 4096
        margin = self.prompt_cache_share(spec) + memory.kv_bytes_per_token(config, 4) * min(context, 8192)
        return estimate_bytes(spec, dequantize=True) + margin <= self.memory_limit - self.used_bytes

    def prompt_cache_share(self, spec: p.ModelSpec) -> int:
        return spec.prompt_cache_bytes if spec.prompt_cache_bytes is not None else self.prompt_cache_bytes

    def _size_prompt_cache(self, engine: Any, spec: p.ModelSpec) -> None:
        """The engine's prompt cache takes its share: the profile's, else MLXM_PROMPT_CACHE_BYTES
        (the latest request's profile wins, like the other pool policies)."""
        cache = getattr(engine, "prompt_cache", None)
        share = self.prompt_cache_share(spec)
        if cache is not None and cache.max_bytes != share:
            cache.max_bytes = share
            cache.trim_to(n_bytes=share)

    def _load(self, spec: p.ModelSpec, dequantize: bool = False) -> Any:
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

        return LLMEngine(spec, dequantize=dequantize, pool=self)

    def _evictable(self) -> list[tuple[Any, ...]]:
        """Idle, unpinned engines, least recently used first."""
        idle = [(e.last_used, key) for key, e in self._engines.items() if e.active == 0 and not e.pinned]
        return [key for _, key in sorted(idle, key=lambda t: t[0])]

    def _make_room(self, spec: p.ModelSpec, need: int) -> None:
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
            self.make_kv_room(None, need)  # the prompt caches give back what they hold
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
        self.measure_runtime()
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
