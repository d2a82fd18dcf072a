"""sidecar.http.http1: the client's request head writer and response parser (pure, table-driven)."""

from __future__ import annotations

import pytest

from sidecar.http.http1 import (
    CHUNKED,
    Head,
    RequestError,
    ResponseError,
    ResponseParser,
    Truncated,
    chunk_frame,
    encode_request_head,
)

HOST = (b"host", b"example:80")


def parse(
    wire: bytes, *, head_request: bool = False, eof: bool = False, step: int = 0
) -> tuple[Head, bytes, ResponseParser]:
    """Parse one response from `wire` (fed whole, or `step` bytes at a time)."""
    p = ResponseParser()
    p.start(head_request=head_request)
    pieces = [wire] if not step else [wire[i : i + step] for i in range(0, len(wire), step)]
    pieces.reverse()

    def more() -> None:
        if pieces:
            p.feed(pieces.pop())
        elif eof:
            p.feed_eof()
        else:
            raise AssertionError("parser wants more data than the test has")

    head = p.next_head()
    while head is None:
        more()
        head = p.next_head()
    body = []
    while (data := p.next_data()) != b"":
        if data is None:
            more()
        else:
            body.append(data)
    while pieces:  # what is left is the parser's trailing data
        p.feed(pieces.pop())
    return head, b"".join(body), p


# -- responses that parse --------------------------------------------------------------------


@pytest.mark.parametrize("step", [0, 1, 3, 7])
def test_content_length_response(step: int) -> None:
    wire = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
    head, body, p = parse(wire, step=step)
    assert (head.status_code, head.reason, head.http_version) == (200, b"OK", b"1.1")
    assert head.headers == [(b"content-type", b"text/plain"), (b"content-length", b"5")]
    assert body == b"hello"
    assert p.done and p.keep_alive and not p.trailing_data


@pytest.mark.parametrize("step", [0, 1, 4])
def test_chunked_response_with_extensions_and_trailers(step: int) -> None:
    wire = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;name=value\r\nhello\r\n"
        b"A \r\n, world!!!\r\n"
        b"0\r\nX-Checksum: abc\r\n\r\n"
    )
    _head, body, p = parse(wire, step=step)
    assert body == b"hello, world!!!"
    assert p.done and p.keep_alive


def test_headers_are_lowercased_and_stripped_repeats_kept() -> None:
    wire = (
        b"HTTP/1.1 204 No Content\r\nSet-Cookie: a=1\r\nset-cookie:  b=2 \t\r\n"
        b"X-Empty:\r\nX-Obs: caf\xe9\r\n\r\n"
    )
    head, body, _ = parse(wire)
    assert head.headers == [
        (b"set-cookie", b"a=1"),
        (b"set-cookie", b"b=2"),
        (b"x-empty", b""),
        (b"x-obs", b"caf\xe9"),
    ]
    assert body == b""


def test_status_line_without_reason() -> None:
    head, _, _ = parse(b"HTTP/1.1 404\r\ncontent-length: 0\r\n\r\n")
    assert (head.status_code, head.reason) == (404, b"")


@pytest.mark.parametrize("status", [204, 304])
def test_no_body_statuses(status: int) -> None:
    wire = b"HTTP/1.1 %d X\r\ncontent-length: 10\r\n\r\n" % status
    _, body, p = parse(wire)
    assert body == b"" and p.done


def test_head_request_has_no_body() -> None:
    _, body, p = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n", head_request=True)
    assert body == b"" and p.done and p.keep_alive


def test_informational_responses_skipped() -> None:
    wire = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"
    wire += b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
    head, body, _ = parse(wire)
    assert (head.status_code, body) == (200, b"ok")


def test_body_until_eof_is_not_keep_alive() -> None:
    head, body, p = parse(b"HTTP/1.1 200 OK\r\n\r\nsome bytes", eof=True)
    assert body == b"some bytes"
    assert not head.keep_alive and not p.keep_alive


@pytest.mark.parametrize(
    "wire",
    [
        b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\ncontent-length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\ncontent-length: 0\r\n\r\n",
    ],
)
def test_not_keep_alive(wire: bytes) -> None:
    head, _, p = parse(wire)
    assert not head.keep_alive and not p.keep_alive


def test_identical_repeated_content_length() -> None:
    _, body, _ = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok")
    assert body == b"ok"


