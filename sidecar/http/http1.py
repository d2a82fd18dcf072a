"""HTTP/1.1 client-side wire format: the request head we write, the responses we parse.

One job past 400 lines: the sans-IO codec (its states and bounds belong together).

Why not h11
-----------
h11 cost about 190 µs of CPU per request in our client (events, state machines, a regex
per header line and per chunk), and every mirror is one more client request in the proxy
process. This module does the same client-side job with a few C-level calls per message:
one `bytes.join` for the request head, one `find` for the end of the response head, one
regex `fullmatch` validating the whole header block and one `findall` extracting it.
hypercorn (the server side) keeps h11.

What is validated (strictly; anything else is a `ResponseError`)
----------------------------------------------------------------
- Status line: `HTTP/1.0` or `HTTP/1.1`, SP, three digits (100-999), optional SP and a
  reason of visible characters, SP, HTAB and obs-text. Lines end in CRLF (a bare LF is an
  error); obsolete line folding is an error.
- Header lines: a token name, `:`, optional whitespace, a value without control
  characters (HTAB and obs-text allowed); surrounding whitespace is stripped and names are
  lower-cased. The head is at most `max_head` bytes (64 KiB by default).
- Framing (RFC 9112 section 6.3): no body for HEAD, 1xx, 204 and 304. `Transfer-Encoding`
  must be exactly `chunked` and must not come with `Content-Length` (a smuggling
  ambiguity). `Content-Length` is 1-18 digits; repeated values must be equal. Neither: the
  body runs to EOF and the connection is not reused.
- Chunked: hex sizes of at most 16 digits (extensions after `;` ignored), each chunk's data
  followed by exactly CRLF, then trailer lines (validated as header lines, discarded) and
  an empty line.
- A 101 (we never ask to switch protocols) is an error; other 1xx are skipped.
- EOF before the message is complete raises `Truncated` (the caller reports a reset).

Requests: `encode_request_head` validates the method (token), the target (visible
characters only), header names (tokens) and values (no CR, LF or NUL...), requires `Host`,
and tells the body framing the caller must honour: `Content-Length`, `chunked`, or none
(then the body must be empty). Errors are `RequestError`.

Both error classes derive from `ProtocolError`; `sidecar.http.connection` translates them into
the client's error tree at its one boundary.
"""

from __future__ import annotations

import re

from sidecar.http.syntax import CHUNKED, TOKEN_BYTES, find_control_bytes, is_token_bytes

__all__ = [
    "CHUNKED",
    "MAX_HEAD_BYTES",
    "Head",
    "ProtocolError",
    "RequestError",
    "ResponseError",
    "ResponseParser",
    "Truncated",
    "chunk_frame",
    "encode_request_head",
]

MAX_HEAD_BYTES = 64 * 1024
# A chunk-size line (with extensions) or one trailer section longer than this is an error.
MAX_CHUNK_LINE_BYTES = 4 * 1024
MAX_TRAILER_BYTES = 64 * 1024
MAX_LENGTH_DIGITS = 18


class ProtocolError(ValueError):
    """Something on the wire is not HTTP/1.1 as we accept it."""


class RequestError(ProtocolError):
    """The request we were asked to send is invalid (a bad header, a framing mismatch)."""


class ResponseError(ProtocolError):
    """The server sent something that is not a valid HTTP/1.1 response."""


class Truncated(ResponseError):
    """The server closed the connection before the response was complete."""


_STATUS_LINE = re.compile(rb"HTTP/1\.([01]) ([0-9]{3})(?: ([\t\x20-\x7e\x80-\xff]*))?")
# A header block (every line with its CRLF). Values: no CTLs but HTAB; obs-text allowed.
_FIELD_VALUE = rb"[\t\x20-\x7e\x80-\xff]*"
_HEADER_BLOCK = re.compile(rb"(?:" + TOKEN_BYTES + rb":" + _FIELD_VALUE + rb"\r\n)*")
_HEADER_LINE = re.compile(rb"(" + TOKEN_BYTES + rb"):(" + _FIELD_VALUE + rb")\r\n")
_BAD_TARGET = re.compile(rb"[\x00-\x20\x7f]")
_CHUNK_SIZE = re.compile(rb"([0-9A-Fa-f]{1,16})[\t ]*(?:;[\t\x20-\x7e\x80-\xff]*)?")
_WS = b" \t"

