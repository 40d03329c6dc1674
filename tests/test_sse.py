"""The SSE parser: split events anywhere, long lines, comments, CRLF, the size bound."""
import pytest

from jupyter_imagegen.sse import SSEError, SSEParser


def feed_all(parser, chunks):
    out = []
    for c in chunks:
        out += list(parser.feed(c))
    out += list(parser.close())
    return out


def test_events_split_across_chunks_and_crlf():
    raw = (b"event: a\r\ndata: {\"x\": 1}\r\n\r\n: keep-alive\n\ndata: line1\ndata: line2\n\n"
           b"event: last\ndata: end")
    for size in (1, 3, 7, len(raw)):
        chunks = [raw[i:i + size] for i in range(0, len(raw), size)]
        evs = feed_all(SSEParser(), chunks)
        assert [(e.event, e.data) for e in evs] == [("a", '{"x": 1}'), ("message", "line1\nline2"),
                                                    ("last", "end")]


def test_long_lines_beyond_aiohttp_readline_limit():
    payload = "A" * 3_000_000
    evs = feed_all(SSEParser(), [b"data: " + payload.encode()[:1000], payload.encode()[1000:] + b"\n\n"])
    assert len(evs) == 1 and evs[0].data == payload


def test_bound_refuses_oversized_event():
    p = SSEParser(max_bytes=1000)
    with pytest.raises(SSEError, match="over"):
        list(p.feed(b"data: " + b"x" * 2000))
