"""A stricter h11 server connection: what the proxy refuses before hypercorn sees a request.

How this works
--------------
h11 picks a *reader* for the peer's state (`h11._readers.READERS`) each time that state
changes (`Connection._get_io_object`). `StrictConnection` swaps three of them, so the whole
message is still parsed once, by h11's own code and regexes:

- IDLE (a request head): empty lines before the request line are skipped (RFC 9112
  section 2.2); a header line that starts with SP/HTAB (obs-fold) is refused instead of
  unfolded (h11 joins it to the previous value: `Host: a` + ` Transfer-Encoding: chunked`
  would reach the primary as one Host value); then h11's request-line and header-line
  parsing, then `framing.inspect` (CL+TE, two lengths, a `Transfer-Encoding` other than
  `chunked`, Host, the target, the version) *before* h11's own validation, which would
  answer an unsupported Transfer-Encoding with an unlogged 501.
- SEND_BODY with chunked framing: h11's `ChunkedReader`, refusing a chunk size over 16 hex
  digits (h11 takes any size up to 20 digits, e.g. `fffffffffffffffff3`; a hop that parses
  64 bits would see another body length) and turning every chunk syntax error into a
  refusal with a label.
- MUST_CLOSE/CLOSED (after a request that ends the connection: `Connection: close`,
  HTTP/1.0): whatever the client still sends is dropped (RFC 9112 section 9.6: a server
  "MUST NOT process any further requests" there). h11 raises "Got data when expecting
  EOF" instead, and hypercorn answers 400 after it already ran the request
  (https://github.com/pgjones/hypercorn/issues/203).

A refusal is raised as `RequestRefused`, a `h11.RemoteProtocolError` carrying the
`framing.Refusal` (status, body text, metrics label). Pure: no I/O.

This leans on h11 internals (`_get_io_object`, `_readers`, `_cstate`); the versions are
pinned by the tests in tests/serve/test_strict_parsing.py, which fail loudly if they move.
"""

from __future__ import annotations

from typing import Any, cast

import h11
from h11._readers import (  # h11 exports no reader API; see the module docstring
    ChunkedReader,
    _decode_header_lines,
    request_line_re,
)
from h11._receivebuffer import ReceiveBuffer
from h11._state import CLOSED, IDLE, MUST_CLOSE, SEND_BODY

from sidecar.http import framing

# The largest chunk size accepted: 16 hex digits (2**64 - 1), as nginx and Go do. Longer
# sizes are how chunk-size overflow desyncs start.
MAX_CHUNK_SIZE = 16**16 - 1
# Header lines starting with these bytes are obs-fold continuations.
_FOLD_BYTES = frozenset(b" \t")


class RequestRefused(h11.RemoteProtocolError):
    """The client's request is refused: `refusal` says with what status and why."""

    def __init__(self, refusal: framing.Refusal, detail: str) -> None:
        super().__init__(detail, error_status_hint=refusal.status)
        self.refusal = refusal


class StrictConnection(h11.Connection):
    """`h11.Connection(h11.SERVER)` with the strict readers described above."""

    def __init__(self, max_incomplete_event_size: int) -> None:
        # Not a bound method: h11 keeps its reader on the connection, and a reader holding
        # the connection would make every closing connection a reference cycle.
        self._stray = _StrayDropper()
        super().__init__(h11.SERVER, max_incomplete_event_size=max_incomplete_event_size)

    @property
    def stray_bytes(self) -> int:
        """Dropped after a request that ends the connection."""
        return self._stray.dropped

    @property
    def unread_bytes(self) -> int:
        """Received but not parsed yet (a pipelined request, a body h11 has not read)."""
        return len(self._receive_buffer)

    @property
    def peer_closed(self) -> bool:
        """The client's EOF has been received."""
        return self._receive_buffer_closed

    def _get_io_object(self, role: Any, event: Any, io_dict: Any) -> Any:
        if role is not h11.CLIENT:
            return super()._get_io_object(role, event, io_dict)
        state = self._cstate.states[role]
        if state is IDLE:
            return read_request
        if state is MUST_CLOSE or state is CLOSED:
            return self._stray
        reader = super()._get_io_object(role, event, io_dict)
        if state is SEND_BODY and isinstance(reader, ChunkedReader):
            return StrictChunkedReader()
        return reader


class _StrayDropper:
    """The reader after a request that ends the connection: drops and counts what follows."""

    __slots__ = ("dropped",)

    def __init__(self) -> None:
        self.dropped = 0

    def __call__(self, buf: ReceiveBuffer) -> None:
        # Consumed, not left in the buffer: h11 would otherwise count it against its
        # incomplete-event limit and answer 431.
        extracted = buf.maybe_extract_at_most(len(buf))
        if extracted is not None:
            self.dropped += len(extracted)


def read_request(buf: ReceiveBuffer) -> h11.Request | None:
    """h11's `maybe_read_from_IDLE_client`, strict; raises RequestRefused."""
    lines = buf.maybe_extract_lines()
    while lines == []:  # an empty line before the request line (RFC 9112 section 2.2)
        lines = buf.maybe_extract_lines()
    if lines is None:
        # h11's early check for garbage (a TLS hello on the plain port); not on a lone CR,
        # which may be the first half of a CRLF between requests.
        if len(buf) > 1 and buf.is_next_line_obviously_invalid_request_line():
            raise RequestRefused(framing.BAD_REQUEST_LINE, "illegal request line")
        return None
    for line in lines[1:]:
        if line and line[0] in _FOLD_BYTES:
            raise RequestRefused(framing.OBS_FOLD, "obs-fold header continuation line")
    matches = request_line_re.fullmatch(lines[0])
    if matches is None:
        raise RequestRefused(framing.BAD_REQUEST_LINE, f"illegal request line {lines[0]!r}")
    try:
        headers = list(_decode_header_lines(cast("list[bytes]", lines[1:])))
    except h11.LocalProtocolError as exc:
        raise RequestRefused(framing.BAD_HEADER_LINE, str(exc)) from None
    method = bytes(matches["method"])
    target = bytes(matches["target"])
    version = bytes(matches["http_version"])
    if method == b"PRI" and target == b"*" and version == b"2.0":
        # The HTTP/2 prior-knowledge preface: hypercorn switches to HTTP/2 on this request.
        return h11.Request(method=method, target=target, headers=headers, http_version=version)
    framed = framing.inspect(
        method.decode("ascii"),
        target,
        version.decode("ascii"),
        [(bytes(name).lower(), bytes(value)) for name, value in headers],
    )
    if isinstance(framed, framing.Refusal):
        raise RequestRefused(framed, framed.reason)
    try:
        return h11.Request(
            method=method, target=target, headers=headers, http_version=version, _parsed=True
        )
    except h11.LocalProtocolError as exc:  # what inspect() lets through but h11 does not
        refusal = (
            framing.TE_NOT_CHUNKED if exc.error_status_hint == 501 else framing.BAD_HEADER_LINE
        )
        raise RequestRefused(refusal, str(exc)) from None


class StrictChunkedReader(ChunkedReader):
    """h11's chunked body reader with a bounded chunk size and labelled errors."""

    def __call__(self, buf: ReceiveBuffer) -> h11.Data | h11.EndOfMessage | None:
        try:
            event = super().__call__(buf)
        except h11.LocalProtocolError as exc:
            raise RequestRefused(framing.BAD_CHUNK, str(exc)) from None
        if self._bytes_in_chunk > MAX_CHUNK_SIZE:
            raise RequestRefused(framing.BAD_CHUNK, "chunk size over 16 hex digits")
        return event
