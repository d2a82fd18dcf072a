"""Serve the proxy with uvicorn's connection handling on our own accept loop (`--server uvicorn`).

uvicorn's own `Server` hands the listening socket to `loop.create_server`: under uvloop
that is libuv's accept path, one connection per loop iteration (see
sidecar/serve/listener.py, which measured it for hypercorn). uvicorn on uvloop starves
the same way: in tests/serve/test_listener.py's starvation test (40 busy keep-alive
clients, 150 new connections), uvicorn's own `Server` let the busy clients complete ~6,600
requests before the last new connection got its first answer; this listener ~180. So the same batched accept loop is used: `UvicornListener` is `Listener` with
uvicorn's protocol (sidecar/serve/host_uvicorn.py) per accepted connection instead of
hypercorn's `TCPServer`. uvicorn's `Config` only carries the settings its protocols read
(httptools, wsproto for WebSocket pass-through, no lifespan, no access log, no `Date` or
`Server` header, no proxy-header rewriting: the proxy forwards the client's headers).

Shutdown, as `Listener.serve`: when `shutdown_trigger` returns, stop accepting, tell every
connection (`shutdown()`: idle ones close, busy ones answer with `Connection: close`), wait
up to `grace_s` for requests and connections, cancel the requests still running (their
clients get 503 if nothing was sent; counted in `HostState.cut`), close the rest.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any

from uvicorn.config import Config as UvicornConfig
from uvicorn.server import ServerState

from sidecar.serve.host_http import HostState
from sidecar.serve.host_uvicorn import UvicornProtocol, UvicornWSProtocol, protocol_class
from sidecar.serve.listener import Listener

# While draining, how often to look whether the last connections have closed (uvicorn's
# own server polls every 100 ms; lingering connections close by their own timers).
DRAIN_POLL_S = 0.05


class UvicornListener(Listener):
    """One listening socket served by uvicorn's httptools protocol."""

    def __init__(
        self,
        app: Any,
        sock: socket.socket,
        *,
        grace_s: float,
        keep_alive_s: float,
        max_requests: int,
        host: HostState,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """`ssl_context`: serve TLS on every accepted socket, HTTP/1.1 only: its ALPN
        offer is set to `http/1.1` (a client that picked h2 would not be understood)."""
        # Not Listener.__init__: that one builds hypercorn's app wrapper and context.
        self._init_accepting(sock)
        self.host = host
        self._grace_s = grace_s
        self._ssl = ssl_context
        if ssl_context is not None:
            ssl_context.set_alpn_protocols(["http/1.1"])
        config = UvicornConfig(
            app,
            http="httptools",
            ws=UvicornWSProtocol,
            ws_ping_interval=None,  # no server pings, as under hypercorn
            loop="none",
            lifespan="off",
            log_config=None,
            access_log=False,
            proxy_headers=False,
            server_header=False,
            date_header=False,
            timeout_keep_alive=keep_alive_s,  # type: ignore[arg-type]
        )
        config.load()
        self._state = ServerState()
        protocol = protocol_class(host, max_requests=max_requests)
        loop = self._loop
        self._factory: Callable[[], asyncio.Protocol] = lambda: protocol(
            config=config, server_state=self._state, app_state={}, _loop=loop
        )

    @property
    def connections(self) -> int:
        return len(self._state.connections)

    async def _terminate(self) -> None:
        """Idle connections close; busy ones answer with `Connection: close`. WebSocket
        sessions go on: the proxy closes them with 1001 when the grace ends."""
        for conn in list(self._state.connections):
            if isinstance(conn, UvicornProtocol):
                conn.shutdown()

    async def _serve_connection(self, conn: socket.socket) -> None:
        await self._connect(conn, self._factory)

    async def _drain(self, grace_s: float) -> int:
        """Wait up to `grace_s` for requests and connections; returns how many requests
        were cancelled when it ran out."""
        state = self._state
        loop = self._loop
        deadline = loop.time() + grace_s
        while state.connections or state.tasks:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            if state.tasks:
                await asyncio.wait(set(state.tasks), timeout=remaining)
            else:
                await asyncio.sleep(min(DRAIN_POLL_S, remaining))
        cut_before = self.host.cut
        pending = set(state.tasks)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
        for conn in list(state.connections):
            conn.transport.close()
        return self.host.cut - cut_before
