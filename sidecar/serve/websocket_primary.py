"""The primary's side of a WebSocket session: wsproto's client over a connection of its own.

`upgrade_request()` builds the upgrade request from the client's scope and headers;
`PrimarySide` opens the connection (`ConnectionPool.open_stream`: TCP, or TLS for an https
primary), sends the request, reads the primary's answer, then reads and writes frames and
runs the closing handshake. It knows nothing of ASGI: `sidecar.serve.websocket` relays
between it and the client.

Errors: the connection's own (`ClientError` while connecting, `OSError` later), wsproto's
(`RemoteProtocolError` for an invalid handshake answer) and `PrimaryFailed` for a broken
session, whose message is the reason the client is given.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    CloseConnection,
    Event,
    RejectConnection,
    RejectData,
    Request,
)
from wsproto.frame_protocol import CloseReason

from sidecar.asgi import Scope
from sidecar.http.client import ConnectionPool
from sidecar.http.headers import forward_request_headers

# Bytes read from the primary at a time.
READ_BYTES = 64 * 1024
# After sending our close frame, how long to wait for the primary's (RFC 6455's closing
# handshake); a primary that never answers is cut off then.
CLOSE_WAIT_S = 1.0
NO_STATUS = 1005  # a close frame without a code

# Request headers the handshake writes itself (wsproto) or that are per hop.
_HANDSHAKE_HEADERS = frozenset(
    {
        b"host",
        b"sec-websocket-key",
        b"sec-websocket-version",
        b"sec-websocket-protocol",
        b"sec-websocket-extensions",
        b"sec-websocket-accept",
    }
)


class PrimaryFailed(Exception):
    """The primary's connection broke mid-session; the message is the client's reason."""


class PrimaryClosed(OSError):
    """The primary closed the connection before answering the upgrade."""

    def __str__(self) -> str:
        return "the primary closed the connection before answering"


def upgrade_request(scope: Scope, headers: list[tuple[bytes, bytes]], default_host: str) -> Request:
    """The upgrade request for the primary: the client's target, `Host` (`default_host`
    without one), headers as for HTTP minus the handshake's own, and subprotocols."""
    client = scope.get("client")
    scheme = "https" if scope.get("scheme") == "wss" else "http"
    host = default_host.encode("ascii")
    for name, value in headers:
        if name.lower() == b"host" and value:
            host = value
            break
    out = [
        (n, v)
        for n, v in forward_request_headers(
            headers, client=client[0] if client else None, scheme=scheme
        )
        if n not in _HANDSHAKE_HEADERS
    ]
    raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
    query: bytes = scope.get("query_string", b"")
    target = raw_path + b"?" + query if query else raw_path
    return Request(
        host=host.decode("latin-1"),
        target=target.decode("latin-1"),
        extra_headers=out,
        subprotocols=list(scope.get("subprotocols") or ()),
    )


class PrimarySide:
    """wsproto's client side on one connection to the primary."""

    def __init__(self, pool: ConnectionPool, idle_timeout_s: float) -> None:
        self.pool = pool
        self.idle_timeout_s = idle_timeout_s  # the longest a frame may wait to be written
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.pending: list[Event] = []  # frames that arrived with the primary's 101

    @property
    def remote_closing(self) -> bool:
        """The primary's close frame came first (ours has not been sent)."""
        return self.ws.state is ConnectionState.REMOTE_CLOSING

    async def upgrade(self, request: Request) -> AcceptConnection | RejectConnection:
        """Connect, send the upgrade request, return the primary's answer (a refusal's body
        follows from `refusal_body()`)."""
        self.reader, self.writer = await self.pool.open_stream()
        await self.write(self.ws.send(request))
        ws = self.ws
        while True:
            data = await self._read()
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, AcceptConnection):
                    self.pending = list(ws.events())
                    return event
                if isinstance(event, RejectConnection):
                    return event
                if isinstance(event, CloseConnection):  # EOF before any answer
                    raise PrimaryClosed()
            if not data:
                raise PrimaryClosed()

    async def refusal_body(self) -> AsyncIterator[tuple[bytes, bool]]:
        """The refusal's body as it arrives: (chunk, last)."""
        ws = self.ws
        while True:
            for event in ws.events():
                if isinstance(event, RejectData):
                    yield bytes(event.data), event.body_finished
                    if event.body_finished:
                        return
            data = await self._read()
            ws.receive_data(data or None)

    async def events(self) -> list[Event]:
        """The next frames from the primary (the pending ones first); PrimaryFailed when
        the connection ended without any."""
        if self.pending:
            events, self.pending = self.pending, []
            return events
        ws = self.ws
        while True:
            data = await self._read()
            if ws.state is ConnectionState.CLOSED and data:
                continue  # bytes after the close: ignored
            ws.receive_data(data or None)
            events = list(ws.events())
            if events:
                return events
            if not data:
                raise PrimaryFailed("the primary closed the connection")

    async def send(self, event: Event) -> None:
        """One frame to the primary; PrimaryFailed when it stays unwritten (the primary
        stopped reading) for `idle_timeout_s`."""
        await self.write(self.ws.send(event), stall=True)

    async def close_handshake(self, code: int, reason: str) -> None:
        """Our close frame, then the primary's answer (bounded by CLOSE_WAIT_S)."""
        ws = self.ws
        if ws.state is not ConnectionState.OPEN:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(CLOSE_WAIT_S):
                if code == NO_STATUS:  # wsproto sends a close without a code for the enum only
                    event = CloseConnection(code=CloseReason.NO_STATUS_RCVD)
                else:
                    event = CloseConnection(code=code, reason=reason or None)
                await self.write(ws.send(event))
                while not self._closed():
                    data = await self._read()
                    ws.receive_data(data or None)
                    for _ in ws.events():
                        pass
                    if not data:
                        break

    def close(self) -> None:
        writer, self.writer = self.writer, None
        if writer is None:
            return
        transport = writer.transport
        if transport.get_write_buffer_size() == 0:
            transport.close()  # a FIN: nothing left to write
        else:
            transport.abort()  # unsent bytes to a primary that stopped reading: a reset

    # --- the connection ------------------------------------------------------------------

    def _closed(self) -> bool:
        return self.ws.state is ConnectionState.CLOSED

    async def _read(self) -> bytes:
        assert self.reader is not None
        return await self.reader.read(READ_BYTES)

    async def write(self, data: bytes, *, stall: bool = False) -> None:
        writer = self.writer
        assert writer is not None
        writer.write(data)
        if writer.transport.get_write_buffer_size() == 0:
            return  # all in the kernel's buffer already: the common case, no timer needed
        if not stall:
            await writer.drain()
            return
        try:
            async with asyncio.timeout(self.idle_timeout_s):
                await writer.drain()
        except TimeoutError:
            raise PrimaryFailed(
                f"the primary stopped reading for {self.idle_timeout_s:g}s"
            ) from None
