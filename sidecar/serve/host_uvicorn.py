"""uvicorn's httptools connection layer, held to what the proxy promises (`--server uvicorn`).

How this works
--------------
uvicorn serves each client connection with an `asyncio.Protocol` (`HttpToolsProtocol`:
httptools, the Python binding of llhttp, calls back for the URL, each header, the body)
and one `RequestResponseCycle` per request (the ASGI `receive`/`send` pair, writing the
response straight to the transport). `UvicornProtocol` subclasses the one and `_Cycle` the
other; sidecar/serve/host_uvicorn_listener.py accepts connections and drains them. What
they change, to match the hypercorn layer (sidecar/serve/host_protocol.py):

- Strict parsing. llhttp (httptools 0.6+) already refuses obs-fold, bare LF, CL with TE,
  two Content-Lengths (even equal ones, which h11 merges), a Transfer-Encoding other than
  a final `chunked`, chunk sizes that overflow 64 bits, bad tokens and control bytes. On top
  of it, every request head goes through `framing.inspect` as under hypercorn (Host,
  target, version, TE on HTTP/1.0, CONNECT, header section size), and a head still
  incomplete past `MAX_HEADER_SECTION_BYTES` (plus one read) is refused with 431 instead of
  being buffered without bound (uvicorn has no such limit for httptools). Every refusal
  answers with the same status and text as under hypercorn, `Connection: close`, counted
  in `sidecar_refused_requests_total{reason}` and `sidecar_requests_total{code}`
  (uvicorn answers every parser error with one uncounted 400 and a WARNING log line, even
  in the middle of a response it is already sending).
- Lingering close, as host_protocol.py: when we close while the client may still be
  sending (a refusal, a response finished before the upload), we half-close and read and
  drop for at most `LINGER_TOTAL_S` / `LINGER_IDLE_S` / `LINGER_MAX_BYTES`.
- Draining: `shutdown()` closes idle connections; a busy one gets `Connection: close` on a
  response not started yet and closes after it (uvicorn's own behaviour, kept).
- When the grace runs out, a request still running is counted (`HostState.cut`) and its
  client gets 503 with a text body if its response had not started (uvicorn logs a
  traceback and answers 500).
- `Upgrade: websocket` is handed to uvicorn's wsproto protocol (`UvicornWSProtocol`: a
  connection lost without a close frame is reported to the app as 1006, as hypercorn
  does, not uvicorn's 1005; draining leaves sessions to the proxy, which closes them
  with 1001 when the grace ends, where uvicorn's `shutdown()` sends 1012 at once; no
  server pings, as with hypercorn); any other `Upgrade` (h2c)
  is served as a plain HTTP/1.1 request and the connection closed after it (llhttp stops
  parsing after an upgrade request; uvicorn would log a WARNING per request and leave the
  connection stuck).
- At most `KEEP_ALIVE_MAX_REQUESTS` requests per connection, the last one answered with
  `Connection: close`. A connection is idle from its start and after each response until
  a request head is complete, and closes after `KEEP_ALIVE_TIMEOUT_S` of that, as under
  hypercorn (uvicorn arms its timer only after a response and stops it at any byte, so a
  client that connects and sends nothing, or a byte a minute, held its descriptor forever).
- Status lines carry a reason phrase for every code, the class's name where Python has
  none (uvicorn sends `HTTP/1.1 599 ` with none); its `Date` and `Server` headers are not
  added (the primary's pass through, as with hypercorn).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any
from urllib.parse import unquote

import httptools
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.websockets.wsproto_impl import WSProtocol

from sidecar.http import framing
from sidecar.serve.host_http import REFUSALS, HostState, reason_phrase

log = logging.getLogger("sidecar.host")

# The same bounds as the hypercorn layer's (sidecar/serve/host_protocol.py explains them).
LINGER_TOTAL_S = 5.0
LINGER_IDLE_S = 1.0
LINGER_MAX_BYTES = 1024 * 1024 * 1024

_CUT_BODY = b"Service Unavailable: the proxy shut down before the primary answered\n"

# llhttp's error messages (httptools passes them on as the exception text) -> the refusal.
# Checked in order, by substring; anything else in a request head is a malformed line.
_PARSER_REFUSALS = (
    ("Transfer-Encoding can't be present with Content-Length", framing.CL_AND_TE),
    ("Duplicate Content-Length", framing.CONFLICTING_CL),
    ("Content-Length", framing.INVALID_CL),
    ("Transfer-Encoding", framing.TE_NOT_CHUNKED),
    ("chunk", framing.BAD_CHUNK),
    ("Chunk", framing.BAD_CHUNK),
    ("whitespace after header value", framing.OBS_FOLD),
    ("HTTP version", framing.BAD_VERSION),
    ("PRI", framing.BAD_VERSION),  # HTTP/2 with prior knowledge: hypercorn's only
    ("header", framing.BAD_HEADER_LINE),
    ("Header", framing.BAD_HEADER_LINE),
)


def refusal_for_parser_error(message: str, *, in_body: bool) -> framing.Refusal:
    """What llhttp's error `message` refuses (`in_body`: the head was complete)."""
    for text, refusal in _PARSER_REFUSALS:
        if text in message:
            return refusal
    return framing.BAD_CHUNK if in_body else framing.BAD_REQUEST_LINE


