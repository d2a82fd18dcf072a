"""The HTTP/1.1 and HTTP/2 protocols of sidecar's listeners: hypercorn's, with the fixes
that sidecar/serve/host_protocol.py describes (strict parsing and counted refusals, reason
phrases, draining, prompt close on EOF, the cut-off answer), and what they share with it:
the listener's `HostState` and the refusal counters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from itertools import chain
from typing import Any, cast

import h2.errors
import h2.events
import h2.exceptions
import h11
from hypercorn.events import Closed, RawData, Updated
from hypercorn.protocol.events import Body, EndBody, Response, StreamClosed
from hypercorn.protocol.h2 import H2Protocol as StockH2Protocol
from hypercorn.protocol.h11 import H11Protocol as StockH11Protocol
from hypercorn.protocol.http_stream import HTTPStream
from hypercorn.protocol.ws_stream import WSStream
from hypercorn.utils import filter_pseudo_headers
from hyperframe.frame import GoAwayFrame
from priority.priority import MissingStreamError

from sidecar.http import framing
from sidecar.serve import metrics as serve_metrics
from sidecar.serve.strict_h11 import RequestRefused, StrictConnection

log = logging.getLogger("sidecar.host")

# The name of the attribute that marks a hypercorn Config as sidecar's proxy listener.
MARK_ATTR = "sidecar_host"
# Set in the scope of a request cancelled when the grace ran out.
CUT_SCOPE_KEY = "sidecar.cut"
_TEXT_PLAIN = (b"content-type", b"text/plain; charset=utf-8")
_CLOSE = (b"connection", b"close")
_CUT_BODY = b"Service Unavailable: the proxy shut down before the primary answered\n"
_REASONS = {status.value: status.phrase.encode("ascii") for status in HTTPStatus}
# For a status outside http.HTTPStatus: the name of its class (RFC 9110 section 15).
_CLASS_REASONS = {
    1: b"Informational",
    2: b"Successful",
    3: b"Redirection",
    4: b"Client Error",
    5: b"Server Error",
}


@dataclass(slots=True)
class HostState:
    """A listener's settings for this layer, and what it reports to server.py."""

    # Refusals count in the proxy's metrics (sidecar_refused_requests_total and
    # sidecar_requests_total); not for the admin listener's.
    count_refusals: bool
    cut: int = 0  # requests cancelled when the grace ran out