_CONTENT_LENGTH = b"content-length"
_TRANSFER_ENCODING = b"transfer-encoding"
_CONNECTION = b"connection"
_HOST = b"host"

# Parser states.
_HEAD = 0
_LENGTH = 1  # `_remaining` body bytes to go
_CHUNK_SIZE_LINE = 2
_CHUNK_DATA = 3  # `_remaining` bytes of the current chunk, then CRLF
_CHUNK_CRLF = 4
_TRAILERS = 5
_UNTIL_EOF = 6
_DONE = 7


def encode_request_head(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]]
) -> tuple[bytes, int, bool]:
    """(the request head, its body framing, keep-alive): framing is a Content-Length (0 for
    none) or CHUNKED; keep-alive is False when the request says `Connection: close`."""
    if not is_token_bytes(method):
        raise RequestError(f"invalid method {method!r}")
    if not target or _BAD_TARGET.search(target):
        raise RequestError(f"invalid request target {target!r}")
    parts = [method, b" ", target, b" HTTP/1.1\r\n"]
    length: bytes | None = None
    chunked = False
    has_host = False
    keep_alive = True
    for name, value in headers:
        lname = name.lower()
        if b":" in name:  # the block regex below would read it as the name's end
            raise RequestError(f"invalid header name {name!r}")
        if lname == _CONTENT_LENGTH:
            if length is not None and value != length:
                raise RequestError("conflicting Content-Length headers")
            length = value
        elif lname == _TRANSFER_ENCODING:
            if value.strip(_WS).lower() != b"chunked" or chunked:
                raise RequestError("only Transfer-Encoding: chunked is supported")
            chunked = True
        elif lname == _HOST:
            has_host = True
        elif lname == _CONNECTION and b"close" in value.lower():
            keep_alive = not _has_token(value, b"close")
        parts += (name, b": ", value, b"\r\n")
    parts.append(b"\r\n")
    head = b"".join(parts)
    # One pass over everything we joined: names are tokens, values carry no CTLs; and as
    # many line ends as lines, so that no value smuggled in a line of its own.
    if (
        _HEADER_BLOCK.fullmatch(head, len(method) + len(target) + 12, len(head) - 2) is None
        or head.count(b"\n") != len(headers) + 2
    ):
        _raise_bad_header(headers)
    if not has_host:
        raise RequestError("missing mandatory Host header")
    if chunked:
        if length is not None:
            raise RequestError("Content-Length with Transfer-Encoding")
        return head, CHUNKED, keep_alive
    if length is None:
        return head, 0, keep_alive
    if not length.isdigit() or len(length) > MAX_LENGTH_DIGITS:
        raise RequestError(f"invalid Content-Length {length!r}")
    return head, int(length), keep_alive


def _raise_bad_header(headers: list[tuple[bytes, bytes]]) -> None:
    for name, value in headers:
        if not is_token_bytes(name):
            raise RequestError(f"invalid header name {name!r}")
        if find_control_bytes(value):
            raise RequestError(f"invalid header value for {name.decode('latin-1')!r}")
        if not name:
            raise RequestError("empty header name")
    raise RequestError("invalid header")  # pragma: no cover - one of the above fired


def chunk_frame(data: bytes) -> list[bytes]:
    """One chunk of a chunked body, as buffers for `writelines` (the data is not copied)."""
    return [b"%x\r\n" % len(data), data, b"\r\n"]


def _has_token(value: bytes, token: bytes) -> bool:
    return any(t.strip(_WS).lower() == token for t in value.split(b","))


class Head:
    """A final response head. `headers` names are lower case, values stripped."""

    __slots__ = ("headers", "http_version", "keep_alive", "reason", "status_code")

    def __init__(
        self,
        status_code: int,
        reason: bytes,
        headers: list[tuple[bytes, bytes]],
        http_version: bytes,
        keep_alive: bool,
    ) -> None:
        self.status_code = status_code
        self.reason = reason
        self.headers = headers
        self.http_version = http_version
        self.keep_alive = keep_alive