# The end of a request head, with either line end (bare LF allowed, RFC 9112 section 2.2).
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_BARE_LF = re.compile(rb"(?<!\r)\n")


def crlf_head(data: bytes, before: bytes = b"") -> bytes:
    """`data` (in a request head) with the head's bare LF line ends made CRLF.

    llhttp refuses a bare LF, which RFC 9112 lets a server accept and hypercorn's h11 does;
    the head is re-serialised with CRLF before forwarding either way. `before`: the last
    bytes of this head already received (a CR there pairs with an LF starting `data`; an
    LF there may end the head with one starting `data`). Only the first head is rewritten:
    the body after it is left as it is (a later pipelined head with bare LF is refused).
    """
    if data.count(b"\n") == data.count(b"\r\n") and not (before and data[:1] == b"\n"):
        return data  # the common case: no bare LF at all
    joined = before + data
    end = _HEAD_END.search(joined)
    cut = len(joined) if end is None else end.end()
    head = _BARE_LF.sub(b"\r\n", joined[:cut])
    # The substitution only looks back: `before`'s own rewrite is a prefix of `head`.
    return head[len(_BARE_LF.sub(b"\r\n", before)) :] + joined[cut:]


class _Refused(Exception):
    """Raised in a parser callback to stop parsing; the protocol answers `refusal`."""

    def __init__(self, refusal: framing.Refusal, detail: str) -> None:
        super().__init__(detail)
        self.refusal = refusal


class _CycleTransport:
    """What a request cycle writes to: the transport, with `close` that may linger."""

    __slots__ = ("close", "get_extra_info", "is_closing", "write")

    def __init__(self, transport: asyncio.Transport, close: Any) -> None:
        self.write = transport.write
        self.is_closing = transport.is_closing
        self.get_extra_info = transport.get_extra_info
        self.close = close


class _Cycle(RequestResponseCycle):
    """uvicorn's request cycle: 503 and a count when the grace runs out."""

    host: HostState

    async def run_asgi(self, app: Any) -> None:
        try:
            await app(self.scope, self.receive, self.send)
        except asyncio.CancelledError:  # the grace ran out (the listener cancels)
            self.host.cut += 1
            if not self.response_started and not self.disconnected:
                self.keep_alive = False
                head = [
                    (b"content-type", b"text/plain; charset=utf-8"),
                    (b"content-length", b"%d" % len(_CUT_BODY)),
                    (b"connection", b"close"),
                ]
                self.send_now(503, head, _CUT_BODY)
            else:
                self.transport.close()
        except BaseException as exc:
            self.logger.error("Exception in ASGI application", exc_info=exc)
            if not self.response_started:
                await self.send_500_response()
            else:
                self.transport.close()
        else:
            if not self.response_started and not self.disconnected:
                self.logger.error("ASGI callable returned without starting response.")
                await self.send_500_response()
            elif not self.response_complete and not self.disconnected:
                self.logger.error("ASGI callable returned without completing response.")
                self.transport.close()
        finally:
            self.on_response = _nothing

    def send_now(self, status: int, head: list[tuple[bytes, bytes]], body: bytes) -> None:
        """A whole response written at once (no awaiting: also from a cancelled task)."""
        self.response_started = self.response_complete = True
        self.transport.write(_response_bytes(status, head, body))
        self.transport.close()


def _name_every_status() -> None:
    """uvicorn's status lines for codes Python does not name carry no phrase (`HTTP/1.1
    599 `), which h2load counts as failed: give them their class's name, as the hypercorn
    layer does. uvicorn's table is module-global: this runs in the serving process only."""
    for status, line in STATUS_LINE.items():
        if line.endswith(b" \r\n"):
            STATUS_LINE[status] = b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status))


def _nothing() -> None:
    return None


