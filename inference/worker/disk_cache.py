"""The prompt cache's disk tier: KV caches of token prefixes under `<data dir>/kv/`.

Every entry the memory tier (`prompt_cache.PromptCache`) stores is written through to a
safetensors file, in the layout of mlx-lm's `save_prompt_cache` and read back with its
`load_prompt_cache`. So a prefix survives its eviction from memory, a worker restart and a
`kill -9`:

- `kv/<model>/<prefix>.safetensors`: `<model>` is a fingerprint of the weights (names, sizes
  and mtimes of `*.safetensors` and `config.json`, plus the dtype the worker computes in), so
  a changed model's entries are never looked at; `<prefix>` is a hash of the tokens, which
  the file's metadata holds in full, with the model fingerprint and a CRC-32 of the data.
- Writes happen on a background thread, from a copy of the bytes taken on the scheduler thread
  (MLX arrays stay on the thread that computes with them): a temporary file, fsync, rename,
  fsync of the folder. A file is either whole or absent; a `*.tmp` left by a kill is removed.
- The index is rebuilt at start from the folder; a file whose header, size or CRC is wrong
  is removed when met, never loaded. Least recently used entries (the files' mtimes, touched
  on every hit) go first when the byte budget (`MLXM_DISK_CACHE_BYTES`) is exceeded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import queue
import struct
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten
from mlx_lm.models.cache import load_prompt_cache

log = logging.getLogger(__name__)

KV_DIR = "kv"  # under the data dir
DEFAULT_BYTES = 4 * 1024**3
# Shorter prefixes are cheaper to prefill again than to write and read back.
MIN_TOKENS = 128
SUFFIX = ".safetensors"
# Snapshots waiting for the writer, at most: beyond it a new entry is not written.
MAX_PENDING_BYTES = 1024**3

_DTYPES = {
    mx.float32: "F32",
    mx.float16: "F16",
    mx.bfloat16: "BF16",
    mx.int8: "I8",
    mx.int16: "I16",
    mx.int32: "I32",
    mx.int64: "I64",
    mx.uint8: "U8",
    mx.uint16: "U16",
    mx.uint32: "U32",
    mx.uint64: "U64",
    mx.bool_: "BOOL",
}


def budget_from_env() -> int:
    """MLXM_DISK_CACHE_BYTES: the disk tier's byte budget (0 turns it off)."""
    raw = os.environ.get("MLXM_DISK_CACHE_BYTES", "").strip()
    if not raw:
        return DEFAULT_BYTES
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"MLXM_DISK_CACHE_BYTES must be a whole number of bytes, not {raw!r}") from None
    if value < 0:
        raise ValueError(f"MLXM_DISK_CACHE_BYTES must be 0 (off) or more, not {value}")
    return value