class ResponseParser:
    """Incremental parser for the responses of one connection, one exchange at a time.

    `start(head_request)` before each request; `feed(data)` what arrives; `feed_eof()` when
    the server closes. `next_head()` returns the final head (1xx skipped) or None for more
    data; then `next_data()` returns body bytes, `b""` at the end of the message, or None
    for more data. Body bytes are slices of what was fed (a whole fed chunk when it fits).
    """

    __slots__ = (
        "_buf",
        "_eof",
        "_head_request",
        "_remaining",
        "_state",
        "_trailer_bytes",
        "keep_alive",
    )

    def __init__(self) -> None:
        self._buf = b""
        self._state = _HEAD
        self._remaining = 0
        self._trailer_bytes = 0
        self._head_request = False
        self._eof = False
        self.keep_alive = True  # False once the response says the connection ends with it

    def start(self, *, head_request: bool) -> None:
        """A new request was sent on this connection (the previous response is complete)."""
        self._state = _HEAD
        self._head_request = head_request

    @property
    def done(self) -> bool:
        """The response is complete."""
        return self._state == _DONE

    @property
    def trailing_data(self) -> bool:
        """Bytes arrived beyond the response: the connection cannot be reused."""
        return bool(self._buf)

    def feed(self, data: bytes) -> None:
        self._buf = self._buf + data if self._buf else data

    def feed_eof(self) -> None:
        self._eof = True

    # -- the head ---------------------------------------------------------------------

    def next_head(self) -> Head | None:
        while True:
            buf = self._buf
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > MAX_HEAD_BYTES:
                    raise ResponseError("response head too large")
                if self._eof:
                    raise Truncated("server closed the connection before the response head")
                return None
            if end > MAX_HEAD_BYTES:
                raise ResponseError("response head too large")
            self._buf = buf[end + 4 :]
            head = self._parse_head(buf, end)
            if head is not None:
                return head

    def _parse_head(self, buf: bytes, end: int) -> Head | None:
        eol = buf.find(b"\r\n")
        m = _STATUS_LINE.fullmatch(buf, 0, eol)
        if m is None:
            raise ResponseError(f"invalid status line {buf[: min(eol, 80)]!r}")
        status = int(m.group(2))
        if status < 100:
            raise ResponseError(f"invalid status code {status}")
        block_start = eol + 2
        block_end = end + 2  # keep the last header line's CRLF
        if block_end > block_start:
            if _HEADER_BLOCK.fullmatch(buf, block_start, block_end) is None:
                raise ResponseError(_bad_line(buf[block_start:block_end]))
            raw = _HEADER_LINE.findall(buf, block_start, block_end)
        else:
            raw = []
        if status < 200:
            if status == 101:
                raise ResponseError("unexpected 101 Switching Protocols")
            return None  # informational: skipped
        headers: list[tuple[bytes, bytes]] = []
        length: bytes | None = None
        te: bytes | None = None
        keep_alive = m.group(1) == b"1"
        for name, value in raw:
            name = name.lower()
            value = value.strip(_WS)
            headers.append((name, value))
            if name == _CONTENT_LENGTH:
                if length is not None and value != length:
                    raise ResponseError("conflicting Content-Length headers")
                length = value
            elif name == _TRANSFER_ENCODING:
                te = value if te is None else te + b"," + value
            elif name == _CONNECTION and keep_alive and _has_token(value, b"close"):
                keep_alive = False
        if self._head_request or status == 204 or status == 304:
            self._state = _DONE
        elif te is not None:
            if length is not None:
                raise ResponseError("Content-Length with Transfer-Encoding")
            if te.strip(_WS).lower() != b"chunked":
                raise ResponseError(f"unsupported Transfer-Encoding {te!r}")
            self._state = _CHUNK_SIZE_LINE
        elif length is not None:
            if not length.isdigit() or len(length) > MAX_LENGTH_DIGITS:
                raise ResponseError(f"invalid Content-Length {length!r}")
            self._remaining = int(length)
            self._state = _LENGTH if self._remaining else _DONE
        else:
            self._state = _UNTIL_EOF
            keep_alive = False
        self.keep_alive = keep_alive
        reason = m.group(3) or b""
        return Head(status, reason, headers, b"1." + m.group(1), keep_alive)

    # -- the body ---------------------------------------------------------------------

    def next_data(self) -> bytes | None:
        """Body bytes; b"" at the end of the response; None: feed more."""
        state = self._state
        if state == _LENGTH:
            buf = self._buf
            if not buf:
                if self._eof:
                    raise Truncated("server closed the connection mid-body")
                return None
            remaining = self._remaining
            if len(buf) <= remaining:
                self._buf = b""
                self._remaining = remaining = remaining - len(buf)
                if not remaining:
                    self._state = _DONE
                return buf
            self._buf = buf[remaining:]
            self._remaining = 0
            self._state = _DONE
            return buf[:remaining]
        if state == _DONE:
            return b""
        if state == _UNTIL_EOF:
            buf = self._buf
            if buf:
                self._buf = b""
                return buf
            if self._eof:
                self._state = _DONE
                return b""
            return None
        if state == _HEAD:
            raise ResponseError("body read before the response head")
        return self._chunked()

    def _chunked(self) -> bytes | None:
        while True:
            state = self._state
            buf = self._buf
            if state == _CHUNK_DATA:
                if not buf:
                    break
                remaining = self._remaining
                if len(buf) <= remaining:
                    self._buf = b""
                    data = buf
                else:
                    self._buf = buf[remaining:]
                    data = buf[:remaining]
                self._remaining = remaining - len(data)
                if not self._remaining:
                    self._state = _CHUNK_CRLF
                return data
            if state == _CHUNK_CRLF:
                if len(buf) < 2:
                    break
                if buf[:2] != b"\r\n":
                    raise ResponseError("chunk data not followed by CRLF")
                self._buf = buf[2:]
                self._state = _CHUNK_SIZE_LINE
            elif state == _CHUNK_SIZE_LINE:
                eol = buf.find(b"\r\n", 0, MAX_CHUNK_LINE_BYTES + 2)
                if eol < 0:
                    if len(buf) > MAX_CHUNK_LINE_BYTES:
                        raise ResponseError("chunk size line too long")
                    break
                m = _CHUNK_SIZE.fullmatch(buf, 0, eol)
                if m is None:
                    raise ResponseError(f"invalid chunk size line {buf[: min(eol, 40)]!r}")
                size = int(m.group(1), 16)
                self._buf = buf[eol + 2 :]
                if size:
                    self._remaining = size
                    self._state = _CHUNK_DATA
                else:
                    self._state = _TRAILERS
                    self._trailer_bytes = 0
            elif state == _TRAILERS:
                eol = buf.find(b"\r\n")
                if eol < 0:
                    if self._trailer_bytes + len(buf) > MAX_TRAILER_BYTES:
                        raise ResponseError("trailer section too large")
                    break
                self._trailer_bytes += eol + 2
                if self._trailer_bytes > MAX_TRAILER_BYTES:
                    raise ResponseError("trailer section too large")
                self._buf = buf[eol + 2 :]
                if eol == 0:
                    self._state = _DONE
                    return b""
                if _HEADER_BLOCK.fullmatch(buf, 0, eol + 2) is None:
                    raise ResponseError(_bad_line(buf[: eol + 2]))
            else:  # pragma: no cover - next_data handles the other states
                raise AssertionError(state)
        if self._eof:
            raise Truncated("server closed the connection mid-body")
        return None


def _bad_line(block: bytes) -> str:
    for line in block.split(b"\r\n"):
        if line and _HEADER_BLOCK.fullmatch(line + b"\r\n") is None:
            if line[:1] in (b" ", b"\t"):
                return "obsolete line folding in header"
            return f"invalid header line {line[:80]!r}"
    return "invalid header block"