def reason_phrase(status: int) -> bytes:
    return _REASONS.get(status) or _CLASS_REASONS.get(status // 100, b"Unknown")


class _Refusals:
    """Counts and logs refusals; the metric children of each (label, status), resolved once."""

    def __init__(self) -> None:
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def record(self, host: HostState, refusal: framing.Refusal, client: Any, detail: str) -> None:
        if log.isEnabledFor(logging.DEBUG):
            peer = f"{client[0]}:{client[1]}" if client else "?"
            log.debug("refused a request from %s: %s (%s)", peer, refusal.label, detail)
        if not host.count_refusals:
            return
        key = (refusal.label, refusal.status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                serve_metrics.refused_request(refusal.label),
                serve_metrics.primary_requests(f"{refusal.status // 100}xx"),
            )
        children[0].inc()
        children[1].inc()


REFUSALS = _Refusals()


class H11Protocol(StockH11Protocol):
    """hypercorn's HTTP/1.1 protocol with strict parsing, counted refusals, reason phrases,
    `Connection: close` while draining and a prompt close on EOF."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.host: HostState = getattr(self.config, MARK_ATTR)
        self.connection = StrictConnection(self.config.h11_max_incomplete_size)
        # Writes `bytes` to the transport now (no await); set by the TCP layer. Without it
        # a response head is written at once instead of held (see _hold).
        self.write_now: Callable[[bytes], None] | None = None
        self._held = b""  # a response head not written yet
        self._flush_handle: asyncio.Handle | None = None
        # Once per connection: on Python 3.11 get_running_loop() makes a getpid system call.
        self._loop = asyncio.get_running_loop()

    def wants_linger(self) -> bool:
        conn = self.connection
        if not isinstance(conn, StrictConnection):  # a WebSocket pass-through
            return False
        return (
            conn.their_state is h11.SEND_BODY
            or conn.their_state is h11.ERROR
            or conn.stray_bytes > 0
            or conn.unread_bytes > 0
        )

    async def before_close(self) -> None:
        return None

    async def handle(self, event: Any) -> None:
        if isinstance(event, Closed):
            # The client's FIN (or a failed write): close our side now, idle or not.
            await self._flush_held()
            await self._close_stream()
            await self.send(Closed())
        else:
            await super().handle(event)

    async def stream_send(self, event: Any) -> None:
        if isinstance(event, Response) and event.status_code >= 200:
            await self._send_response(event)
        elif isinstance(event, (Body, EndBody)):
            await super().stream_send(event)  # through _send_h11_event: after the held head
        else:
            await self._flush_held()
            await super().stream_send(event)

    # --- the response head and its body in one write -------------------------------------
    #
    # hypercorn writes a response head, then each body message, then h11's (empty for a
    # Content-Length) end: a small response cost two writes, two system calls, and two
    # segments for the client to wake up for. The head is held instead until the body's
    # first message, which the app sends in the same step when it has it (the proxy's
    # small responses), else until the end of the current loop iteration (call_soon), so a
    # head is never delayed behind a body that is not there yet (a stream).

    async def _send_h11_event(self, event: Any) -> None:
        # hypercorn's, with the held head in front.
        try:
            data = self.connection.send(event) or b""
        except h11.LocalProtocolError:
            if self.connection.their_state != h11.ERROR:
                raise
            data = b""
        held = self._held
        if held:
            self._held = b""
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            data = held + data if data else held
        if data:
            await self.send(RawData(data=data))

    async def _hold(self, data: bytes) -> None:
        """A response head: written with the body's first message, or at the end of this
        loop iteration, whichever comes first."""
        if self.write_now is None or self._held:
            await self.send(RawData(data=self._held + data))
            self._held = b""
            return
        self._held = data
        self._flush_handle = self._loop.call_soon(self._write_held)

    def _write_held(self) -> None:
        self._flush_handle = None
        held, self._held = self._held, b""
        if held and self.write_now is not None:
            self.write_now(held)

    async def _flush_held(self) -> None:
        if self._held:
            if self._flush_handle is not None:
                self._flush_handle.cancel()
                self._flush_handle = None
            held, self._held = self._held, b""
            await self.send(RawData(data=held))

    async def _send_response(self, event: Response) -> None:
        status = event.status_code
        headers = event.headers
        body = b""
        if status == 500 and self._cut():
            status, body = 503, _CUT_BODY
            headers = [_TEXT_PLAIN, (b"content-length", str(len(body)).encode()), _CLOSE]
        headers = list(chain(headers, self.config.response_headers("h11")))
        if (
            self.context.terminated.is_set()
            or self.keep_alive_requests >= self.config.keep_alive_max_requests
        ) and not any(name.lower() == b"connection" for name, _ in headers):
            headers.append(_CLOSE)
        response = h11.Response(status_code=status, headers=headers, reason=reason_phrase(status))
        try:
            data = self.connection.send(response) or b""
            if body:
                data += self.connection.send(h11.Data(data=body)) or b""
        except h11.LocalProtocolError:  # hypercorn's _send_h11_event: sends nothing then
            if self.connection.their_state != h11.ERROR:
                raise
            return
        await self._hold(data)

    def _cut(self) -> bool:
        stream = self.stream
        return isinstance(stream, HTTPStream) and bool(stream.scope.get(CUT_SCOPE_KEY))

    async def _handle_events(self) -> None:
        # hypercorn's loop; protocol errors go to _refuse.
        while True:
            if self.connection.they_are_waiting_for_100_continue:
                await self._send_h11_event(
                    h11.InformationalResponse(
                        status_code=100,
                        headers=self.config.response_headers("h11"),
                        reason=b"Continue",
                    )
                )
            state = self.connection.their_state
            try:
                event = self.connection.next_event()
            except h11.RemoteProtocolError as error:
                await self._refuse(error, state)
                break
            if isinstance(event, h11.Request):
                await self.send(Updated(idle=False))
                await self._check_protocol(event)
                await self._create_stream(event)
            elif event is h11.PAUSED:
                await self.can_read.clear()
                await self.can_read.wait()
            elif (
                isinstance(event, h11.ConnectionClosed)
                or event is h11.NEED_DATA
                or self.stream is None
            ):
                break
            elif isinstance(event, h11.Data):
                await self.stream.handle(Body(stream_id=1, data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                await self.stream.handle(EndBody(stream_id=1))
            else:  # WebSocket pass-through (hypercorn's H11WSConnection yields its Data)
                await self.stream.handle(cast(Any, event))

    async def _refuse(self, error: h11.RemoteProtocolError, state: Any) -> None:
        refusal = _refusal_for(error, state, self.connection)
        if refusal is not None:
            REFUSALS.record(self.host, refusal, self.client, str(error))
            if self.connection.our_state in {h11.IDLE, h11.SEND_RESPONSE}:
                body = refusal.body()
                head = [_TEXT_PLAIN, (b"content-length", str(len(body)).encode()), _CLOSE]
                await self._send_h11_event(
                    h11.Response(
                        status_code=refusal.status,
                        headers=head + list(self.config.response_headers("h11")),
                        reason=reason_phrase(refusal.status),
                    )
                )
                await self._send_h11_event(h11.Data(data=body))
                await self._send_h11_event(h11.EndOfMessage())
        # A body that broke mid-way: the app sees the client gone (nothing more forwarded).
        await self._close_stream()
        await self.send(Closed())


def _refusal_for(error: h11.RemoteProtocolError, state: Any, conn: Any) -> framing.Refusal | None:
    """What a h11 error refuses; None when the client just went away mid-message."""
    if isinstance(error, RequestRefused):
        return error.refusal
    if isinstance(conn, StrictConnection) and conn.peer_closed:
        return None
    if state is h11.SEND_BODY:
        return framing.BAD_CHUNK  # a Content-Length body cannot be malformed
    if error.error_status_hint == 431:
        return framing.HEADERS_TOO_LARGE
    return framing.BAD_REQUEST_LINE


class H2Protocol(StockH2Protocol):
    """hypercorn's HTTP/2 protocol with GOAWAY when draining starts, REFUSED_STREAM after
    it, refusals as for HTTP/1.1, and a prompt close on EOF."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.host: HostState = getattr(self.config, MARK_ATTR)
        self._goaway_last: int | None = None  # the last stream id of our GOAWAY
        self._drain_watch: asyncio.Task[None] | None = None

    def wants_linger(self) -> bool:
        return True  # the client may have frames in flight

    async def initiate(
        self, headers: list[tuple[bytes, bytes]] | None = None, settings: bytes | None = None
    ) -> None:
        await super().initiate(headers, settings)
        # In the connection's task group (cancelled with it); ended on Closed.
        group = self.task_group._task_group  # type: ignore[attr-defined]
        self._drain_watch = group.create_task(self._watch_drain())

    async def _watch_drain(self) -> None:
        await self.context.terminated.wait()
        await self.goaway()

    async def before_close(self) -> None:
        await self.goaway()

    async def goaway(self) -> None:
        """GOAWAY(NO_ERROR) naming the last stream we still finish; streams go on.

        Sent as a raw frame: h2's close_connection() would also stop every open stream.
        """
        if self._goaway_last is not None or self.closed:
            return
        self._goaway_last = self.connection.highest_inbound_stream_id
        await self._flush()
        frame = GoAwayFrame(stream_id=0, last_stream_id=self._goaway_last, error_code=0)
        await self.send(RawData(data=frame.serialize()))

    async def handle(self, event: Any) -> None:
        if isinstance(event, RawData):
            # hypercorn's, counting a body that disagrees with its content-length (h2 makes
            # it a connection error: GOAWAY(PROTOCOL_ERROR), the HTTP/2 form of a 400) as
            # refused, like an HTTP/1.1 framing error.
            try:
                events = self.connection.receive_data(event.data)
            except h2.exceptions.ProtocolError as exc:
                if isinstance(exc, h2.exceptions.InvalidBodyLengthError):
                    REFUSALS.record(self.host, framing.INVALID_CL, self.client, str(exc))
                await self._flush()
                await self.send(Closed())
            else:
                await self._handle_events(events)
            return
        await super().handle(event)
        if isinstance(event, Closed):
            # hypercorn's send task stops on Closed without releasing the streams' buffers:
            # a response write waiting for room in a full one (a client that had stopped
            # granting window, then left) waited for good, and the proxy held the exchange
            # and its primary connection until idle_timeout. Closed buffers refuse writes.
            for buffer in list(self.stream_buffers.values()):
                await buffer.close()
            # h2's connection holds bound methods of itself (its frame dispatch table): a
            # cycle that kept each closed connection's HPACK tables and buffers until a
            # full collection. Nothing is received after Closed.
            self.connection._frame_dispatch_table.clear()
            watch, self._drain_watch = self._drain_watch, None
            if watch is not None and watch is not asyncio.current_task():
                # Dropped as well as cancelled: its CancelledError's traceback holds this
                # protocol, which held the task, a cycle that kept every closed connection's
                # TLS objects and buffers (~60 KB) until a full collection (RSS +30 MB per
                # 500 short HTTP/2-over-TLS connections).
                watch.cancel()
            await self.send(Closed())  # hypercorn waits for the idle timer instead

    async def stream_send(self, event: Any) -> None:
        if isinstance(event, (Response, EndBody)) and self._cut(event.stream_id):
            # The grace ran out: hypercorn's 500 (with a Connection header HTTP/2 forbids)
            # and its EndBody, which waits for the send task the same cancellation stops:
            # the connection, then the whole shutdown, hung. 503 straight onto the wire.
            if isinstance(event, Response):
                await self._answer_cut(event.stream_id)
            return
        if isinstance(event, StreamClosed) and isinstance(
            self.streams.get(event.stream_id), WSStream
        ):
            # A WebSocket over HTTP/2 that the client closed: hypercorn answers the close
            # frame but never ends the stream (no END_STREAM, its buffer kept for the
            # connection's life), so each such session held one of the connection's
            # streams. Ending the buffer makes the send task write the answer, then end.
            buffer = self.stream_buffers.get(event.stream_id)
            if buffer is not None:
                buffer.set_complete()
                self.priority.unblock(event.stream_id)
                await self.has_data.set()
        if isinstance(event, StreamClosed) and isinstance(
            self.streams.get(event.stream_id), HTTPStream
        ):
            await self._reset_unfinished(event.stream_id)
        if isinstance(event, StreamClosed) and self._goaway_last is not None:
            # hypercorn's, but its final GOAWAY must not name a higher stream than ours.
            await self._close_stream(event.stream_id)
            idle = not self.streams
            if idle:
                try:
                    self.connection.close_connection(last_stream_id=self._goaway_last)
                    await self._flush()
                except h2.exceptions.ProtocolError:
                    pass
            await self.send(Updated(idle=idle))
            return
        await super().stream_send(event)

    async def _reset_unfinished(self, stream_id: int) -> None:
        """RST_STREAM(INTERNAL_ERROR) for a response that ends without its end (the primary
        broke off mid-body): HTTP/2's way to say "cut", as closing the connection is
        HTTP/1.1's. hypercorn left such a stream open, and the client waited for the
        keep-alive timeout (75 s) to learn the response would not finish."""
        buffer = self.stream_buffers.get(stream_id)
        if buffer is None or buffer._complete:  # hypercorn's StreamBuffer: set by EndBody
            return
        await buffer.close()  # a write waiting for room returns
        del self.stream_buffers[stream_id]
        with contextlib.suppress(MissingStreamError):
            self.priority.remove_stream(stream_id)
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.connection.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.INTERNAL_ERROR)
        await self._flush()

    def _cut(self, stream_id: int) -> bool:
        stream = self.streams.get(stream_id)
        return isinstance(stream, HTTPStream) and bool(stream.scope.get(CUT_SCOPE_KEY))

    async def _answer_cut(self, stream_id: int) -> None:
        head = [(b":status", b"503"), _TEXT_PLAIN, (b"content-length", b"%d" % len(_CUT_BODY))]
        try:
            self.connection.send_headers(stream_id, head)
            self.connection.send_data(stream_id, _CUT_BODY, end_stream=True)
        except h2.exceptions.ProtocolError:  # the stream or connection is gone already
            return
        await self._flush()

    async def _handle_events(self, events: list[Any]) -> None:
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                await self._request_received(event)
            elif isinstance(event, h2.events.DataReceived):
                # hypercorn raises KeyError for a stream it has already answered and closed.
                stream = self.streams.get(event.stream_id)
                if stream is not None:
                    await stream.handle(Body(stream_id=event.stream_id, data=event.data))
                self.connection.acknowledge_received_data(
                    event.flow_controlled_length, event.stream_id
                )
            else:
                await super()._handle_events([event])
        await self._flush()

    async def _request_received(self, event: h2.events.RequestReceived) -> None:
        if self.context.terminated.is_set():
            await self.goaway()
        if self._goaway_last is not None and event.stream_id > self._goaway_last:
            # Opened after our GOAWAY: not processed, so the client may retry it elsewhere
            # (RFC 9113 section 8.7).
            self.connection.reset_stream(
                event.stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM
            )
        else:
            refusal = _h2_refusal(event.headers)
            if refusal is None:
                await self._create_stream(event)
                await self.send(Updated(idle=False))
            else:
                REFUSALS.record(self.host, refusal, self.client, refusal.reason)
                self._answer_refusal(event, refusal)
        if self.keep_alive_requests > self.config.keep_alive_max_requests:
            self.connection.close_connection()

    def _answer_refusal(self, event: h2.events.RequestReceived, refusal: framing.Refusal) -> None:
        stream_id = event.stream_id
        body = refusal.body()
        head = [
            (b":status", str(refusal.status).encode()),
            _TEXT_PLAIN,
            (b"content-length", str(len(body)).encode()),
        ]
        try:
            self.connection.send_headers(stream_id, head)
            self.connection.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.FlowControlError:  # a client with a zero window
            self.connection.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        if event.stream_ended is None:
            # The response is complete: the client may stop sending the body (RFC 9113 8.1).
            self.connection.reset_stream(stream_id, error_code=h2.errors.ErrorCodes.NO_ERROR)


def _h2_refusal(headers: list[tuple[bytes, bytes]]) -> framing.Refusal | None:
    method = path = protocol = b""
    for name, value in headers:
        if name == b":method":
            method = value
        elif name == b":path":
            path = value
        elif name == b":protocol":
            protocol = value
    if method == b"CONNECT" and protocol == b"websocket":
        # RFC 8441 (hypercorn offers it): a WebSocket over HTTP/2, relayed to the primary as
        # over HTTP/1.1 (serve/websocket.py); checked as the GET it stands for, not a tunnel.
        method = b"GET"
    framed = framing.inspect(
        method.decode("ascii", "replace"), path, "2", filter_pseudo_headers(headers)
    )
    return framed if isinstance(framed, framing.Refusal) else None