def test_bytes_after_the_response_are_trailing_data() -> None:
    _, body, p = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokEXTRA")
    assert body == b"ok" and p.done and p.trailing_data


def test_large_body_passes_through_fed_chunks() -> None:
    p = ResponseParser()
    p.start(head_request=False)
    p.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 200000\r\n\r\n")
    assert p.next_head() is not None
    assert p.next_data() is None
    chunk = b"x" * 100000
    p.feed(chunk)
    assert p.next_data() is chunk  # no copy
    p.feed(chunk)
    assert p.next_data() is chunk
    assert p.next_data() == b""


def test_keep_alive_sequence_of_responses() -> None:
    p = ResponseParser()
    for n in range(3):
        p.start(head_request=False)
        p.feed(b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\n%d" % n)
        head = p.next_head()
        assert head is not None and head.status_code == 200
        assert p.next_data() == b"%d" % n
        assert p.next_data() == b""
        assert not p.trailing_data


# -- responses that are refused --------------------------------------------------------------


@pytest.mark.parametrize(
    "wire",
    [
        b"SPDY/99 banana\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"http/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 200 O\x00K\r\n\r\n",
        b"HTTP/1.1 200 OK\nContent-Length: 0\r\n\r\n",  # bare LF
        b"HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nNoColon\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n: empty-name\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\x01b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n folded\r\n\r\n",  # obs-fold
        b"HTTP/1.1 200 OK\r\nName : x\r\n\r\n",  # whitespace before the colon
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1x\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\ncontent-length: 1234567890123456789\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked\r\n\r\n",
    ],
)
def test_invalid_heads(wire: bytes) -> None:
    with pytest.raises(ResponseError) as info:
        parse(wire, eof=True)
    assert not isinstance(info.value, Truncated)


CHUNKED_HEAD = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"


@pytest.mark.parametrize(
    "body",
    [
        b"g\r\nxx\r\n0\r\n\r\n",  # not hex
        b"-1\r\n",
        b"\r\n",  # empty size
        b" 5\r\nhello\r\n0\r\n\r\n",  # leading space
        b"0x5\r\nhello\r\n0\r\n\r\n",
        b"12345678901234567\r\n",  # more than 16 hex digits
        b"5\r\nhelloXX0\r\n\r\n",  # data not followed by CRLF
        b"5\nhello\r\n0\r\n\r\n",  # bare LF after the size
        b"2\r\nok\r\n0\r\nBad Trailer\r\n\r\n",
        b"2\r\nok\r\n0\r\nX: a\x00\r\n\r\n",
        b"5;ext\x00\r\nhello\r\n0\r\n\r\n",
    ],
)
def test_invalid_chunked_bodies(body: bytes) -> None:
    with pytest.raises(ResponseError) as info:
        parse(CHUNKED_HEAD + body, eof=True)
    assert not isinstance(info.value, Truncated)


def test_chunk_size_line_too_long() -> None:
    with pytest.raises(ResponseError, match="too long"):
        parse(CHUNKED_HEAD + b"1;" + b"x" * 5000, eof=True)


def test_head_too_large() -> None:
    wire = b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"a" * 70000
    with pytest.raises(ResponseError, match="too large"):
        parse(wire, eof=True, step=8192)


@pytest.mark.parametrize(
    "wire",
    [
        b"",
        b"HTTP/1.1 200 OK\r\ncontent-le",
        b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort",
        CHUNKED_HEAD + b"5\r\nhel",
        CHUNKED_HEAD + b"5\r\nhello",
        CHUNKED_HEAD + b"5\r\nhello\r\n",
        CHUNKED_HEAD + b"0\r\n",
        CHUNKED_HEAD + b"0\r\nX: trailer\r\n",
    ],
)
def test_eof_before_the_end_is_truncated(wire: bytes) -> None:
    with pytest.raises(Truncated):
        parse(wire, eof=True)


def test_body_read_before_head_is_an_error() -> None:
    p = ResponseParser()
    p.start(head_request=False)
    with pytest.raises(ResponseError):
        p.next_data()


# -- request heads -------------------------------------------------------------------------


def test_request_head_and_framing() -> None:
    head, framing, keep_alive = encode_request_head(
        b"POST", b"/a?b=1", [HOST, (b"Content-Length", b"5"), (b"x-y", b"z")]
    )
    assert head == (
        b"POST /a?b=1 HTTP/1.1\r\nhost: example:80\r\nContent-Length: 5\r\nx-y: z\r\n\r\n"
    )
    assert (framing, keep_alive) == (5, True)
    assert encode_request_head(b"GET", b"/", [HOST])[1:] == (0, True)
    assert encode_request_head(b"GET", b"/", [HOST, (b"connection", b"Close")])[1:] == (0, False)
    chunked = encode_request_head(b"PUT", b"/", [HOST, (b"transfer-encoding", b"chunked")])
    assert chunked[1] == CHUNKED


def test_chunk_frame() -> None:
    assert b"".join(chunk_frame(b"x" * 26)) == b"1a\r\n" + b"x" * 26 + b"\r\n"


@pytest.mark.parametrize(
    ("method", "target", "headers"),
    [
        (b"GET", b"/", [(b"user-agent", b"x")]),  # no Host
        (b"G ET", b"/", [HOST]),
        (b"", b"/", [HOST]),
        (b"GET", b"", [HOST]),
        (b"GET", b"/a b", [HOST]),
        (b"GET", b"/a\r\nX: y", [HOST]),
        (b"GET", b"/", [HOST, (b"x-bad", b"a\r\nb")]),
        (b"GET", b"/", [HOST, (b"x-bad", b"a\r\nx-injected: 1")]),
        (b"GET", b"/", [HOST, (b"x-bad", b"a\nb")]),
        (b"GET", b"/", [HOST, (b"x-bad", b"a\x00b")]),
        (b"GET", b"/", [HOST, (b"x:bad", b"v")]),
        (b"GET", b"/", [HOST, (b"x bad", b"v")]),
        (b"GET", b"/", [HOST, (b"", b"v")]),
        (b"POST", b"/", [HOST, (b"content-length", b"1"), (b"content-length", b"2")]),
        (b"POST", b"/", [HOST, (b"content-length", b"-1")]),
        (b"POST", b"/", [HOST, (b"content-length", b"1"), (b"transfer-encoding", b"chunked")]),
        (b"POST", b"/", [HOST, (b"transfer-encoding", b"gzip")]),
    ],
)
def test_invalid_requests(method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    with pytest.raises(RequestError):
        encode_request_head(method, target, headers)


# -- through the client: the error tree is unchanged ----------------------------------------


async def _one_response(wire: bytes) -> BaseException | bytes:
    """Serve `wire` (then close) to one request of a ConnectionPool; its outcome."""
    import asyncio

    from sidecar.http.client import ConnectionPool
    from sidecar.model.endpoint import Endpoint

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await r.readuntil(b"\r\n\r\n")
        w.write(wire)
        await w.drain()
        w.close()

    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        endpoint = Endpoint(scheme="http", host="127.0.0.1", port=port)
        async with ConnectionPool(endpoint, max_connections=1) as pool:
            try:
                resp = await pool.request(b"GET", b"/", [(b"host", b"x")])
                return await resp.aread()
            except Exception as exc:
                return exc
    finally:
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    ("wire", "error", "reason"),
    [
        (CHUNKED_HEAD + b"zz\r\n", "RemoteProtocolError", "protocol"),
        (CHUNKED_HEAD + b"5\r\nhelloXX", "RemoteProtocolError", "protocol"),
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            "RemoteProtocolError",
            "protocol",
        ),
        (CHUNKED_HEAD + b"5\r\nhel", "ReadError", "reset"),
        (b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nabc", "ReadError", "reset"),
        (b"HTTP/1.1 200 OK\r\n", "ReadError", "reset"),
        (b"HTTP/1.1 200 OK\r\n\r\nuntil eof", None, None),
        (CHUNKED_HEAD + b"3\r\nabc\r\n0\r\n\r\n", None, None),
    ],
)
async def test_client_errors(wire: bytes, error: str | None, reason: str | None) -> None:
    from sidecar.http.client import ClientError

    outcome = await _one_response(wire)
    if error is None:
        assert isinstance(outcome, bytes) and outcome in (b"until eof", b"abc")
    else:
        assert type(outcome).__name__ == error
        assert isinstance(outcome, ClientError) and outcome.reason == reason
