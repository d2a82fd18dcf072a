"""A finished client connection is freed by reference counting, not left to the collector.

`sidecar serve` raises the collector's thresholds and freezes start-up objects (tune_gc),
so a full collection is rare. A connection that ends inside a reference cycle keeps its
transport, TLS objects and buffers until then: 500 short HTTP/2-over-TLS connections a
round grew RSS by ~30 MB a round, without levelling off. Served in process here so that
the collector's garbage can be inspected.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import h2.connection
import h2.events
import pytest

from sidecar.http.tls import server_context
from sidecar.serve import host_http, host_protocol, host_uvicorn, strict_h11
from sidecar.serve.host_uvicorn import HostState
from sidecar.serve.host_uvicorn_listener import UvicornListener
from sidecar.serve.listener import Listener
from sidecar.serve.sockets import hypercorn_config
from tests.support.servers import listening_socket
from tests.support.tls import Pki

CONNECTIONS = 20
DEADLINE_S = 10.0


async def _hello(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
    await send({"type": "http.response.body", "body": b"hello\n"})  # type: ignore[operator]


async def _one_h2_request(port: int, ctx: ssl.SSLContext) -> int:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1"
    )
    conn = h2.connection.H2Connection()
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(
        sid,
        [(":method", "GET"), (":scheme", "https"), (":authority", "t"), (":path", "/")],
        end_stream=True,
    )
    writer.write(conn.data_to_send())
    status = 0
    ended = False
    while not ended:
        data = await reader.read(65536)
        assert data, "the connection ended before the response"
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = int(dict(event.headers)[b":status"])
            ended = ended or isinstance(event, h2.events.StreamEnded)
        writer.write(conn.data_to_send())
    writer.close()
    await writer.wait_closed()
    return status


@pytest.fixture
def no_collection() -> Iterator[None]:
    """The collector off for the test, so only reference counting frees anything."""
    gc.collect()
    gc.disable()
    yield
    gc.enable()


def _hypercorn(sock: socket.socket, ssl_context: ssl.SSLContext | None = None) -> Listener:
    config = hypercorn_config(grace_s=1.0, proxy=True)
    return Listener(_hello, config, sock, ssl_context=ssl_context)


def _uvicorn(sock: socket.socket, ssl_context: ssl.SSLContext | None = None) -> Listener:
    return UvicornListener(
        _hello,
        sock,
        grace_s=1.0,
        keep_alive_s=5.0,
        max_requests=100,
        host=HostState(count_refusals=False),
        ssl_context=ssl_context,
    )


async def _garbage_after(
    listen: Listener,
    port: int,
    one_connection: Callable[[int], Awaitable[None]],
    watched: Callable[[object], bool],
) -> list[str]:
    """Serve CONNECTIONS connections made by `one_connection(port)` one after the other,
    wait until the server has closed them all, then list the `watched` objects that only
    the collector could free."""
    stop = asyncio.Event()
    serving = asyncio.create_task(listen.serve(stop.wait))
    try:
        for _ in range(CONNECTIONS):
            await one_connection(port)
        # Every server side has seen its client's close once none is served any more.
        deadline = asyncio.get_running_loop().time() + DEADLINE_S
        while listen.connections:
            assert asyncio.get_running_loop().time() < deadline
            await asyncio.sleep(0.01)
    finally:
        stop.set()
        await asyncio.wait_for(serving, DEADLINE_S)
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        return [type(o).__name__ for o in gc.garbage if watched(o)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()


async def test_closed_http2_over_tls_connections_are_not_left_in_cycles(
    tmp_path: Path, no_collection: None
) -> None:
    pki = Pki(tmp_path)
    chain, key = pki.leaf("proxy", "127.0.0.1")
    client = ssl.create_default_context(cafile=str(pki.ca_pem))
    client.set_alpn_protocols(["h2"])

    async def one(port: int) -> None:
        assert await _one_h2_request(port, client) == 200

    def server_side(o: object) -> bool:
        return (
            isinstance(o, (host_protocol.SidecarTCPServer, host_http.H2Protocol))
            or type(o).__name__ == "SSLObject"
            or (isinstance(o, h2.connection.H2Connection) and not o.config.client_side)
        )

    tls = server_context(cert=str(chain), key=str(key))
    sock = listening_socket()
    port = sock.getsockname()[1]
    assert await _garbage_after(_hypercorn(sock, tls), port, one, server_side) == []


async def _one_closing_http11_request(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    answer = await reader.read()  # until the server's close
    writer.close()
    await writer.wait_closed()
    return answer


async def test_closed_http11_connections_are_not_left_in_cycles(no_collection: None) -> None:
    """A request that ends its connection switches h11 to the stray-byte reader, which
    once was a bound method of the connection: a cycle per closing connection."""

    async def one(port: int) -> None:
        assert (await _one_closing_http11_request(port)).startswith(b"HTTP/1.1 200 ")

    def server_side(o: object) -> bool:
        return isinstance(o, (host_protocol.SidecarTCPServer, strict_h11.StrictConnection))

    sock = listening_socket()
    port = sock.getsockname()[1]
    assert await _garbage_after(_hypercorn(sock), port, one, server_side) == []


async def _one_keep_alive_request(port: int, ctx: ssl.SSLContext | None) -> bytes:
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname="127.0.0.1" if ctx else None
    )
    writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
    answer = await reader.readuntil(b"hello\n")
    writer.close()  # the client ends the kept-alive connection
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return answer


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
async def test_closed_connections_under_uvicorn_are_not_left_in_cycles(
    tls: bool, tmp_path: Path, no_collection: None
) -> None:
    """uvicorn's protocol held the request cycle's transport wrapper, whose `close` was a
    method of the protocol: every connection (its transport, socket and SSL objects) waited
    for a full collection."""
    server_tls = client = None
    if tls:
        pki = Pki(tmp_path)
        chain, key = pki.leaf("proxy", "127.0.0.1")
        server_tls = server_context(cert=str(chain), key=str(key))
        client = ssl.create_default_context(cafile=str(pki.ca_pem))

    async def one(port: int) -> None:
        assert (await _one_keep_alive_request(port, client)).startswith(b"HTTP/1.1 200 ")

    def server_side(o: object) -> bool:
        return isinstance(o, (host_uvicorn.UvicornProtocol, host_uvicorn.RequestResponseCycle))

    sock = listening_socket()
    port = sock.getsockname()[1]
    assert await _garbage_after(_uvicorn(sock, server_tls), port, one, server_side) == []
