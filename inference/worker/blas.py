"""Give MLX's Linux CPU backend an optimised BLAS.

The `mlx[cpu]` wheel links the reference BLAS (a few GFLOP/s). `scipy-openblas32` ships
OpenBLAS, but with every symbol prefixed `scipy_`. MLX only imports three GEMMs, so we
compile a tiny forwarding shim (once, cached in the data dir) and load it RTLD_GLOBAL
before MLX: the dynamic linker then resolves MLX's `cblas_*gemm` to OpenBLAS.
Opt out with MLXM_BLAS=reference. Must run before the first `import mlx`.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

_SHIM_BODY = """
#include <stddef.h>
extern void scipy_cblas_sgemm(int, int, int, int, int, int, float, const float*, int,
                              const float*, int, float, float*, int);
extern void scipy_cblas_dgemm(int, int, int, int, int, int, double, const double*, int,
                              const double*, int, double, double*, int);
extern void scipy_cblas_cgemm(int, int, int, int, int, int, const void*, const void*, int,
                              const void*, int, const void*, void*, int);
void cblas_sgemm(int o, int ta, int tb, int m, int n, int k, float alpha, const float* a,
                 int lda, const float* b, int ldb, float beta, float* c, int ldc) {
  scipy_cblas_sgemm(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void cblas_dgemm(int o, int ta, int tb, int m, int n, int k, double alpha, const double* a,
                 int lda, const double* b, int ldb, double beta, double* c, int ldc) {
  scipy_cblas_dgemm(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void cblas_cgemm(int o, int ta, int tb, int m, int n, int k, const void* alpha, const void* a,
                 int lda, const void* b, int ldb, const void* beta, void* c, int ldc) {
  scipy_cblas_cgemm(o, ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
"""

_state: dict[str, str] = {"blas": "reference"}


def active_blas() -> str:
    """What `preload_blas` achieved: 'openblas', 'reference' or 'native' (macOS)."""
    return _state["blas"]


def _cache_dir() -> Path:
    from inference import env as config

    path = config.data_dir() / "cache"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _build_shim(openblas_dir: Path) -> Path | None:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        log.warning("no C compiler: MLX keeps the reference BLAS (slow on CPU)")
        return None
    tag = hashlib.sha256((_SHIM_BODY + str(openblas_dir)).encode()).hexdigest()[:12]
    target = _cache_dir() / f"mlxm-blas-shim-{tag}.so"
    if target.exists():
        return target
    src = target.with_suffix(".c")
    src.write_text(_SHIM_BODY)
    tmp = target.with_suffix(f".{os.getpid()}.tmp")
    cmd = [
        cc, "-O2", "-shared", "-fPIC", str(src), "-o", str(tmp),
        f"-L{openblas_dir}", "-lscipy_openblas", f"-Wl,-rpath,{openblas_dir}",
    ]  # fmt: skip
    try:
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        log.warning("could not build the BLAS shim (%s): MLX keeps the reference BLAS", exc)
        return None
    os.replace(tmp, target)
    return target


def preload_blas() -> str:
    if sys.platform == "darwin":
        _state["blas"] = "native"  # Accelerate
        return _state["blas"]
    if os.environ.get("MLXM_BLAS", "openblas").lower() == "reference":
        return _state["blas"]
    if "mlx.core" in sys.modules:
        log.warning("MLX already imported: BLAS preload skipped")
        return _state["blas"]
    try:
        import scipy_openblas32
    except ImportError:
        log.warning("scipy-openblas32 not installed: MLX keeps the reference BLAS")
        return _state["blas"]
    lib_dir = Path(scipy_openblas32.get_lib_dir())
    # OpenBLAS threads spin while waiting: leave a core to the web process and clients,
    # or a busy machine slows decoding several-fold (measured: 2 threads on 2 busy cores).
    os.environ.setdefault("OPENBLAS_NUM_THREADS", str(max(1, (os.cpu_count() or 1) - 1)))
    ctypes.CDLL(str(lib_dir / "libscipy_openblas.so"), mode=ctypes.RTLD_GLOBAL)
    shim = _build_shim(lib_dir)
    if shim is not None:
        ctypes.CDLL(str(shim), mode=ctypes.RTLD_GLOBAL)
        _state["blas"] = "openblas"
    return _state["blas"]
