"""Run the inference worker: `python -m inference.worker --socket PATH [--listen HOST:PORT]`.

The process imports no Django and no ORM; everything it needs comes in each request.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys

from inference import env as config
from inference import logsetup

WORKER_LOG = "worker"  # <data dir>/logs/worker.log


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="inference_worker")
    parser.add_argument("--socket", default=None, help="Unix socket path to listen on")
    parser.add_argument(
        "--preload",
        default=None,
        help="JSON list of model specs to load at start (serve passes the profiles)",
    )
    parser.add_argument(
        "--listen",
        default=None,
        metavar="HOST:PORT",
        help="also serve web processes on other machines over TCP (needs MLXM_WORKER_SECRET)",
    )
    parser.add_argument(
        "--secret-file", default=None, help="file holding the shared secret (else MLXM_WORKER_SECRET)"
    )
    parser.add_argument("--tls-cert", default=None, help="certificate (PEM) for TLS on --listen")
    parser.add_argument("--tls-key", default=None, help="its private key (PEM)")
    args = parser.parse_args(argv)
    listen = parse_listen(parser, args.listen) if args.listen else None
    secret = read_secret(parser, args.secret_file) if listen else None
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key and listen):
            parser.error("--tls-cert and --tls-key go together, with --listen")
        import ssl

        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    # The console and <data dir>/logs/worker.log, in the format every process uses.
    base = config.data_dir()
    logsetup.configure(WORKER_LOG, base)
    from inference.worker.blas import preload_blas

    preload_blas()
    import msgspec

    from inference.protocol import ModelSpec
    from inference.worker.distributed import init_group
    from inference.worker.server import WorkerServer

    preload = msgspec.json.decode(args.preload, type=list[ModelSpec]) if args.preload else []
    replicator = None
    group = init_group()
    from inference.worker import disk_cache

    try:
        disk_budget = disk_cache.budget_from_env()
    except ValueError as exc:
        parser.error(str(exc))
    if group is None:  # a distributed worker's ranks each hold a shard of the KV: no disk tier
        # The prompt cache's disk tier: <data dir>/kv/, scanned now (bad files removed).
        disk_cache.configure(base / disk_cache.KV_DIR, disk_budget)
    if group is not None:
        # Started by `mlx.launch`: every rank loads models sharded over the group; rank 0
        # serves, the others follow its scheduler (inference/worker/distributed.py).
        from inference.worker.adapters.llm import use_group
        from inference.worker.distributed import Replicator

        use_group(group)
        replicator = Replicator(group)
        if group.rank() != 0:  # ranks on one machine share its data dir: a file each
            logsetup.configure(f"{WORKER_LOG}-{group.rank()}", base)
        logging.getLogger(__name__).info("distributed worker: rank %d of %d", group.rank(), group.size())
        if group.rank() != 0:
            from inference.worker.scheduler import Scheduler

            Scheduler(lambda conn, items: None, preload=preload, replicator=replicator).run()
            return
    server = WorkerServer(
        args.socket or config.worker_socket(),
        preload=preload,
        listen=listen,
        secret=secret,
        tls=tls,
        replicator=replicator,
    )
    asyncio.run(server.run())
    store = disk_cache.shared()
    if store is not None:  # a clean stop: the prompt-cache entries still queued reach the disk
        store.flush(timeout=10)


def parse_listen(parser: argparse.ArgumentParser, value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        parser.error(f"--listen wants HOST:PORT, not {value!r}")
    return host.strip("[]"), int(port)


def read_secret(parser: argparse.ArgumentParser, path: str | None) -> bytes:
    raw = open(path, "rb").read().strip() if path else os.environ.get("MLXM_WORKER_SECRET", "").encode()  # noqa: SIM115
    if len(raw) < 16:
        parser.error(
            "--listen needs a shared secret of at least 16 characters (MLXM_WORKER_SECRET or --secret-file)"
        )
    return raw


if __name__ == "__main__":
    main()
    # A clean stop, everything written. Leave without the interpreter's teardown: MLX's own
    # threads are still joinable when its statics are destroyed, and that aborts the process
    # ("terminate called without an active exception", SIGABRT) after a drained shutdown.
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