def _response_bytes(status: int, head: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    line = STATUS_LINE.get(status) or b"HTTP/1.1 %d %s\r\n" % (status, reason_phrase(status))
    parts = [line]
    for name, value in head:
        parts += [name, b": ", value, b"\r\n"]
    parts += [b"\r\n", body]
    return b"".join(parts)


class UvicornProtocol(HttpToolsProtocol):
    """uvicorn's HttpToolsProtocol with the changes the module docstring lists."""

    host: HostState  # set on the class by `protocol_class`
    max_requests: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.logger = log
        self.access_log = False
        self._in_head = False
        self._between = True  # no request begun since the last one ended: a head is next
        self._head_tail = b""  # the last bytes of a head still incomplete (for crlf_head)
        self._head_started_here = False
        self._head_bytes = 0
        self._requests = 0
        self._refused = False
        self._pending: _Refused | None = None  # raised in a parser callback
        self._open = 0  # requests whose response is not complete yet (pipelining)
        self._deferred: framing.Refusal | None = None  # answered after those responses
        self._upgraded = False  # a non-WebSocket Upgrade: llhttp parses no more
        self._lingering = False
        self._linger_deadline = 0.0
        self._linger_read = 0
        self._linger_timer: asyncio.TimerHandle | None = None
        self._cycle_transport: _CycleTransport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._cycle_transport = _CycleTransport(transport, self.close_after_response)
        # Idle from the start, as under hypercorn: a client that never completes a request
        # head is closed after the keep-alive timeout (uvicorn arms it after a response).
        self._arm_idle_timer()

    def _arm_idle_timer(self) -> None:
        self._unset_keepalive_if_required()
        self.timeout_keep_alive_task = self.loop.call_later(
            self.timeout_keep_alive, self.timeout_keep_alive_handler
        )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        super().connection_lost(exc)
        # The cycle's `close` is a method of this protocol, which holds the cycle transport:
        # a reference cycle that only the collector (rarely run under `serve`) would free,
        # with the transport, its socket and, under TLS, the SSL objects. Nothing is left to
        # close once the connection is lost.
        if self._cycle_transport is not None:
            self._cycle_transport.close = _nothing
        self._unset_keepalive_if_required()

    def eof_received(self) -> None:
        # The client's FIN: the transport closes now (prompt close), lingering or not.
        return None

    # --- reading -------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            self._keep_lingering(len(data))
            return
        if self._refused or self._upgraded:
            return  # a refusal or a closing upgrade: nothing more is parsed
        # The idle timer keeps running while a head trickles in (stopped when one is
        # complete, in on_headers_complete): a byte now and then does not hold a connection.
        self._head_started_here = False
        if self._in_head or self._between:
            data = crlf_head(data, self._head_tail)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError:
            refused = self._pending
            if refused is None:
                raise
            self._refuse(refused.refusal, str(refused))
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
                return
            self._upgraded = True  # the request runs; the connection closes after it
            if self.cycle is not None:
                self.cycle.keep_alive = False
            return
        except httptools.HttpParserError as exc:
            in_body = not self._in_head and self.cycle is not None and self.cycle.more_body
            self._refuse(refusal_for_parser_error(str(exc), in_body=in_body), str(exc))
            return
        self._head_tail = data[-3:] if self._in_head else b""
        if self._in_head:
            if not self._head_started_here:
                self._head_bytes += len(data)
            if self._head_bytes > framing.MAX_HEADER_SECTION_BYTES:
                self._refuse(framing.HEADERS_TOO_LARGE, "header section over the limit")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head = True
        self._between = False
        self._head_started_here = True
        self._head_bytes = 0

    def on_headers_complete(self) -> None:
        http_version = self.parser.get_http_version()
        method = self.parser.get_method().decode("ascii")
        scope = self.scope
        scope["method"] = method
        if http_version != "1.1":
            scope["http_version"] = http_version
        if self.parser.should_upgrade() and self._should_upgrade():
            self._in_head = False
            return
        framed = framing.inspect(method, self.url, http_version, self.headers)
        if isinstance(framed, framing.Refusal):
            self._pending = _Refused(framed, framed.reason)
            raise self._pending  # httptools raises HttpParserCallbackError from feed_data
        self._in_head = False
        self._unset_keepalive_if_required()  # a request runs: not idle
        # As hypercorn builds them: an absolute-form target keeps its authority in
        # raw_path (the proxy uses it as Host, see framing.origin_form).
        raw_path, _, query = self.url.partition(b"?")
        path = raw_path.decode("ascii")
        scope["path"] = unquote(path) if "%" in path else path
        scope["raw_path"] = raw_path
        scope["query_string"] = query
        self._requests += 1
        keep_alive = (
            http_version != "1.0"
            and self.parser.should_keep_alive()
            and self._requests < self.max_requests
        )
        existing = self.cycle
        transport = self._cycle_transport
        assert transport is not None
        cycle = self.cycle = _Cycle(
            scope=scope,
            transport=transport,  # type: ignore[arg-type]
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=False,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=keep_alive,
            on_response=self.on_response_complete,
        )
        cycle.host = self.host
        self._open += 1
        if existing is None or existing.response_complete:
            self._start_asgi_task(cycle, self.app)
        else:  # pipelined: queued until the one before is answered
            self.flow.pause_reading()
            self.pipeline.appendleft((cycle, self.app))

    def on_message_complete(self) -> None:
        self._between = True
        super().on_message_complete()

    def _unsupported_upgrade_warning(self) -> None:
        return None  # an h2c upgrade offer is declined by serving HTTP/1.1: nothing to log

    # --- refusing and closing ---------------------------------------------------------------

    def _refuse(self, refusal: framing.Refusal, detail: str) -> None:
        """Answer `refusal` after the responses to earlier pipelined requests (none when
        the refused request's own response has begun), then close, lingering."""
        self._refused = True  # nothing more is parsed
        REFUSALS.record(self.host, refusal, self.client, detail)
        cycle = self.cycle
        in_body = not (self._in_head or self._between)
        if in_body and cycle is not None and not cycle.response_complete:
            # The latest request's body broke mid-way: its app sees the client gone.
            cycle.disconnected = True
            cycle.message_event.set()
            self._open -= 1  # it will not complete (a disconnected cycle sends nothing)
            for entry in list(self.pipeline):
                if entry[0] is cycle:
                    self.pipeline.remove(entry)
            if cycle.response_started:
                self._linger()
                return
        if self._open > 0:
            self._deferred = refusal  # after the earlier responses (on_response_complete)
            return
        self._answer(refusal)

    def _answer(self, refusal: framing.Refusal) -> None:
        body = refusal.body()
        head = [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
        ]
        self.transport.write(_response_bytes(refusal.status, head, body))
        self._linger()

    def on_response_complete(self) -> None:
        self._open -= 1
        super().on_response_complete()
        deferred = self._deferred
        if deferred is not None and self._open == 0 and not self.transport.is_closing():
            self._deferred = None
            self._answer(deferred)

    def close_after_response(self) -> None:
        """A cycle closes the connection: linger while the request's body is unread."""
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.disconnected:
            self._linger()
        else:
            self.transport.close()

    def _linger(self) -> None:
        transport = self.transport
        if transport.is_closing():
            return
        try:
            transport.write_eof()  # after what is buffered: our answer goes out first
        except (NotImplementedError, OSError, RuntimeError):  # TLS: no half-close
            transport.close()
            return
        self._lingering = True
        self._unset_keepalive_if_required()
        self._linger_deadline = self.loop.time() + LINGER_TOTAL_S
        self._linger_timer = self.loop.call_later(LINGER_IDLE_S, transport.close)

    def _keep_lingering(self, size: int) -> None:
        self._linger_read += size
        remaining = self._linger_deadline - self.loop.time()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if remaining <= 0 or self._linger_read > LINGER_MAX_BYTES:
            self.transport.close()
            return
        self._linger_timer = self.loop.call_later(
            min(LINGER_IDLE_S, remaining), self.transport.close
        )

    def shutdown(self) -> None:
        """Draining: close when idle, else `Connection: close` on the response in flight."""
        cycle = self.cycle
        if cycle is None or cycle.response_complete:
            if not self._lingering:
                self.transport.close()
        else:
            cycle.keep_alive = False


def protocol_class(host: HostState, *, max_requests: int) -> type[UvicornProtocol]:
    """A UvicornProtocol class bound to one listener's `host` state."""
    _name_every_status()
    return type(
        "ListenerUvicornProtocol",
        (UvicornProtocol,),
        {"host": host, "max_requests": max_requests},
    )


class UvicornWSProtocol(WSProtocol):
    """uvicorn's wsproto WebSocket protocol, reporting a lost connection as 1006."""

    def connection_lost(self, exc: Exception | None) -> None:
        # uvicorn says 1005 (no status) for a session lost without a close frame after the
        # handshake; RFC 6455 section 7.1.5 calls that 1006, and the proxy tells the primary
        # 1001 for it. uvicorn picks 1006 when `response_started` (a refused handshake), so
        # setting it here, where the connection is gone, changes only that code.
        self.response_started = True
        super().connection_lost(exc)
