"""WebSocket pass-through: a client's WebSocket session relayed to the primary (issue 17).

How this works
--------------
The host (hypercorn, or any ASGI server) hands the proxy a `websocket` scope; `Sessions.relay`
runs the whole session on that scope's task. WebSocket requests are never mirrored. This
module is the client's (ASGI) side; the primary's, wsproto's client on a connection of its
own, is `sidecar.serve.websocket_primary`.

1. Handshake. After the client's `websocket.connect`, a connection of its own is opened to
   the primary (`ConnectionPool.open_stream`: TCP, or TLS for an https primary) and wsproto's
   client side sends the upgrade request: the client's path and query, its `Host`, its headers
   as for HTTP (hop-by-hop ones removed, `X-Forwarded-*` added, the request id when
   configured) minus the `Sec-WebSocket-*` ones wsproto writes itself, and the client's
   subprotocols. Extensions (permessage-deflate) are per hop: the host negotiates its own
   with the client, the primary's side offers none. Connect and handshake together are
   bounded by the primary's `timeout`.
2. The primary accepts (101): the client is accepted with the primary's subprotocol and its
   other end-to-end response headers (`Set-Cookie`...). The primary refuses (any other
   status): the client gets that status, headers and body through ASGI's WebSocket denial
   response extension; unreachable, a broken handshake: 502; no answer within `timeout`: 504
   (plain text, as for HTTP). A host without that extension can only refuse (403).
   Either way the status is counted in `sidecar_requests_total{code}` like any response.
3. The session: two loops, one per direction, each strictly sequential, so messages keep
   their order. Client to primary: every `websocket.receive` becomes one frame. Primary to
   client: fragments are joined into whole messages (ASGI carries whole messages), bounded by
   `MAX_MESSAGE_BYTES` as the host bounds the client's; the primary's pings are answered here,
   the client's by the host. A message waiting longer than the primary's `idle_timeout` to
   be written (the primary or the client stopped reading) ends the session. There is no
   idle limit otherwise: a quiet WebSocket is normal.
4. The end, and the code the client's close frame carries (counted in
   `sidecar_websockets_total{code}`):
   - the primary closes: its code and reason, passed on (a close without a code, 1005,
     cannot be sent as such through ASGI: 1000);
   - the client closes: its code and reason go to the primary, the host answers the client
     with the client's own code (that is the code counted); a client gone without a close
     frame is 1006, and the primary is told 1001 (going away);
   - the primary's connection breaks (closed or reset without a close frame, a protocol
     error, a stalled write): 1011 (Internal Error) with a reason naming it. 1014 (Bad
     Gateway) would say more, but RFC 6455 clients that check codes against their own list
     reject it as a protocol error (wsproto 1.3 does), so the client would see 1002 or 1006;
   - the client stopped reading: no close frame can reach it (1006); the primary gets 1001;
   - a message from the primary over `MAX_MESSAGE_BYTES`: 1009 (Message Too Big) both ways;
   - shutdown (SIGTERM): at the end of the grace, sessions still open get 1001 (Going Away)
     both ways (`Sessions.going_away_in`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    RejectConnection,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from sidecar.asgi import Message, Receive, Scope, Send
from sidecar.http.client import ClientError, ConnectError
from sidecar.http.headers import response_headers
from sidecar.serve import metrics as serve_metrics
from sidecar.serve.runtime import Snapshot
from sidecar.serve.websocket_primary import (
    NO_STATUS,
    PrimaryFailed,
    PrimarySide,
    upgrade_request,
)

log = logging.getLogger("sidecar.websocket")

# A message larger than this is refused (1009). The same bound as the host's on the client's
# messages (hypercorn's websocket_max_message_size and uvicorn's ws_max_size are both
# 16 MiB), so a message one side may send the other side may too; a session holds at most
# one such message per direction in memory.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
# After our close frame to the client, how long we read on, waiting for its answer (a client
# keeps sending until it has read our close; what it sends meanwhile is dropped).
CLIENT_CLOSE_WAIT_S = 5.0
# At shutdown, sessions are told 1001 this long before the grace runs out (when the listener
# cancels what is left), so the close frames are on the wire before the connections go.
GOING_AWAY_LEAD_S = 0.25

GOING_AWAY = 1001
MESSAGE_TOO_BIG = 1009
INTERNAL_ERROR = 1011  # the primary broke off (see the module docstring for why not 1014)
ABNORMAL = 1006  # no close frame reached the client

_TEXT_PLAIN = (b"content-type", b"text/plain; charset=utf-8")
_DENIAL = "websocket.http.response"

End = tuple[
    Literal["client", "primary", "failed", "too-big", "going-away", "client-stalled"], int, str
]


class Sessions:
    """The live WebSocket sessions of one proxy app, and what they count."""

    def __init__(self, log_error: Callable[..., None]) -> None:
        """`log_error(msg, *args)`: the proxy's rate-limited warning log."""
        self.log_error = log_error
        self._live: set[_Session] = set()
        self._going_away: asyncio.TimerHandle | None = None
        self._closing = False
        self._by_code: dict[str, Any] = {}

    def going_away_in(self, grace_s: float) -> None:
        """Shutdown began: sessions still open when `grace_s` ends get 1001 (Going Away)."""
        if self._going_away is not None:
            return
        loop = asyncio.get_running_loop()
        self._going_away = loop.call_later(max(0.0, grace_s - GOING_AWAY_LEAD_S), self._close_all)

    def _close_all(self) -> None:
        self._closing = True
        if self._live:
            log.info(
                "grace ending: closing %d WebSocket sessions with 1001 (going away)",
                len(self._live),
            )
        for session in self._live:
            session.going_away.set()

    def count(self, code: int) -> None:
        label = str(code)
        child = self._by_code.get(label)
        if child is None:
            child = self._by_code[label] = serve_metrics.websocket_sessions(label)
        child.inc()

    async def relay(
        self,
        snap: Snapshot,
        scope: Scope,
        receive: Receive,
        send: Send,
        headers: list[tuple[bytes, bytes]],
        record_status: Callable[[int, float], None],
    ) -> None:
        """Run one WebSocket session (`headers`: the client's, with the request id when
        configured); `record_status(status, started)` counts the handshake's answer."""
        started = time.perf_counter()
        message = await receive()
        if message["type"] != "websocket.connect":
            return  # gone before the handshake
        session = _Session(snap, scope, receive, send, self.log_error)
        status = 0
        try:
            status = await session.handshake(headers)
        finally:
            if status != 101:
                session.primary.close()
        record_status(status, started)
        if status != 101:
            return
        self._live.add(session)
        try:
            if self._closing:
                session.going_away.set()
            code = await session.run()
            self.count(code)  # before the wait below, which the end of a grace may cut short
            await session.until_client_gone()
        finally:
            self._live.discard(session)
            session.primary.close()


