"""An incremental server-sent-events decoder that keeps each event's raw bytes.

The gateway relays upstream streams event by event: same-protocol streams are forwarded as
the exact bytes received (`Event.raw`), translated ones are re-encoded from `data`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Event:
    raw: bytes
    event: str
    data: str


def _parse(raw: bytes) -> Event | None:
    name = ""
    data: list[str] = []
    for line in raw.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"event":
            name = value.decode("utf-8", "replace")
        elif field == b"data":
            data.append(value.decode("utf-8", "replace"))
    if not name and not data:
        return None
    return Event(raw=raw, event=name, data="\n".join(data))


class SSEDecoder:
    MAX_EVENT = 16 * 1024 * 1024

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[Event]:
        buf = self._buf + chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
            if buf.endswith(b"\r"):  # maybe half of a CRLF: wait for the rest
                self._buf = buf
                return self._drain()
            buf = buf.replace(b"\r", b"\n")
        self._buf = buf
        return self._drain()

    def _drain(self) -> list[Event]:
        events: list[Event] = []
        while True:
            i = self._buf.find(b"\n\n")
            if i < 0:
                if len(self._buf) > self.MAX_EVENT:
                    raise ValueError("an upstream event is larger than 16 MB")
                return events
            raw, self._buf = self._buf[: i + 2], self._buf[i + 2 :]
            ev = _parse(raw)
            if ev is not None:
                events.append(ev)

    def flush(self) -> list[Event]:
        """The last event of a stream that ended without its blank line."""
        raw, self._buf = self._buf.rstrip(b"\r\n"), b""
        ev = _parse(raw + b"\n\n") if raw else None
        return [ev] if ev is not None else []
