"""`python -m mlxmanager.daphne_server ARGS`: daphne's command line, with the request limits.

daphne (Twisted) reads a request's whole body into a file before it hands the request to the
application, so `RequestLimits` (mlxmanager/request_limits.py) would only see a 200 MiB body
after it was spooled. Here the same checks run while Twisted reads:

- from the head alone (Twisted's `gotLength`): `/v1/` without any API key header, 401; a
  `Content-Length` over `MLXM_MAX_BODY_BYTES`, 413;
- while the body arrives: 413 as soon as the count passes the limit, 408 when the next piece
  takes longer than `MLXM_BODY_READ_TIMEOUT`;
- the head: at most `MLXM_MAX_HEADER_BYTES` (Twisted answers 400 past it); Twisted's idle
  timeout while a request arrives (default 60 s; off while the application answers, so streams
  are not cut) becomes `MLXM_HEADER_READ_TIMEOUT`, or a second more than
  `MLXM_BODY_READ_TIMEOUT` if that is longer (it runs during the body too, and just closes:
  the body's own timer must fire first to answer 408).

The answers are `request_limits.refusal()`'s, written on the connection, which is then closed.
Written against daphne 4.2 (`WebRequest`, `HTTPFactory`) and Twisted's `HTTPChannel`.
"""

from __future__ import annotations

# daphne.server installs Twisted's asyncio reactor on import: before anything imports the reactor.
import daphne.server  # isort: skip
from http import HTTPStatus
from typing import Any, cast

from daphne import http_protocol
from daphne.cli import CommandLineInterface

from mlxmanager import config
from mlxmanager.request_limits import check_head, refusal

MAX_BODY = config.max_body_bytes()
BODY_TIMEOUT = config.body_read_timeout()
MAX_HEAD = config.max_header_bytes()
HEAD_TIMEOUT = config.header_read_timeout()


class LimitedWebRequest(http_protocol.WebRequest):  # type: ignore[misc]
    _received = 0
    _refused = False
    _stall: Any = None

    def _path(self) -> str:
        raw = getattr(self.channel, "_path", b"") or b""  # the request line's target (Twisted's)
        return raw.split(b"?", 1)[0].decode("latin-1")

    def _refuse(self, status: int) -> None:
        self._refused = True
        self._stop_stall_timer()
        headers, body = refusal(self._path(), status)
        head = b"HTTP/1.1 %d %s\r\n" % (status, HTTPStatus(status).phrase.encode())
        head += b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        self.channel.transport.write(head + b"\r\n" + body)
        self.channel.transport.loseConnection()  # after the answer is written; no more reads

    def _stop_stall_timer(self) -> None:
        if self._stall is not None and self._stall.active():
            self._stall.cancel()
        self._stall = None

    def _stalled(self) -> None:
        self._stall = None
        if not self._refused:
            self._refuse(408)

    def gotLength(self, length: int | None) -> None:
        super().gotLength(length)
        headers = [
            (name.lower(), value)
            for name, values in self.requestHeaders.getAllRawHeaders()
            for value in values
        ]
        if any(name == b"upgrade" for name, _ in headers):
            return  # a WebSocket handshake: the consumer checks its own credentials
        status = check_head(self._path(), headers, max_body=MAX_BODY)
        if status is not None:
            self._refuse(status)
        elif length != 0 and BODY_TIMEOUT > 0:
            from twisted.internet import reactor

            self._stall = cast(Any, reactor).callLater(BODY_TIMEOUT, self._stalled)

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        self._received += len(data)
        if self._received > MAX_BODY:
            self._refuse(413)
            return
        if self._stall is not None:
            self._stall.reset(BODY_TIMEOUT)
        super().handleContentChunk(data)

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        self._stop_stall_timer()
        if self._refused:
            return  # answered already: never reaches the application
        super().requestReceived(command, path, version)

    def connectionLost(self, reason: Any) -> None:
        self._stop_stall_timer()
        super().connectionLost(reason)


class LimitedHTTPFactory(http_protocol.HTTPFactory):  # type: ignore[misc]
    def __init__(self, server: Any) -> None:
        super().__init__(server)
        self.timeOut = max(HEAD_TIMEOUT, BODY_TIMEOUT + 1) if HEAD_TIMEOUT > 0 else None

    def buildProtocol(self, addr: Any) -> Any:
        protocol = super().buildProtocol(addr)
        protocol.requestFactory = LimitedWebRequest
        channel = getattr(protocol, "_channel", protocol)  # Twisted's HTTPChannel behind its proxy
        channel.totalHeadersSize = MAX_HEAD
        channel.MAX_LENGTH = max(channel.MAX_LENGTH, MAX_HEAD)  # one header line (Twisted: 16 KiB)
        return protocol


def main() -> None:
    daphne.server.HTTPFactory = LimitedHTTPFactory  # what daphne's Server.run builds
    CommandLineInterface.entrypoint()


if __name__ == "__main__":
    main()
