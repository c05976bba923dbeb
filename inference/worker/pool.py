"""The model pool: loads models on demand, keeps them resident, evicts idle ones LRU."""

from __future__ import annotations

import gc
import logging
import time
from collections import OrderedDict
from typing import Any

from inference import protocol as p

log = logging.getLogger(__name__)


class ModelLoadError(Exception):
    pass


class Pool:
    """Engines keyed by model path. Only the scheduler thread touches it."""

    def __init__(self, *, max_models: int = 4) -> None:
        self.max_models = max_models
        self._engines: OrderedDict[tuple[Any, ...], Any] = OrderedDict()

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self._engines.values()))

    def __len__(self) -> int:
        return len(self._engines)

    def get(self, spec: p.ModelSpec) -> Any:
        engine = self._engines.get(spec.key)
        if engine is not None:
            self._engines.move_to_end(spec.key)
            return engine
        self._make_room()
        log.info("loading %s from %s", spec.name, spec.path)
        t0 = time.perf_counter()
        try:
            engine = self._load(spec)
        except Exception as exc:
            raise ModelLoadError(f"could not load model '{spec.name}': {exc}") from exc
        log.info("loaded %s in %.2fs", spec.name, time.perf_counter() - t0)
        self._engines[spec.key] = engine
        return engine

    def _load(self, spec: p.ModelSpec) -> Any:
        if spec.kind != "llm":
            raise ModelLoadError(f"model kind '{spec.kind}' is not supported yet")
        from inference.worker.adapters.llm import LLMEngine

        return LLMEngine(spec)

    def _make_room(self) -> None:
        while len(self._engines) >= self.max_models:
            idle = [path for path, e in self._engines.items() if e.active == 0]
            if not idle:
                return  # everything busy: exceed the count rather than cut a stream
            self.unload(idle[0])

    def unload(self, key: tuple[Any, ...]) -> None:
        engine = self._engines.pop(key, None)
        if engine is not None:
            engine.close()
            del engine
            gc.collect()

    def stats(self) -> list[dict[str, Any]]:
        return [e.stats() for e in self._engines.values()]