def model_fingerprint(path: str, variant: str = "") -> str:
    """A cheap identity of a model's weights: its folder's `*.safetensors` and `config.json`
    (names, sizes, mtimes), and `variant` (how the worker converts them, e.g. to float32)."""
    h = hashlib.sha256(variant.encode() + b"\0")
    folder = Path(path)
    files = sorted(folder.glob("*.safetensors")) + [folder / "config.json"] if folder.is_dir() else []
    if not files:
        h.update(b"path\0" + str(path).encode())
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        h.update(f"{f.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


def _key(tokens: Any) -> str:
    return hashlib.sha256(np.asarray(tokens, dtype=np.int64).tobytes()).hexdigest()[:40]


@dataclass
class _Entry:
    path: Path
    model: str
    key: str
    size: int
    atime: float
    tokens: np.ndarray | None = None  # read from the header when its model is first used


@dataclass
class _Snapshot:
    """A cache's arrays and the safetensors metadata `save_prompt_cache` would write: taken on
    the scheduler thread, written on the writer's.

    Each array is a private, contiguous, evaluated copy made by MLX on the scheduler thread (a
    few ms for 100 MB; copying the bytes out in Python costs ~100x that in fresh pages), shared
    as a memoryview: the writer only reads the bytes and calls nothing in MLX. The arrays go back
    to the scheduler thread to be freed (`DiskCache._release`)."""

    model: str
    key: str
    tokens: list[int]
    arrays: list[tuple[str, str, list[int], memoryview]]  # name, safetensors dtype, shape, data
    metadata: dict[str, str]
    trimmable: bool
    owners: list[mx.array]

    @property
    def nbytes(self) -> int:
        return sum(m.nbytes for *_, m in self.arrays)


def snapshot(model: str, tokens: list[int], cache: list[Any]) -> _Snapshot:
    """`save_prompt_cache`'s flattening of `cache`, each array copied (see `_Snapshot`)."""
    scalars: list[Any] = [""]  # as mlx-lm: must be non-empty, else tree_flatten drops it
    named: list[tuple[str, mx.array]] = []
    flat: list[tuple[str, Any]] = tree_flatten([c.state for c in cache])  # type: ignore[assignment]
    for name, data in flat:
        if isinstance(data, mx.array):
            named.append((name, data))
        elif isinstance(data, bool | int | float):
            scalars.append((name, "scalar"))
            named.append((name, mx.array(data)))
        elif isinstance(data, str):
            scalars.append((name, "string"))
            named.append((name, mx.array([ord(ch) for ch in data])))
        elif data is None:
            scalars.append((name, "none"))
            named.append((name, mx.array([])))
        else:
            raise ValueError(f"prompt cache state is not serializable: {type(data).__name__}")
    for _, a in named:
        if a.dtype not in _DTYPES:
            raise ValueError(f"prompt cache dtype {a.dtype} has no safetensors name")
    # A strided slice (a KVCache's state) is gathered into row-major order by the copy.
    owners = [mx.contiguous(a) for _, a in named]
    mx.eval(owners)
    arrays = [
        (name, _DTYPES[a.dtype], list(a.shape), memoryview(cast(Any, c)))
        for (name, a), c in zip(named, owners, strict=True)
    ]
    classes = [type(c).__name__ for c in cache]
    metadata = {"model": model, "tokens": ",".join(map(str, tokens))}
    meta = dict(tree_flatten([metadata, classes, scalars]))
    trimmable = all(c.is_trimmable() for c in cache)
    return _Snapshot(
        model, _key(tokens), list(tokens), arrays, {k: str(v) for k, v in meta.items()}, trimmable, owners
    )


def _write_file(path: Path, snap: _Snapshot) -> int:
    """Write `snap` as safetensors at `path` atomically; returns its size."""
    header: dict[str, Any] = {}
    crc, offset = 0, 0
    for name, dtype, shape, data in snap.arrays:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + data.nbytes]}
        offset += data.nbytes
        crc = zlib.crc32(data, crc)
    header["__metadata__"] = {**snap.metadata, "0.crc32": str(crc)}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            for *_, data in snap.arrays:
                f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return 8 + len(blob) + offset


def _read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The safetensors header of `path` and the size its tensors say the file has."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError("shorter than a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > 1 << 28:
            raise ValueError("header length out of range")
        header = json.loads(f.read(n))
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    return header, 8 + n + end


def _check_crc(path: Path, header: dict[str, Any]) -> None:
    expected = int(header["__metadata__"]["0.crc32"])
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        crc = 0
        while chunk := f.read(1 << 24):
            crc = zlib.crc32(chunk, crc)
    if crc != expected:
        raise ValueError("CRC mismatch")


