"""A scriptable WebSocket primary on loopback (asyncio + wsproto's server side), for the
WebSocket pass-through tests.

    async with WSPrimary() as primary:         # ws on 127.0.0.1:<free port>, primary.url
    async with WSPrimary(ssl_context) as p:    # over TLS: https://..., p.server_names (SNI)
        primary.handshakes                       # recorded (target, headers) of each upgrade
        primary.closes                           # (code, reason) of every close frame received
        primary.pongs                            # payloads of the pongs received
        primary.connections_open                 # TCP connections open now

Paths: `/refuse` answers 403 with the body `refused by the primary` (no upgrade);
`/silent` accepts TCP but never answers; anything else is accepted and echoes every message
(text as text, bytes as bytes), choosing the subprotocol named in `?proto=NAME` when the
client offered it, and sending the response header `X-Primary: yes`.

Text commands (answered instead of echoed):
    "close CODE REASON"   close with that code and reason (CODE "none": a close without code)
    "die"                 drop the TCP connection without a close frame
    "ping PAYLOAD"        send a ping; its pong is recorded in `pongs`
    "fragments N TEXT"    send TEXT as one message in N fragments
    "bytes N"             send one binary message of N bytes (b"x" * N)
    "flood N SIZE"        send N binary messages of SIZE bytes (waiting for the writes)
    "headers"             send the upgrade request's headers as JSON
    "stall"               stop reading (the connection stays open)
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason

from tests.support.servers import LoopbackServer

READ_BYTES = 65536
REFUSAL_BODY = b"refused by the primary"


class WSPrimary(LoopbackServer):
    def __init__(self, context: ssl.SSLContext | None = None) -> None:
        """`context`: serve TLS with it (the URL is then https://); SNI names are recorded
        in `server_names`."""
        super().__init__()
        self.context = context
        self.server_names: list[str | None] = []
        if context is not None:
            context.sni_callback = self._sni
        self.handshakes: list[tuple[str, list[tuple[bytes, bytes]]]] = []
        self.closes: list[tuple[int, str]] = []
        self.pongs: list[bytes] = []
        self.connections_open = 0
        self.connections_total = 0

    def _sni(self, _obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.server_names.append(name)

    @property
    def url(self) -> str:
        scheme = "https" if self.context is not None else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def __aenter__(self) -> WSPrimary:
        await self._listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self.connections_open += 1
        self.connections_total += 1
        try:
            await self._serve(reader, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.connections_open -= 1
            writer.close()
            self._handlers.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ws = WSConnection(ConnectionType.SERVER)
        headers: dict[bytes, bytes] = {}
        parts: list[str | bytes | bytearray] = []
        while True:
            data = await reader.read(READ_BYTES)
            ws.receive_data(data or None)
            for event in ws.events():
                if isinstance(event, Request):
                    if not await self._upgrade(ws, event, writer, headers):
                        return
                elif isinstance(event, TextMessage | BytesMessage):
                    # A large message arrives in pieces as its frame does: reassemble.
                    parts.append(event.data)
                    if not event.message_finished:
                        continue
                    if isinstance(event, TextMessage):
                        text = "".join(str(p) for p in parts)
                        parts.clear()
                        if not await self._command(ws, text, writer, headers):
                            return
                    else:
                        body = b"".join(bytes(p) for p in parts)
                        parts.clear()
                        writer.write(ws.send(BytesMessage(data=body)))
                elif isinstance(event, Ping):
                    writer.write(ws.send(event.response()))
                elif isinstance(event, Pong):
                    self.pongs.append(bytes(event.payload))
                elif isinstance(event, CloseConnection):
                    self.closes.append((int(event.code), event.reason or ""))
                    if ws.state is ConnectionState.REMOTE_CLOSING:
                        writer.write(ws.send(event.response()))
                    await writer.drain()
                    return
            await writer.drain()
            if not data:
                return

    async def _upgrade(
        self,
        ws: WSConnection,
        event: Request,
        writer: asyncio.StreamWriter,
        headers: dict[bytes, bytes],
    ) -> bool:
        self.handshakes.append((event.target, list(event.extra_headers)))
        headers.update({n.lower(): v for n, v in event.extra_headers})
        path, _, query = event.target.partition("?")
        if path == "/silent":
            await asyncio.Event().wait()
        if path == "/refuse":
            writer.write(
                ws.send(
                    RejectConnection(
                        status_code=403,
                        headers=[
                            (b"content-length", str(len(REFUSAL_BODY)).encode()),
                            (b"content-type", b"text/plain"),
                            (b"x-primary", b"refused"),
                        ],
                        has_body=True,
                    )
                )
            )
            writer.write(ws.send(RejectData(data=REFUSAL_BODY)))
            await writer.drain()
            return False
        wanted = dict(p.split("=", 1) for p in query.split("&") if "=" in p).get("proto")
        subprotocol = wanted if wanted in event.subprotocols else None
        writer.write(
            ws.send(
                AcceptConnection(subprotocol=subprotocol, extra_headers=[(b"x-primary", b"yes")])
            )
        )
        return True

    async def _command(
        self, ws: WSConnection, text: str, writer: asyncio.StreamWriter, headers: dict[bytes, bytes]
    ) -> bool:
        word, _, rest = text.partition(" ")
        if word == "close":
            code_s, _, reason = rest.partition(" ")
            if code_s == "none":
                writer.write(ws.send(CloseConnection(code=CloseReason.NO_STATUS_RCVD)))
            else:
                writer.write(ws.send(CloseConnection(code=int(code_s), reason=reason)))
        elif word == "stall":
            await asyncio.Event().wait()  # never reads again (cancelled at the end)
        elif word == "die":
            writer.transport.abort()
            return False
        elif word == "ping":
            writer.write(ws.send(Ping(payload=rest.encode())))
        elif word == "fragments":
            n_s, _, body = rest.partition(" ")
            n = int(n_s)
            size = -(-len(body) // n)
            parts = [body[i : i + size] for i in range(0, len(body), size)]
            for i, part in enumerate(parts):
                writer.write(ws.send(TextMessage(data=part, message_finished=i == len(parts) - 1)))
        elif word == "flood":  # "flood N SIZE": N binary messages of SIZE bytes
            n_s, _, size_s = rest.partition(" ")
            for _ in range(int(n_s)):
                writer.write(ws.send(BytesMessage(data=b"f" * int(size_s))))
                await writer.drain()
        elif word == "bytes":
            writer.write(ws.send(BytesMessage(data=b"x" * int(rest))))
        elif word == "headers":
            table: dict[str, Any] = {n.decode(): v.decode("latin-1") for n, v in headers.items()}
            writer.write(ws.send(TextMessage(data=json.dumps(table))))
        else:
            writer.write(ws.send(TextMessage(data=text)))
        return True
