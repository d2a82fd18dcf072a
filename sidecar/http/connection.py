"""One HTTP/1.1 client connection: an asyncio Protocol driving `sidecar.http.http1`'s parser.

One job past 400 lines: the connection's states, flow control and early answers are
one state machine, clearer in one place.

How this works
--------------
The protocol callbacks do no parsing: `data_received` appends the chunk to a list and wakes the
one coroutine that may be waiting (a connection serves one exchange at a time). That coroutine
asks the parser for the next thing (the head, body bytes, the end) and feeds it the pending
chunks only when the parser needs more, so the parser never buffers more than what the
transport delivered since it last asked, and the pending list is bounded by pausing the
transport past `READ_HIGH_WATER_BYTES` (backpressure from a slow consumer reaches the server
through TCP).

The request head is written by `http1.encode_request_head` (one join, validated in one regex
pass). A bytes body goes out with the head in one `write`. A streamed body is written by a
small sender task, so the coroutine waiting for the response head also sees a response that
arrives before the upload ends (say a 413): the sender is then cancelled and the connection,
its request unfinished, is never reused. A server that answers early and closes at once
makes our next write fail (its kernel resets a closed socket that gets data); asyncio then
stops reading the transport, so `connection_lost` salvages what the kernel still holds
for us: the answer wins over the reset.

A connection is reusable only when the request was sent whole before any of the response
arrived (an early answer may leave the rest of our request unread), the response was read
to its end, both sides allow keep-alive (no `Connection: close`, not HTTP/1.0, not a body
delimited by EOF) and nothing arrived beyond the response.

The error tree lives here because this is the one place foreign exceptions are translated:
`_translate` maps OSError (connect, transport) and `http1.ProtocolError`s to `ClientError`
subclasses, each carrying the short `reason` the engine reports as a failure reason.
"""

from __future__ import annotations

import asyncio
import os
import ssl
from collections.abc import AsyncIterable, Callable
from typing import Literal, cast

from sidecar.http import http1
from sidecar.http.http1 import Head, ProtocolError, ResponseParser, chunk_frame
from sidecar.http.syntax import CHUNKED, Origin

# Pause reading once this much unread response data is pending: enough for a few large reads
# (the transport reads up to 64-256 KiB at a time), small enough to bound memory per connection.
READ_HIGH_WATER_BYTES = 256 * 1024
# A bytes body up to this size is copied into the head's buffer so both leave in one write; a
# larger one is handed to the transport as a separate buffer instead of being copied.
COALESCE_BODY_BYTES = 64 * 1024
# Largest response head we accept (h11's default is 16 KiB; some upstreams send big cookies).
MAX_HEAD_BYTES = http1.MAX_HEAD_BYTES

# When the connection breaks (a reset) while we are still writing the request, the answer
# the server sent before it may still be unread in the kernel: asyncio stops reading a
# transport whose write failed. Up to this much is salvaged from the socket before it is
# closed: an early answer (a 413 or 401 with a short page) fits with room to spare.
SALVAGE_MAX_BYTES = READ_HIGH_WATER_BYTES
SALVAGE_READ_BYTES = 64 * 1024

_LAST_CHUNK = b"0\r\n\r\n"

Body = bytes | AsyncIterable[bytes]


class ClientError(Exception):
    """Base of every error the client raises; `reason` is a short failure reason."""

    reason: str = "client"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ConnectError(ClientError):
    """The TCP (or TLS) connection could not be opened within the connect timeout."""

    reason = "connect"


class ReadError(ClientError):
    """The connection was reset or closed before the response was complete."""

    reason = "reset"


class WriteError(ClientError):
    """The request could not be written: the connection is gone."""

    reason = "reset"


class RemoteProtocolError(ClientError):
    """The server sent something that is not valid HTTP/1.1."""

    reason = "protocol"


class LocalProtocolError(ClientError):
    """The request itself is invalid HTTP/1.1 (bad header, framing mismatch)."""

    reason = "protocol"


# What the boundary translates; anything else (the caller's own exceptions, cancellation)
# passes through unchanged.
_FOREIGN = (OSError, ProtocolError)