class DiskCache:
    """The folder's index, shared by every model of a worker (one byte budget), and the
    writer thread. Thread-safe: the scheduler thread looks up and loads, the writer adds."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}  # (model, key) -> entry
        self._parsed: set[str] = set()  # models whose headers were read
        self._pending: dict[tuple[str, str], int] = {}  # snapshots queued: (model, key) -> bytes
        self._queue: queue.Queue[_Snapshot | None] = queue.Queue()
        self._written: list[_Snapshot] = []  # done: their arrays freed on the scheduler thread
        self.skipped_corrupt = 0
        self._scan()
        with self._lock:
            self._evict_locked()
        self._writer = threading.Thread(target=self._write_loop, name="kv-disk-writer", daemon=True)
        self._writer.start()

    # ---- index -------------------------------------------------------------------

    def _scan(self) -> None:
        """The index from the folder: sizes and access times (tokens are read per model, when
        first looked up). What can't be read is left out, never fatal."""
        for folder in self.root.iterdir():
            try:
                if not folder.is_dir():
                    continue
                files = list(folder.iterdir())
            except OSError as exc:
                log.warning("prompt cache: skipping %s: %s", folder, exc)
                continue
            for f in files:
                try:
                    if f.name.endswith(".tmp"):  # a write a kill interrupted
                        f.unlink(missing_ok=True)
                    elif f.name.endswith(SUFFIX):
                        st = f.stat()
                        key = f.name[: -len(SUFFIX)]
                        self._entries[(folder.name, key)] = _Entry(
                            f, folder.name, key, st.st_size, st.st_mtime
                        )
                except OSError as exc:
                    log.warning("prompt cache: skipping %s: %s", f, exc)

    def _parse_model(self, model: str) -> None:
        """Read the headers of `model`'s entries (once): their tokens; bad files removed."""
        with self._lock:
            if model in self._parsed:
                return
            self._parsed.add(model)
            todo = [e for e in self._entries.values() if e.model == model and e.tokens is None]
        for e in todo:
            try:
                header, size = _read_header(e.path)
                meta = header["__metadata__"]
                tokens = np.array([int(t) for t in meta["0.tokens"].split(",")], dtype=np.int64)
                if meta["0.model"] != model or size != e.size or _key(tokens) != e.key:
                    raise ValueError("header does not match the file")
                int(meta["0.crc32"])
            except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
                self._drop(e, f"unreadable ({exc})")
                continue
            e.tokens = tokens

    def _drop(self, e: _Entry, why: str) -> None:
        log.warning("prompt cache: removing %s: %s", e.path, why)
        self.skipped_corrupt += 1
        with self._lock:
            self._entries.pop((e.model, e.key), None)
        e.path.unlink(missing_ok=True)

    def _evict_locked(self) -> None:
        total = sum(e.size for e in self._entries.values())
        while total > self.max_bytes and self._entries:
            oldest = min(self._entries.values(), key=lambda e: e.atime)
            del self._entries[(oldest.model, oldest.key)]
            oldest.path.unlink(missing_ok=True)
            total -= oldest.size

    def stats(self, model: str | None = None) -> tuple[int, int]:
        """Entries and bytes on disk (of `model`, or all)."""
        with self._lock:
            entries = [e for e in self._entries.values() if model is None or e.model == model]
        return len(entries), sum(e.size for e in entries)

    # ---- lookups (scheduler thread) ------------------------------------------------

    def contains(self, model: str, tokens: list[int]) -> bool:
        key = (model, _key(tokens))
        with self._lock:
            e = self._entries.get(key)
            if e is not None:
                e.atime = time.time()
            pending = key in self._pending
        if e is not None:
            _touch(e.path)
        return e is not None or pending

    def nearest(self, model: str, tokens: list[int], better_than: int) -> tuple[_Entry, int] | None:
        """The entry sharing the longest usable prefix with `tokens`, if longer than
        `better_than`, and that length: an entry that is a prefix of `tokens` serves all of
        it; one that departs from them serves the common part, at most all but the last."""
        self._release()
        self._parse_model(model)
        with self._lock:
            candidates = [e for e in self._entries.values() if e.model == model and e.tokens is not None]
        if not candidates or not tokens:
            return None
        prompt = np.asarray(tokens, dtype=np.int64)
        best: tuple[_Entry, int] | None = None
        floor = max(better_than, MIN_TOKENS - 1)  # a short common prefix: not worth a read
        for e in candidates:
            assert e.tokens is not None
            n = min(len(e.tokens), len(prompt))
            if n <= floor:
                continue
            same = e.tokens[:n] == prompt[:n]
            common = n if bool(same.all()) else int(np.argmin(same))
            usable = common if common == len(e.tokens) else min(common, len(prompt) - 1)
            if usable > floor:
                best, floor = (e, usable), usable
        return best

    def load(self, e: _Entry) -> list[Any] | None:
        """`e`'s cache (`load_prompt_cache`), or None when its file is gone or bad (removed)."""
        try:
            header, size = _read_header(e.path)
            if size != e.path.stat().st_size:
                raise ValueError(f"{e.path.stat().st_size} bytes where the header says {size}")
            _check_crc(e.path, header)
            cache, meta = load_prompt_cache(str(e.path), return_metadata=True)
            if meta.get("model") != e.model or _key([int(t) for t in meta["tokens"].split(",")]) != e.key:
                raise ValueError("metadata does not match the file's name")
        except FileNotFoundError:
            with self._lock:
                self._entries.pop((e.model, e.key), None)
            return None
        except Exception as exc:  # noqa: BLE001 - any bad file is skipped, never fatal
            self._drop(e, f"corrupt ({exc})")
            return None
        with self._lock:
            e.atime = time.time()
        _touch(e.path)
        return list(cache)

    # ---- writes ------------------------------------------------------------------

    def save(self, model: str, tokens: list[int], cache: list[Any]) -> None:
        """Write `tokens`' cache unless it is on disk already (or too short, or too big)."""
        self._release()
        if len(tokens) < MIN_TOKENS or self.contains(model, tokens):
            return
        nbytes = sum(int(getattr(c, "nbytes", 0)) for c in cache)
        with self._lock:
            if nbytes > self.max_bytes or sum(self._pending.values()) + nbytes > MAX_PENDING_BYTES:
                return
        try:
            snap = snapshot(model, tokens, cache)
        except ValueError as exc:
            log.info("prompt cache: not written to disk: %s", exc)
            return
        with self._lock:
            self._pending[(model, snap.key)] = snap.nbytes
        self._queue.put(snap)

    def flush(self, timeout: float = 60.0) -> bool:
        """Wait until every queued write is done (tests, benchmarks); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                if not self._pending:
                    return True
            time.sleep(0.01)
        return False

    def _write_loop(self) -> None:
        while (snap := self._queue.get()) is not None:
            try:
                self._write(snap)
            except Exception:  # noqa: BLE001 - a full disk must not stop the worker
                log.exception("prompt cache: writing an entry to disk failed")
            finally:
                with self._lock:
                    self._pending.pop((snap.model, snap.key), None)
                    self._written.append(snap)
                del snap

    def held_bytes(self) -> int:
        """Bytes of snapshots still held in memory: queued for writing (their copies count under
        the worker's memory limit until written). Frees the written ones first, so it is called
        on the scheduler thread only."""
        self._release()
        with self._lock:
            return sum(self._pending.values())

    def _release(self) -> None:
        """Free the written snapshots' MLX arrays here, on the scheduler thread."""
        with self._lock:
            done, self._written = self._written, []
        for snap in done:
            for *_, view in snap.arrays:
                view.release()
            snap.arrays.clear()
            snap.owners.clear()

    def _write(self, snap: _Snapshot) -> None:
        folder = self.root / snap.model
        folder.mkdir(mode=0o700, exist_ok=True)
        path = folder / (snap.key + SUFFIX)
        size = _write_file(path, snap)
        tokens = np.asarray(snap.tokens, dtype=np.int64)
        entry = _Entry(path, snap.model, snap.key, size, time.time(), tokens)
        with self._lock:
            self._entries[(snap.model, snap.key)] = entry
            if snap.trimmable:
                # A trimmable cache serves all its prefixes: shorter entries are redundant.
                for other in [e for e in self._entries.values() if e.model == snap.model and e is not entry]:
                    t = other.tokens
                    if t is not None and len(t) < len(tokens) and bool((tokens[: len(t)] == t).all()):
                        del self._entries[(other.model, other.key)]
                        other.path.unlink(missing_ok=True)
            self._evict_locked()

    def close(self) -> None:
        self._queue.put(None)
        self._writer.join(timeout=5)


def _touch(path: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(path)


class ModelDisk:
    """One model's view of the disk tier (what `PromptCache` holds)."""

    def __init__(self, store: DiskCache, model: str) -> None:
        self.store = store
        self.model = model

    def nearest(self, tokens: list[int], better_than: int) -> tuple[Any, int] | None:
        return self.store.nearest(self.model, tokens, better_than)

    def load(self, entry: Any) -> tuple[list[Any], list[int]] | None:
        cache = self.store.load(entry)
        return None if cache is None else (cache, [int(t) for t in entry.tokens])

    def save(self, tokens: list[int], cache: list[Any]) -> None:
        self.store.save(self.model, tokens, cache)

    def stats(self) -> tuple[int, int]:
        return self.store.stats(self.model)


_shared: DiskCache | None = None
_shared_lock = threading.Lock()


def held_bytes() -> int:
    """The worker's disk tier: bytes of snapshots in memory until written (scheduler thread)."""
    return 0 if _shared is None else _shared.held_bytes()


def configure(root: Path | None, max_bytes: int) -> DiskCache | None:
    """Set up the worker's disk tier (its entry point does, at start); None or 0: off."""
    global _shared
    with _shared_lock:
        if _shared is not None:
            _shared.close()
        _shared = None
        if root is not None and max_bytes > 0:
            try:
                _shared = DiskCache(root, max_bytes)
            except OSError as exc:  # e.g. a read-only data dir: the worker runs without it
                log.warning("prompt cache: no disk tier at %s: %s", root, exc)
        return _shared


def shared() -> DiskCache | None:
    return _shared


def for_model(path: str, variant: str = "") -> ModelDisk | None:
    """The configured disk tier's view for the model at `path`, or None when it is off."""
    store = _shared
    return None if store is None else ModelDisk(store, model_fingerprint(path, variant))
