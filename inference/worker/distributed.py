"""One worker over an MLX distributed group (`mlx.launch`): models too big for one machine.

Every rank loads each model tensor-sharded (mlx-lm's `sharded_load`) and runs the same
scheduler; the sharded layers' all-reduces need every rank to compute the same forward passes
in the same order. Rank 0 is the worker the gateway talks to; the others are followers. The
scheduler is a deterministic state machine fed by its inbox, so rank 0 replicates it: each
round it broadcasts the messages it is about to handle (and whether it is draining or
stopping), every rank handles exactly those, then every rank steps. Followers emit nothing.

Costs two small all-reduces per scheduler round. Keep-alive expiry (a clock decision) is off
in a group; memory-pressure eviction is identical on every rank (same loads in the same order).
"""

from __future__ import annotations

import logging
from typing import Any, cast

import msgspec

from inference import protocol as p

log = logging.getLogger(__name__)

_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(list[tuple[int, str, bytes]])
_MSG = msgspec.msgpack.Decoder(p.ToWorker)


class Follower:
    """A stand-in for a web connection on a follower rank (its outputs go nowhere)."""

    def __init__(self, conn_id: int) -> None:
        self.conn_id = conn_id


class Replicator:
    """Broadcast rank 0's scheduler inbox to every rank of `group`, round by round."""

    def __init__(self, group: Any) -> None:
        self.group = group
        self.rank = group.rank()
        self.size = group.size()
        self._ids: dict[int, int] = {}  # id(conn) -> conn id (rank 0)
        self._followers: dict[int, Follower] = {}  # conn id -> stand-in (followers)
        self._next = 1

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def _conn_id(self, conn: Any) -> int:
        if conn is None:
            return 0
        key = id(conn)
        if key not in self._ids:
            self._ids[key] = self._next
            self._next += 1
        return self._ids[key]

    def _conn(self, conn_id: int) -> Any:
        if conn_id == 0:
            return None
        return self._followers.setdefault(conn_id, Follower(conn_id))

    def _all_sum(self, values: list[int]) -> list[int]:
        import mlx.core as mx
        from mlx_lm.generate import generation_stream

        # On mlx-lm's generation stream: the sharded layers' own all-reduces run there
        # (asynchronously); on another stream the two would interleave on the wire.
        out = mx.distributed.all_sum(
            mx.array(values, dtype=mx.int32), group=self.group, stream=generation_stream
        )
        mx.eval(out)
        return [int(v) for v in cast(list[int], out.tolist())]

    def sync(
        self, items: list[tuple[Any, Any]], *, draining: bool, stopping: bool
    ) -> tuple[list[tuple[Any, Any]], bool, bool]:
        """Rank 0 passes the round's inbox items and flags; every rank gets rank 0's back."""
        from inference.worker.scheduler import _AbortAll, _ConnectionClosed

        payload = b""
        if self.leader:
            wire: list[tuple[int, str, bytes]] = []
            for conn, msg in items:
                if isinstance(msg, _ConnectionClosed):
                    wire.append((self._conn_id(msg.conn), "closed", b""))
                elif isinstance(msg, _AbortAll):
                    wire.append((0, "abort_all", msg.message.encode()))
                elif msg is not None:
                    wire.append((self._conn_id(conn), "msg", _ENCODER.encode(msg)))
            payload = _ENCODER.encode(wire)
        mine = [len(payload), int(draining), int(stopping)] if self.leader else [0, 0, 0]
        size, draining_i, stopping_i = self._all_sum(mine)
        if size:
            body = self._all_sum(list(payload) if self.leader else [0] * size)
            payload = bytes(body)
        if self.leader:
            return items, bool(draining_i), bool(stopping_i)
        received: list[tuple[Any, Any]] = []
        for conn_id, kind, data in _DECODER.decode(payload) if size else []:
            if kind == "closed":
                conn = self._conn(conn_id)
                received.append((conn, _ConnectionClosed(conn)))
            elif kind == "abort_all":
                received.append((None, _AbortAll(data.decode())))
            else:
                received.append((self._conn(conn_id), _MSG.decode(data)))
        return received, bool(draining_i), bool(stopping_i)


def init_group() -> Any | None:
    """The distributed group when started by `mlx.launch` with more than one rank, else None."""
    import mlx.core as mx

    if not mx.distributed.is_available():
        return None
    group = mx.distributed.init()
    return group if group.size() > 1 else None