class _Session:
    """One client's session with the primary: the ASGI side, relaying to `PrimarySide`."""

    def __init__(
        self,
        snap: Snapshot,
        scope: Scope,
        receive: Receive,
        send: Send,
        log_error: Callable[..., None],
    ) -> None:
        self._log = log_error
        self.snap = snap
        self.scope = scope
        self.receive = receive
        self.send = send
        self.primary = PrimarySide(snap.primary, snap.primary_idle_timeout_s)
        self.going_away = asyncio.Event()
        self.client_gone = False  # the host said `websocket.disconnect`
        self.refused = 0  # the status of the primary's refusal, once its head was sent
        self._text: list[str] = []  # the fragments of the message being received
        self._bytes: list[bytes | bytearray] = []
        self._partial_size = 0

    # --- the handshake -------------------------------------------------------------------

    async def handshake(self, headers: list[tuple[bytes, bytes]]) -> int:
        """Open the primary's session; returns the status the client got (101: accepted)."""
        snap = self.snap
        try:
            async with asyncio.timeout(snap.primary_timeout_s):
                request = upgrade_request(self.scope, headers, snap.primary.endpoint.authority)
                answer = await self.primary.upgrade(request)
                if isinstance(answer, RejectConnection):
                    return await self._pass_refusal(answer)
                await self.send(
                    {
                        "type": "websocket.accept",
                        "subprotocol": answer.subprotocol,
                        "headers": _accept_headers(answer.extra_headers),
                    }
                )
                return 101
        except (TimeoutError, ClientError, OSError, RemoteProtocolError) as exc:
            if self.refused:  # the primary's refusal is out, cut off mid-body: end it there
                self._log("primary's WebSocket refusal (%d) broke off: %r", self.refused, exc)
                await self.send({"type": "websocket.http.response.body", "body": b""})
                return self.refused
            return await self._failed(exc)
        except (UnicodeError, LocalProtocolError) as exc:
            return await self._failed(exc)

    async def _failed(self, exc: Exception) -> int:
        """Our answer to a handshake that failed before the primary answered."""
        if isinstance(exc, TimeoutError):
            timeout_s = self.snap.primary_timeout_s
            self._log("primary did not answer the WebSocket handshake within %gs: 504", timeout_s)
            return await self._refuse(504, b"Gateway Timeout: the primary did not answer in time\n")
        if isinstance(exc, ClientError):
            what = "is unreachable" if isinstance(exc, ConnectError) else "failed"
            self._log("primary %s (WebSocket handshake): %s: 502", what, exc)
            return await self._refuse(502, f"Bad Gateway: the primary {what}\n".encode())
        if isinstance(exc, UnicodeError):  # a Host or target wsproto cannot write (not ASCII)
            self._log("WebSocket request not forwarded: %s: 400", exc)
            return await self._refuse(400, b"Bad Request: the Host or target is not ASCII\n")
        self._log("primary's WebSocket handshake failed: %s: 502", exc)
        return await self._refuse(502, b"Bad Gateway: the primary's WebSocket handshake failed\n")

    async def _pass_refusal(self, event: RejectConnection) -> int:
        """The primary's refusal (status, headers, body) to the client, streamed."""
        status = event.status_code
        if _DENIAL not in self.scope.get("extensions", {}):
            await self.send({"type": "websocket.close", "code": 1008})
            return 403
        await self.send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": response_headers(event.headers),
            }
        )
        if not event.has_body:
            await self.send({"type": "websocket.http.response.body", "body": b""})
            return status
        self.refused = status  # the head is out: an error from here on ends the body
        async for chunk, last in self.primary.refusal_body():
            await self.send(
                {"type": "websocket.http.response.body", "body": chunk, "more_body": not last}
            )
        return status

    async def _refuse(self, status: int, body: bytes) -> int:
        """Our own answer to a handshake that failed (the client was not accepted)."""
        self.primary.close()
        if _DENIAL not in self.scope.get("extensions", {}):
            await self.send({"type": "websocket.close", "code": 1008})
            return 403
        head = [_TEXT_PLAIN, (b"content-length", str(len(body)).encode("ascii"))]
        await self.send(
            {"type": "websocket.http.response.start", "status": status, "headers": head}
        )
        await self.send({"type": "websocket.http.response.body", "body": body})
        return status

    # --- the session ---------------------------------------------------------------------

    async def run(self) -> int:
        """Relay until one side ends; returns the close code the client got."""
        to_primary = asyncio.ensure_future(self._client_to_primary())
        to_client = asyncio.ensure_future(self._primary_to_client())
        going_away = asyncio.ensure_future(self.going_away.wait())
        tasks: set[asyncio.Future[Any]] = {to_primary, to_client, going_away}
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for pump in (to_client, to_primary):  # the primary's end first: it has the reason
            if pump in done and not pump.cancelled():
                exc = pump.exception()
                if exc is None:
                    return await self._finish(pump.result())
                if not isinstance(exc, _BROKEN):
                    raise exc
                return await self._finish(("failed", INTERNAL_ERROR, _reason(exc)))
        return await self._finish(("going-away", GOING_AWAY, "sidecar is shutting down"))

    async def _client_to_primary(self) -> End:
        receive = self.receive
        primary = self.primary
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.receive":
                data = message.get("bytes")
                if data is not None:
                    await primary.send(BytesMessage(data=data))
                else:
                    await primary.send(TextMessage(data=message["text"]))
            elif kind == "websocket.disconnect":
                self.client_gone = True
                code = int(message.get("code", ABNORMAL))
                return ("client", code, str(message.get("reason") or ""))

    async def _primary_to_client(self) -> End:
        while True:
            for event in await self.primary.events():
                end = await self._from_primary(event)
                if end is not None:
                    return end

    async def _from_primary(self, event: Event) -> End | None:
        if isinstance(event, TextMessage | BytesMessage):
            self._partial_size += len(event.data)
            if self._partial_size > MAX_MESSAGE_BYTES:
                return ("too-big", MESSAGE_TOO_BIG, "message from the primary too big")
            if isinstance(event, TextMessage):
                self._text.append(event.data)
            else:
                self._bytes.append(event.data)
            if event.message_finished:
                self._partial_size = 0
                message: Message
                if isinstance(event, TextMessage):
                    text, self._text = "".join(self._text), []
                    message = {"type": "websocket.send", "text": text}
                else:
                    body, self._bytes = b"".join(self._bytes), []
                    message = {"type": "websocket.send", "bytes": body}
                try:
                    async with asyncio.timeout(self.snap.primary_idle_timeout_s):
                        await self.send(message)
                except TimeoutError:
                    return ("client-stalled", ABNORMAL, "the client stopped reading")
        elif isinstance(event, Ping):
            await self.primary.send(event.response())
        elif isinstance(event, CloseConnection):
            if self.primary.remote_closing:
                with contextlib.suppress(PrimaryFailed, OSError):  # answered; it closes next
                    await self.primary.send(event.response())
                return ("primary", int(event.code), event.reason or "")
            # A local failure (a protocol error, 1002/1007...) or the connection lost (1006).
            if event.code == ABNORMAL:
                raise PrimaryFailed("the primary closed the connection")
            raise PrimaryFailed(f"the primary broke the protocol: {event.reason}")
        return None

    async def _finish(self, end: End) -> int:
        """Close both sides for `end`; returns the code the client's close frame carried."""
        kind, code, reason = end
        if kind == "primary":  # answered already (_from_primary): pass it on
            client_code = 1000 if code == NO_STATUS else code
            await self._close_client(client_code, reason)
            return client_code
        if kind == "client":
            # The host answered the client already; tell the primary and wait for its reply.
            primary_code = GOING_AWAY if code == ABNORMAL else code
            await self.primary.close_handshake(primary_code, reason if code != ABNORMAL else "")
            return code
        if kind == "client-stalled":
            # The host's send to the client is stuck: no close frame can reach it. The
            # primary is told; the client's connection is left to the host.
            self._log(
                "WebSocket session: %s for %gs: closing the primary with 1001",
                reason,
                self.snap.primary_idle_timeout_s,
            )
            self.client_gone = True  # nothing more will be read from it here
            await self.primary.close_handshake(GOING_AWAY, reason)
            return code
        if kind == "failed":
            self._log("WebSocket session: %s: closing the client with 1011", reason)
            await self._close_client(code, reason)
            return code
        # too-big, going-away: both sides
        await self.primary.close_handshake(code, reason)
        await self._close_client(code, reason)
        return code

    async def _close_client(self, code: int, reason: str) -> None:
        with contextlib.suppress(Exception):
            await self.send({"type": "websocket.close", "code": code, "reason": reason})

    async def until_client_gone(self) -> None:
        """After our close frame to the client: its messages read (and dropped) until it
        has answered. The host's queue to us is bounded, and hypercorn's reader, blocked on
        a full one, would never read the client's close answer nor see it leave, holding
        the connection open for good. Bounded by CLIENT_CLOSE_WAIT_S."""
        if self.client_gone:
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLIENT_CLOSE_WAIT_S):
                while (await self.receive())["type"] != "websocket.disconnect":
                    pass


# What ends a session as the primary's failure (1011).
_BROKEN = (PrimaryFailed, OSError, TimeoutError, LocalProtocolError)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PrimaryFailed):
        return str(exc)
    if isinstance(exc, TimeoutError):
        return "the primary timed out"
    return f"the primary's connection failed: {type(exc).__name__}"


def _accept_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The primary's 101 headers the client gets: end-to-end ones only (the host writes the
    upgrade's own)."""
    return [
        (n, v)
        for n, v in response_headers(headers)
        if not n.startswith(b"sec-websocket-") and n != b"content-length"
    ]
