"""Run the inference worker: `python -m inference.worker --socket PATH`.

The process imports no Django and no ORM; everything it needs comes in each request.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os

from mlxmanager import config


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="inference_worker")
    parser.add_argument("--socket", default=None, help="Unix socket path to listen on")
    parser.add_argument(
        "--preload",
        default=None,
        help="JSON list of model specs to load at start (serve passes the profiles)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=os.environ.get("MLXM_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s worker: %(message)s",
    )
    from inference.worker.blas import preload_blas

    preload_blas()
    import msgspec

    from inference.protocol import ModelSpec
    from inference.worker.server import WorkerServer

    preload = msgspec.json.decode(args.preload, type=list[ModelSpec]) if args.preload else []
    asyncio.run(WorkerServer(args.socket or config.worker_socket(), preload=preload).run())


if __name__ == "__main__":
    main()
