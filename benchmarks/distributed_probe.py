"""Check that a model can be served by an MLX distributed group on this machine.

Run under `mlx.launch` (every rank runs this file): the model is loaded tensor-sharded over
the group with mlx-lm's own `sharded_load`, greedy-decoded, and rank 0 compares the tokens
with a single-process run of the same model. Prints one line per rank and exits non-zero on
a mismatch.

    .venv/bin/mlx.launch --backend ring -n 2 --hosts 127.0.0.1 --starting-port 47311 \\
        --python .venv/bin/python -- benchmarks/distributed_probe.py MODEL_DIR
"""

from __future__ import annotations

import sys

import mlx.core as mx
from mlx_lm import generate, load
from mlx_lm.utils import sharded_load

PROMPT = "The distributed group says"


def main(model_dir: str, max_tokens: int = 24) -> int:
    group = mx.distributed.init(strict=True)
    model, tokenizer = sharded_load(model_dir, tensor_group=group)
    sharded = generate(model, tokenizer, PROMPT, max_tokens=max_tokens)
    print(f"rank {group.rank()}/{group.size()}: {sharded!r}", flush=True)
    if group.rank() != 0:
        return 0
    single_model, single_tokenizer = load(model_dir)
    single = generate(single_model, single_tokenizer, PROMPT, max_tokens=max_tokens)
    same = single == sharded
    print(f"single process: {single!r}\nsame text: {same}", flush=True)
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
