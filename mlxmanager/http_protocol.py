"""uvicorn's httptools protocol with the request head bounded in size and in time.

uvicorn's httptools protocol has neither bound: a client can send headers for ever (a 20 MB
header is accepted), or send half a request line and hold the connection open (uvicorn's
keep-alive timer runs only between requests, not while a head is arriving). Its h11 protocol
takes `--h11-max-incomplete-event-size` but has no head timer either. This subclass adds both:

- the request line and headers together may not pass `MLXM_MAX_HEADER_BYTES` (64 KiB): 431;
- they must arrive within `MLXM_HEADER_READ_TIMEOUT` seconds (30) of the connection opening or
  of the request's first byte: 408, and the connection is closed (just closed if nothing came).

Bodies are bounded by the application (`mlxmanager/request_limits.py`). `mlxmanager/webserver.py`
passes this class to uvicorn's `--http`; no Django here (uvicorn imports it before the app).
Written against uvicorn's `HttpToolsProtocol` (pinned `uvicorn<0.55`): `data_received` is
uvicorn's own, with the refusals in front of its parser errors.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from mlxmanager import config


class _HeadRefused(Exception):
    pass


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    max_head_bytes = config.max_header_bytes()
    head_timeout = config.header_read_timeout()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._reading_head = True  # from the connection's start, and from each request's first byte
        self._head_bytes = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._refusal: tuple[int, str] | None = None

    # -- the head timer ---------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        if self._head_timer is None and self.head_timeout > 0:
            self._head_timer = self.loop.call_later(self.head_timeout, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            self._arm_head_timer()  # a pipelined head behind a running answer: wait for the answer
            return
        if self._head_bytes or self.url or self.headers:
            self._refuse(408, "The request headers were not sent in time.")
        else:
            self.transport.close()  # a connection that never sent anything

    def _refuse(self, status: int, message: str) -> None:
        body = message.encode()
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"content-type: text/plain; charset=utf-8\r\n",
                        b"content-length: " + str(len(body)).encode() + b"\r\n",
                        b"connection: close\r\n", b"\r\n", body])  # fmt: skip
        self.transport.write(b"".join(content))
        self.transport.close()
        self._cancel_head_timer()

    # -- the protocol -----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._unset_keepalive_if_required()
        was_reading_head = self._reading_head
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self._refusal is not None:
                self._refuse(*self._refusal)
                return
            msg = "Invalid HTTP request received."
            self.logger.warning(msg)
            self.send_400_response(msg)
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
            return
        if was_reading_head and self._reading_head:  # all of `data` went to an unfinished head
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._refuse(431, "The request headers are too large.")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._reading_head = True
        self._head_bytes = 0
        self._arm_head_timer()

    def on_headers_complete(self) -> None:
        self._reading_head = False
        self._cancel_head_timer()
        size = len(self.url) + sum(len(name) + len(value) + 4 for name, value in self.headers)
        if size > self.max_head_bytes:
            self._refusal = (431, "The request headers are too large.")
            raise _HeadRefused  # stops the parser; data_received answers
        super().on_headers_complete()
