"""What this worker runs on, for debug reports (`about` in its health reply): Python, MLX and
its backend (metal, cuda or cpu), the device, and the versions of the packages it loads.
Worked out once: none of it changes while the process runs."""

from __future__ import annotations

import contextlib
import functools
import platform
from importlib import metadata
from typing import Any

PACKAGES = (
    "mlx", "mlx-metal", "mlx-cuda", "mlx-cpu", "mlx-lm", "mlx-vlm", "mlx-audio", "mlx-embeddings",
    "transformers", "tokenizers", "huggingface-hub", "numpy", "msgspec",
)  # fmt: skip


def version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _backend(mx: Any) -> str:
    with contextlib.suppress(Exception):
        if mx.metal.is_available():
            return "metal"
    with contextlib.suppress(Exception):
        if mx.cuda.is_available():
            return "cuda"
    return "cpu"


@functools.cache
def about() -> dict[str, Any]:
    import mlx.core as mx

    device: dict[str, Any] = {}
    info = getattr(mx, "device_info", None) or mx.metal.device_info
    with contextlib.suppress(Exception):
        device = {str(k): v if isinstance(v, int | float | str | bool) else str(v) for k, v in info().items()}
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "mlx": getattr(mx, "__version__", None) or version("mlx"),
        "backend": _backend(mx),
        "default_device": str(mx.default_device()),
        "device": device,
        "packages": {name: version(name) for name in PACKAGES},
    }
