from __future__ import annotations

from inference.sse import SSEDecoder


def test_events_split_across_chunks_keep_their_raw_bytes() -> None:
    d = SSEDecoder()
    stream = (
        b'event: a\ndata: {"x":1}\n\n: comment\n\ndata: line1\ndata: line2\n\nevent: b\r\ndata: y\r\n\r\n'
    )
    events = []
    for i in range(0, len(stream), 3):
        events += d.feed(stream[i : i + 3])
    assert [(e.event, e.data) for e in events] == [("a", '{"x":1}'), ("", "line1\nline2"), ("b", "y")]
    assert events[0].raw == b'event: a\ndata: {"x":1}\n\n'
    assert d.feed(b"data: [DONE]") == [] and [e.data for e in d.flush()] == ["[DONE]"]
    assert d.flush() == []