def _translate(exc: BaseException, phase: Literal["connect", "read", "write"]) -> ClientError:
    """The one boundary where OSError and wire-format errors become `ClientError`s.

    Used as `except _FOREIGN as exc: raise _translate(exc, phase) from exc` (a plain function,
    not a context manager: this is on the per-request path).
    """
    if isinstance(exc, http1.RequestError):
        return LocalProtocolError(str(exc))
    if isinstance(exc, http1.Truncated):  # the server hung up mid-response: a reset
        return ReadError(f"server closed the connection: {exc}")
    if isinstance(exc, http1.ResponseError):
        return RemoteProtocolError(str(exc))
    # OSError, including TimeoutError (connect), ssl.SSLError and socket.gaierror
    message = f"{type(exc).__name__}: {exc}"
    if phase == "connect":
        return ConnectError(message)
    if phase == "write":
        return WriteError(message)
    return ReadError(message)


async def _connect(
    endpoint: Origin,
    factory: Callable[[], asyncio.BaseProtocol],
    *,
    timeout_s: float,
    ssl_context: ssl.SSLContext | None,
    server_name: str | None,
) -> asyncio.BaseTransport:
    """TCP to `endpoint` for the protocol `factory` makes (and with `ssl_context`, the TLS
    handshake: SNI and the name checked are `server_name`, else the endpoint's host), within
    `timeout_s`."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            transport, _ = await loop.create_connection(
                factory,
                endpoint.host,
                endpoint.port,
                ssl=ssl_context,
                server_hostname=(server_name or endpoint.host) if ssl_context is not None else None,
            )
    except _FOREIGN as exc:
        raise _translate(exc, "connect") from exc
    return transport


async def open_connection(
    endpoint: Origin,
    *,
    timeout_s: float,
    ssl_context: ssl.SSLContext | None,
    server_name: str | None = None,
) -> Connection:
    """Connect (and with `ssl_context`, handshake: SNI and the name checked are
    `server_name`, else the endpoint's host) within `timeout_s`."""
    conn = Connection(asyncio.get_running_loop())
    await _connect(
        endpoint,
        lambda: conn,
        timeout_s=timeout_s,
        ssl_context=ssl_context,
        server_name=server_name,
    )
    return conn


async def open_stream(
    endpoint: Origin,
    *,
    timeout_s: float,
    ssl_context: ssl.SSLContext | None,
    server_name: str | None = None,
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A plain byte stream to `endpoint`, for a protocol that takes the connection over
    (a WebSocket session): opened as `open_connection` opens one, errors translated alike."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
    transport = await _connect(
        endpoint,
        lambda: protocol,
        timeout_s=timeout_s,
        ssl_context=ssl_context,
        server_name=server_name,
    )
    return reader, asyncio.StreamWriter(
        cast(asyncio.WriteTransport, transport), protocol, reader, loop
    )


class Connection(asyncio.Protocol):
    """One keep-alive connection; owned by at most one exchange at a time."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self._parser = ResponseParser()
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._eof = False  # the server closed its side (or the connection is gone)
        self._eof_fed = False  # the parser has been told about the EOF
        self._lost_exc: Exception | None = None
        self._reading_paused = False
        self._writing_paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._sender: asyncio.Task[None] | None = None
        self._request_done = True  # our side of the exchange was sent whole
        self._keep_alive = True  # our request did not say `Connection: close`
        self.closed: asyncio.Future[None] = loop.create_future()
        self.received_any = False  # any byte since the current request began (retry rule)
        self.idle_since = 0.0

    # -- asyncio.Protocol callbacks: record and wake, nothing else ------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._buffered += len(data)
        self.received_any = True
        if self._buffered > READ_HIGH_WATER_BYTES and not self._reading_paused:
            assert self.transport is not None
            self._reading_paused = True
            self.transport.pause_reading()
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False  # let the transport close: HTTP/1.1 has no use for a half-open socket

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None and not self._parser.done:
            self._salvage()
        self._eof = True
        self._lost_exc = exc
        self._wake()
        self._wake_drain()
        if not self.closed.done():
            self.closed.set_result(None)

    def _salvage(self) -> None:
        """Read what the kernel still holds for us (see SALVAGE_MAX_BYTES). The socket is
        still open during connection_lost (asyncio and uvloop close it right after)."""
        transport = self.transport
        if transport is None or transport.get_extra_info("ssl_object") is not None:
            return  # TLS records cannot be decrypted behind the SSL protocol's back
        sock = transport.get_extra_info("socket")
        fd = sock.fileno() if sock is not None else -1
        got = 0
        while fd >= 0 and got < SALVAGE_MAX_BYTES:
            try:
                data = os.read(fd, SALVAGE_READ_BYTES)
            except OSError:  # nothing more (EAGAIN), or the reset itself after the data
                break
            if not data:
                break
            got += len(data)
            self._chunks.append(data)
            self._buffered += len(data)
            self.received_any = True

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake_drain()

    def _wake(self, _task: object = None) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_drain(self) -> None:
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- state --------------------------------------------------------------------------

    @property
    def is_stale(self) -> bool:
        """An idle connection the server closed or wrote to meanwhile: not usable."""
        return (
            self._eof
            or bool(self._chunks)
            or self.transport is None
            or (self.transport.is_closing())
        )

    @property
    def reusable(self) -> bool:
        p = self._parser
        return (
            self._request_done
            and self._keep_alive
            and p.done
            and p.keep_alive
            and not p.trailing_data  # bytes after the response: the next one would be garbled
            and not self.is_stale
        )

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop the connection lives on (cheaper than asking asyncio for it: on Python
        3.11 `get_running_loop()` makes a getpid system call each time)."""
        return self._loop

    def start_next_cycle(self, now: float) -> None:
        self.idle_since = now

    def close(self, *, abort: bool) -> None:
        """Close now; `abort` resets the connection (an exchange broke off mid-way)."""
        sender, self._sender = self._sender, None
        if sender is not None:
            if not sender.done():
                sender.cancel()
            elif not sender.cancelled():
                sender.exception()  # retrieved: the exchange is over, nobody else will ask
        transport = self.transport
        if transport is not None:
            if abort:
                transport.abort()
            else:
                transport.close()

    # -- one exchange -------------------------------------------------------------------

    def send_request(
        self, method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: Body
    ) -> None:
        """Write the head and, for a bytes body, the whole body; start the sender otherwise."""
        transport = self.transport
        assert transport is not None
        self.received_any = False
        try:
            head, framing, self._keep_alive = http1.encode_request_head(method, target, headers)
            if self._eof:
                raise ConnectionResetError("connection closed by the server")
            self._parser.start(head_request=method == b"HEAD")
            if isinstance(body, bytes):
                self._request_done = True
                if framing == CHUNKED:
                    if body:
                        transport.writelines([head, *chunk_frame(body), _LAST_CHUNK])
                    else:
                        transport.write(head + _LAST_CHUNK)
                elif len(body) != framing:
                    self._request_done = False
                    raise http1.RequestError(_length_mismatch(len(body), framing))
                elif not body:
                    transport.write(head)
                elif len(body) <= COALESCE_BODY_BYTES:
                    transport.write(head + body)
                else:
                    transport.writelines([head, body])
                return
            self._request_done = False
            transport.write(head)
        except _FOREIGN as exc:
            raise _translate(exc, "write") from exc
        self._sender = self._loop.create_task(self._send_stream(body, framing))
        self._sender.add_done_callback(self._wake)

    async def _send_stream(self, body: AsyncIterable[bytes], framing: int) -> None:
        """The sender task: frames each chunk; stops quietly if the connection is gone."""
        transport = self.transport
        assert transport is not None
        chunked = framing == CHUNKED
        sent = 0
        # Only the framing checks and transport calls are translated: whatever the caller's
        # iterator raises (an aborted upload) must reach the caller unchanged.
        async for chunk in body:
            if self._eof or transport.is_closing():
                return  # the reader reports what happened (a response, or a reset)
            if not chunk:
                continue
            try:
                if chunked:
                    transport.writelines(chunk_frame(chunk))
                else:
                    sent += len(chunk)
                    if sent > framing:
                        raise http1.RequestError(_length_mismatch(sent, framing))
                    transport.write(chunk)
            except _FOREIGN as exc:
                raise _translate(exc, "write") from exc
            if self._writing_paused:
                await self._drain()
        if not (self._eof or transport.is_closing()):
            try:
                if chunked:
                    transport.write(_LAST_CHUNK)
                elif sent != framing:
                    raise http1.RequestError(_length_mismatch(sent, framing))
            except _FOREIGN as exc:
                raise _translate(exc, "write") from exc
            # A response that began before the upload ended was an early answer: the server
            # may never read what we wrote after it (a server that neither reads nor closes),
            # so the connection is not reused, as nginx's upstream keepalive rule.
            self._request_done = not self.received_any

    async def _drain(self) -> None:
        while self._writing_paused and not self._eof:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    async def receive_head(self) -> Head:
        """The final response head (1xx skipped). A sender still running is cancelled."""
        parser = self._parser
        while True:
            try:
                head = parser.next_head()
            except ProtocolError as exc:
                raise _translate(exc, "read") from exc
            if head is not None:
                break
            await self._more()
        transport = self.transport
        if transport is not None and transport.get_write_buffer_size():
            self._request_done = False  # answered before our request left: not reusable
        sender = self._sender
        if sender is not None:
            self._sender = None
            if not sender.done():
                # The server answered before the upload ended: stop sending. The request is
                # unfinished, so the connection will be closed rather than reused.
                sender.cancel()
                await asyncio.wait((sender,))
            failure = None if sender.cancelled() else sender.exception()
            if failure is not None and not isinstance(failure, ClientError):
                raise failure  # the caller's body iterator failed: the caller's own exception
        return head

    async def receive_body(self, sink: list[bytes] | None) -> int:
        """Read the body to its end in one call (appending to `sink` if given); its size."""
        parser = self._parser
        size = 0
        while True:
            try:
                data = parser.next_data()
            except ProtocolError as exc:
                raise _translate(exc, "read") from exc
            if data is None:
                await self._more()
            elif data:
                size += len(data)
                if sink is not None:
                    sink.append(data)
            else:
                return size

    async def receive_data(self) -> bytes | None:
        """The next body chunk as it arrives, or None at the end of the response."""
        parser = self._parser
        while True:
            try:
                data = parser.next_data()
            except ProtocolError as exc:
                raise _translate(exc, "read") from exc
            if data is None:
                await self._more()
            else:
                return data or None

    async def _more(self) -> None:
        """Give the parser what has arrived, the EOF, or else wait for the transport."""
        while True:
            if self._chunks:
                self._feed()
                return
            if self._eof:
                if self._eof_fed:  # pragma: no cover - the parser raises Truncated first
                    raise ReadError("server closed the connection")
                self._eof_fed = True
                lost = self._lost_exc
                if lost is not None and not self.received_any:
                    # e.g. ECONNRESET on a reused connection (retryable)
                    raise _translate(lost, "read") from lost
                self._parser.feed_eof()
                return
            sender = self._sender
            if sender is not None and sender.done() and not sender.cancelled():
                failure = sender.exception()
                if failure is not None:
                    self._sender = None
                    raise failure  # the body iterator's own exception, or a WriteError
            await self._wait()

    def _feed(self) -> None:
        chunks = self._chunks
        if len(chunks) == 1:
            self._parser.feed(chunks[0])
        else:
            self._parser.feed(b"".join(chunks))
        chunks.clear()
        self._buffered = 0
        if self._reading_paused:
            assert self.transport is not None
            self._reading_paused = False
            self.transport.resume_reading()

    async def _wait(self) -> None:
        self._waiter = self._loop.create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None


def _length_mismatch(size: int, declared: int) -> str:
    much = "much" if size > declared else "little"
    return f"too {much} data for declared Content-Length ({size} bytes, declared {declared})"
