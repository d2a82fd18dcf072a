"""hypercorn's WebSocket stream, fixed for the proxy listener: the client's close code and
reason reach the app.

hypercorn 0.18 answers a client's close frame itself and then tells the app
`websocket.disconnect` with code 1006 (1000 only when the app had closed first), dropping the
code and reason the client sent; the proxy must pass them on to the primary (a close code is
part of the application's protocol). `WSStream` remembers the client's close frame and
reports its code and reason (ASGI's `websocket.disconnect` has both; uvicorn sends them
too). A client whose connection ends without a close frame is still 1006. No upstream
issue found.

`ws_stream()` is what hypercorn's HTTP/1.1 and HTTP/2 protocols construct (installed by
`sidecar.serve.host_protocol.install`): this class for a config marked as sidecar's
listener, hypercorn's own otherwise.
"""

from __future__ import annotations

from typing import Any

from hypercorn.protocol.events import StreamClosed
from hypercorn.protocol.ws_stream import FrameTooLargeError
from hypercorn.protocol.ws_stream import WSStream as StockWSStream
from wsproto.connection import ConnectionState
from wsproto.events import CloseConnection, Message, Ping
from wsproto.frame_protocol import CloseReason

from sidecar.serve.host_http import MARK_ATTR


def ws_stream(app: Any, config: Any, *args: Any) -> Any:
    """The WebSocket stream for `config`: ours when marked, hypercorn's otherwise."""
    cls = WSStream if hasattr(config, MARK_ATTR) else StockWSStream
    return cls(app, config, *args)


class WSStream(StockWSStream):
    """hypercorn's WSStream whose `websocket.disconnect` carries the client's close code
    and reason."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.client_close: tuple[int, str] | None = None

    async def handle(self, event: Any) -> None:
        if (
            isinstance(event, StreamClosed)
            and not self.closed
            and self.app_put is not None
            and self.client_close is not None
        ):
            self.closed = True
            code, reason = self.client_close
            await self.app_put({"type": "websocket.disconnect", "code": code, "reason": reason})
            return
        await super().handle(event)

    async def _handle_events(self) -> None:
        # hypercorn's loop, remembering the client's close frame.
        for event in self.connection.events():
            if isinstance(event, Message):
                try:
                    self.buffer.extend(event)
                except FrameTooLargeError:
                    await self._send_wsproto_event(
                        CloseConnection(code=CloseReason.MESSAGE_TOO_BIG)
                    )
                    break
                if event.message_finished:
                    assert self.app_put is not None
                    await self.app_put(self.buffer.to_message())
                    self.buffer.clear()
            elif isinstance(event, Ping):
                await self._send_wsproto_event(event.response())
            elif isinstance(event, CloseConnection):
                state = self.connection.state
                if state in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED):
                    # The client's close frame: its own (REMOTE_CLOSING), or its answer to
                    # ours (CLOSED: hypercorn closed first, a message over the size bound).
                    # Not a frame that failed to parse (the state is still OPEN then).
                    self.client_close = (int(event.code), event.reason or "")
                if state == ConnectionState.REMOTE_CLOSING:
                    await self._send_wsproto_event(event.response())
                await self.send(StreamClosed(stream_id=self.stream_id))
