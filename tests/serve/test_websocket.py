"""WebSocket pass-through (issue 17), through a real `sidecar serve` process.

The primary is tests/support/ws_primary.py (asyncio + wsproto's server side, scripted by
text commands); the clients are the `websockets` library and a raw wsproto client on a
plain socket. Covered: text and binary messages both ways, 1 MiB and fragmented messages,
order, pings both ways, close codes and reasons both ways, the primary's subprotocol and
headers, the forwarded handshake headers, a refusal (403 with its body), a dead and a
silent primary, a primary that dies mid-session, a message over the size bound, never
mirrored, `sidecar_websockets_total{code}`, 1001 at the end of the grace on SIGTERM, and no
descriptors left behind after many sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import h2.events
import h2.settings
import pytest
import websockets
from websockets.asyncio.client import ClientConnection, connect
from wsproto import ConnectionType, WSConnection
from wsproto.connection import Connection, ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    Request,
    TextMessage,
)

from tests.support.limited import open_fds
from tests.support.raw_http import H2Conn
from tests.support.serve import ServeProcess, free_port, metric, serve_proxy
from tests.support.servers import RecordingCanary, wait_until
from tests.support.tls import Pki
from tests.support.ws_primary import REFUSAL_BODY, WSPrimary

RECV_TIMEOUT_S = 10.0  # generous for CI; a passing test never waits this long
MIB = 1024 * 1024
MAX_MESSAGE_BYTES = 16 * MIB  # sidecar.serve.websocket.MAX_MESSAGE_BYTES

# Every test runs under both HTTP servers (`serve --server`): uvicorn hands the upgrade to
# its wsproto protocol, hypercorn to its own.
pytestmark = pytest.mark.usefixtures("host")


@pytest.fixture
async def primary() -> AsyncIterator[WSPrimary]:
    async with WSPrimary() as server:
        yield server


def rules(primary: str, extra: str = "", timeout: str = "2s") -> str:
    return f"primary {primary} {{ timeout {timeout} }}\n{extra}"


def ws_url(proxy: ServeProcess, path: str) -> str:
    return proxy.url.replace("http://", "ws://", 1) + path


async def recv(ws: ClientConnection) -> str | bytes:
    return await asyncio.wait_for(ws.recv(), RECV_TIMEOUT_S)


async def closed_by_server(ws: ClientConnection) -> websockets.frames.Close | None:
    """Wait for the server's close; the close frame the client received (None: none)."""
    with pytest.raises(websockets.ConnectionClosed) as info:
        await recv(ws)
    return info.value.rcvd


async def wait_until_metric(proxy: ServeProcess, name: str, value: float, **labels: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RECV_TIMEOUT_S
    while metric(await proxy.metrics(), name, **labels) < value:
        assert loop.time() < deadline, f"{name}{labels} never reached {value}"
        await asyncio.sleep(0.02)


async def websockets_total(proxy: ServeProcess, code: str) -> float:
    return metric(await proxy.metrics(), "sidecar_websockets_total", code=code)


# --- messages ---------------------------------------------------------------------------------


async def test_messages_relayed_both_ways_in_order(tmp_path: Path, primary: WSPrimary) -> None:
    async with (
        serve_proxy(tmp_path, rules(primary.url)) as proxy,
        connect(ws_url(proxy, "/echo"), max_size=2 * MIB) as ws,
    ):
        await ws.send("hello")
        assert await recv(ws) == "hello"
        await ws.send(b"\x00\xffbinary")
        assert await recv(ws) == b"\x00\xffbinary"  # bytes stay bytes
        await ws.send("żółć ✓")
        assert await recv(ws) == "żółć ✓"
        big = bytes(range(256)) * (4096)  # 1 MiB, both ways
        await ws.send(big)
        assert await recv(ws) == big
        await ws.send(f"bytes {MIB}")  # 1 MiB from the primary, in many reads
        assert await recv(ws) == b"x" * MIB
        # Order: a burst sent without waiting comes back in the same order.
        for i in range(200):
            await ws.send(f"m{i}" if i % 2 else f"m{i}".encode())
        got = [await recv(ws) for _ in range(200)]
        assert got == [f"m{i}" if i % 2 else f"m{i}".encode() for i in range(200)]
        # A message the primary sends in fragments reaches the client whole.
        await ws.send("fragments 5 " + "abcdefghij" * 100)
        assert await recv(ws) == "abcdefghij" * 100


async def test_subprotocol_headers_and_request_id(tmp_path: Path, primary: WSPrimary) -> None:
    extra = 'request_id "X-Request-Id"\n'
    async with (
        serve_proxy(tmp_path, rules(primary.url, extra)) as proxy,
        connect(
            ws_url(proxy, "/echo/path?proto=chat.v2&q=1"),
            subprotocols=["chat.v1", "chat.v2"],  # type: ignore[list-item]
            additional_headers={"X-Custom": "kept", "Cookie": "a=1"},
        ) as ws,
    ):
        assert ws.subprotocol == "chat.v2"  # the primary's choice
        assert ws.response is not None
        assert ws.response.headers["X-Primary"] == "yes"  # its response headers pass
        await ws.send("headers")
        seen = json.loads(await recv(ws))
    target, _ = primary.handshakes[0]
    assert target == "/echo/path?proto=chat.v2&q=1"
    assert seen["x-custom"] == "kept"
    assert seen["cookie"] == "a=1"
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert seen["x-forwarded-proto"] == "http"
    assert seen["x-forwarded-host"] == proxy.url.removeprefix("http://")
    assert len(seen["x-request-id"]) == 32
    assert "sec-websocket-extensions" not in seen  # per hop: the primary's side offers none


async def test_raw_wsproto_client(tmp_path: Path, primary: WSPrimary) -> None:
    """A client frame by frame: fragments, pings both ways, hop-by-hop headers, its close."""
    async with serve_proxy(tmp_path, rules(primary.url)) as proxy:
        client = await RawClient.open(
            proxy,
            "/echo",
            extra_headers=[
                # (A second `Connection` line is not tried: hypercorn reads only the last
                # one, and wsproto writes its own `Connection: Upgrade` first.)
                (b"keep-alive", b"timeout=5"),
                (b"te", b"trailers"),
                (b"proxy-authorization", b"Basic eA=="),
                (b"x-kept", b"1"),
            ],
        )
        try:
            # A text message in three fragments, then a binary one in two.
            client.send(TextMessage(data="one ", message_finished=False))
            client.send(TextMessage(data="two ", message_finished=False))
            client.send(TextMessage(data="three", message_finished=True))
            client.send(BytesMessage(data=b"ab", message_finished=False))
            client.send(BytesMessage(data=b"cd", message_finished=True))
            await client.flush()
            assert await client.message() == "one two three"
            assert await client.message() == b"abcd"
            # The client's ping is answered (by the host), the primary's by the proxy.
            client.send(Ping(payload=b"are you there"))
            await client.flush()
            pong = await client.next_event(Pong)
            assert isinstance(pong, Pong) and pong.payload == b"are you there"
            client.send(TextMessage(data="ping from-primary"))
            client.send(TextMessage(data="after the ping"))
            await client.flush()
            assert await client.message() == "after the ping"
            await wait_until(lambda: primary.pongs == [b"from-primary"], what="the pong")
            client.send(TextMessage(data="headers"))
            await client.flush()
            seen = json.loads(str(await client.message()))
            for gone in ("keep-alive", "te", "proxy-authorization"):
                assert gone not in seen
            assert seen["x-kept"] == "1"
            # The client closes with a code and reason: the primary gets both.
            client.send(CloseConnection(code=4002, reason="client done"))
            await client.flush()
            echo = await client.next_event(CloseConnection)
            assert isinstance(echo, CloseConnection) and echo.code == 4002
        finally:
            client.close()
        await wait_until(lambda: (4002, "client done") in primary.closes, what="the close")
        await wait_until(lambda: primary.connections_open == 0, what="primary side closed")
        assert await websockets_total(proxy, "4002") == 1


# --- the end of a session -----------------------------------------------------------------------


async def test_close_codes_and_reasons_both_ways(tmp_path: Path, primary: WSPrimary) -> None:
    async with serve_proxy(tmp_path, rules(primary.url)) as proxy:
        url = ws_url(proxy, "/echo")
        async with connect(url) as ws:  # the primary closes: its code and reason
            await ws.send("close 4000 primary says bye")
            rcvd = await closed_by_server(ws)
            assert rcvd is not None
            assert (rcvd.code, rcvd.reason) == (4000, "primary says bye")
        async with connect(url) as ws:  # a close without a code reaches the client as 1000
            await ws.send("close none")
            rcvd = await closed_by_server(ws)
            assert rcvd is not None and rcvd.code == 1000
        async with connect(url) as ws:  # the client closes: the primary gets its code
            await ws.close(4001, "client says bye")
        await wait_until(lambda: (4001, "client says bye") in primary.closes, what="close")
        await wait_until(lambda: primary.connections_open == 0, what="primary side closed")
        text = await proxy.metrics()
        assert metric(text, "sidecar_websockets_total", code="4000") == 1
        assert metric(text, "sidecar_websockets_total", code="1000") == 1
        assert metric(text, "sidecar_websockets_total", code="4001") == 1
        assert metric(text, "sidecar_requests_total", code="1xx") == 3  # the 101s


async def test_primary_dies_mid_session(tmp_path: Path, primary: WSPrimary) -> None:
    async with (
        serve_proxy(tmp_path, rules(primary.url)) as proxy,
        connect(ws_url(proxy, "/echo")) as ws,
    ):
        await ws.send("hello")
        assert await recv(ws) == "hello"
        await ws.send("die")  # the primary drops TCP without a close frame
        rcvd = await closed_by_server(ws)
        assert rcvd is not None
        assert rcvd.code == 1011
        assert "primary closed the connection" in rcvd.reason
        assert await websockets_total(proxy, "1011") == 1
        assert "closing the client with 1011" in proxy.log()


async def test_primary_that_stops_reading_fails_the_session(
    tmp_path: Path, primary: WSPrimary
) -> None:
    """A primary that stops reading while messages wait for it: 1011 after idle_timeout."""
    text = f"primary {primary.url} {{ timeout 2s idle_timeout 500ms }}\n"
    async with serve_proxy(tmp_path, text) as proxy:
        baseline = open_fds(proxy.pid)
        ws = await connect(ws_url(proxy, "/echo"))
        await ws.send("stall")
        chunk = b"s" * MIB

        async def flood() -> None:  # bounded: 256 MiB at most, far past every buffer
            with contextlib.suppress(websockets.ConnectionClosed):
                for _ in range(256):
                    await ws.send(chunk)

        sender = asyncio.create_task(flood())
        try:
            rcvd = await closed_by_server(ws)
        finally:
            sender.cancel()
            await asyncio.gather(sender, return_exceptions=True)
        assert rcvd is not None and rcvd.code == 1011
        assert "stopped reading" in rcvd.reason
        assert await websockets_total(proxy, "1011") == 1
        # Both connections are released although the client was flooding when closed (the
        # proxy reads on until the client's close answer; hypercorn would block otherwise).
        await wait_until(lambda: open_fds(proxy.pid) <= baseline, what="descriptors released")


async def test_client_that_stops_reading_ends_the_session(
    tmp_path: Path, primary: WSPrimary
) -> None:
    """Messages wait for a client that reads nothing: after idle_timeout the primary is told
    1001 and its connection released; counted 1006 (no close frame reached the client)."""
    text = f"primary {primary.url} {{ timeout 2s idle_timeout 500ms }}\n"
    async with serve_proxy(tmp_path, text) as proxy:
        baseline = open_fds(proxy.pid)
        client = await RawClient.open(proxy, "/echo")
        try:
            client.send(TextMessage(data="flood 64 1048576"))  # 64 MiB, far past the buffers
            await client.flush()
            await wait_until(
                lambda: (1001, "the client stopped reading") in primary.closes,
                what="1001 to the primary",
            )
            await wait_until(lambda: primary.connections_open == 0, what="primary side closed")
            assert await websockets_total(proxy, "1006") == 1
        finally:
            client.writer.transport.abort()
        await wait_until(lambda: open_fds(proxy.pid) <= baseline, what="descriptors released")


async def test_client_gone_without_close_frame(tmp_path: Path, primary: WSPrimary) -> None:
    """Counted 1006 (no close frame reached the client); the primary is told 1001."""
    async with serve_proxy(tmp_path, rules(primary.url)) as proxy:
        client = await RawClient.open(proxy, "/echo")
        client.send(TextMessage(data="hi"))
        await client.flush()
        assert await client.message() == "hi"
        client.writer.transport.abort()
        await wait_until(lambda: (1001, "") in primary.closes, what="going away to the primary")
        await wait_until(lambda: primary.connections_open == 0, what="primary side closed")
        text = await proxy.metrics()
        assert metric(text, "sidecar_websockets_total", code="1006") == 1


async def test_message_over_the_bound_is_1009(tmp_path: Path, primary: WSPrimary) -> None:
    async with (
        serve_proxy(tmp_path, rules(primary.url)) as proxy,
        connect(ws_url(proxy, "/echo"), max_size=None) as ws,
    ):
        await ws.send(f"bytes {MAX_MESSAGE_BYTES + 1}")  # from the primary: sidecar's bound
        rcvd = await closed_by_server(ws)
        assert rcvd is not None and rcvd.code == 1009
        await wait_until(lambda: any(c == 1009 for c, _ in primary.closes), what="1009 sent")
        assert await websockets_total(proxy, "1009") == 1
    async with (
        serve_proxy(tmp_path, rules(primary.url)) as proxy,
        connect(ws_url(proxy, "/echo"), max_size=None) as ws,
    ):
        await ws.send(b"c" * (MAX_MESSAGE_BYTES + 1))  # from the client: the server's bound
        rcvd = await closed_by_server(ws)
        assert rcvd is not None and rcvd.code == 1009
        await wait_until(lambda: len(primary.closes) == 2, what="the primary told")
        assert primary.closes[1][0] == 1009
        assert await websockets_total(proxy, "1009") == 1


async def test_websocket_over_http2(tmp_path: Path, primary: WSPrimary, host: str) -> None:
    """RFC 8441 (extended CONNECT on an h2c connection): relayed to the primary as a
    WebSocket over HTTP/1.1, messages and close codes as over HTTP/1.1."""
    if host == "uvicorn":
        pytest.skip("HTTP/2 is served by hypercorn only")
    async with (
        serve_proxy(tmp_path, rules(primary.url)) as proxy,
        H2Conn.open(proxy.url) as h2c,
    ):
        settings = await h2c.events_until(lambda e: isinstance(e, h2.events.RemoteSettingsChanged))
        changed = settings[-1].changed_settings
        assert changed[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL].new_value == 1
        sid = h2c.conn.get_next_available_stream_id()
        h2c.conn.send_headers(
            sid,
            [
                (b":method", b"CONNECT"),
                (b":protocol", b"websocket"),
                (b":scheme", b"http"),
                (b":path", b"/echo?over=h2"),
                (b":authority", b"proxy.test"),
                (b"sec-websocket-version", b"13"),
            ],
        )
        await h2c.flush()
        await h2c.events_until(lambda e: isinstance(e, h2.events.ResponseReceived))
        assert h2c.status(sid) == 200  # RFC 8441's accept
        ws = Connection(ConnectionType.CLIENT)  # frames only: the handshake was HTTP/2's
        h2c.conn.send_data(sid, ws.send(TextMessage(data="hello over h2")))
        await h2c.flush()
        got = await h2c.events_until(lambda e: isinstance(e, h2.events.DataReceived))
        ws.receive_data(got[-1].data)
        assert [e.data for e in ws.events() if isinstance(e, TextMessage)] == ["hello over h2"]
        h2c.conn.send_data(sid, ws.send(CloseConnection(code=4003, reason="h2 bye")))
        await h2c.flush()
        await wait_until(lambda: (4003, "h2 bye") in primary.closes, what="the close over h2")
        # The close answered, then the stream ended. hypercorn left a stream the client
        # closed open for good (no END_STREAM, its buffer kept): a client waiting for the
        # end hung, and each such session held one of the connection's 100 streams.
        got = await h2c.events_until(
            lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == sid
        )
        for event in got:
            if isinstance(event, h2.events.DataReceived):
                ws.receive_data(event.data)
        answers = [e for e in ws.events() if isinstance(e, CloseConnection)]
        assert [a.code for a in answers] == [4003]
    target, headers = primary.handshakes[0]
    assert target == "/echo?over=h2"
    assert (b"x-forwarded-host", b"proxy.test") in headers  # :authority became the Host


async def test_session_outlives_a_reload(tmp_path: Path, primary: WSPrimary) -> None:
    """A reload (SIGHUP) leaves open sessions with their primary; new ones use the new one."""
    async with WSPrimary() as other, serve_proxy(tmp_path, rules(primary.url)) as proxy:
        (rules_file,) = tmp_path.glob("rules-*.mirror")
        async with connect(ws_url(proxy, "/echo")) as ws:
            await ws.send("before")
            assert await recv(ws) == "before"
            rules_file.write_text(rules(other.url))
            proxy.proc.send_signal(signal.SIGHUP)
            await wait_until_metric(proxy, "sidecar_rules_reloads_total", 1, result="ok")
            await ws.send("after the reload")
            assert await recv(ws) == "after the reload"
            async with connect(ws_url(proxy, "/echo")) as ws2:
                await ws2.send("new")
                assert await recv(ws2) == "new"
        assert len(primary.handshakes) == 1
        assert len(other.handshakes) == 1


async def test_wss_client_to_an_https_primary(tmp_path: Path) -> None:
    """TLS on both hops: a wss client to `listen { cert key }`, the primary over https with
    the primary block's `tls { ca server_name }` (SNI and the name checked are that name)."""
    pki = Pki(tmp_path)
    pki.leaf("proxy", "127.0.0.1")
    primary_chain, primary_key = pki.leaf("primary", "primary.test")
    async with WSPrimary(pki.server_context(primary_chain, primary_key)) as primary:
        text = (
            'listen 127.0.0.1:1 { cert "proxy.pem" key "proxy.key" }\n'
            f'primary {primary.url} {{ timeout 2s tls {{ ca "ca.pem" server_name "primary.test" }} }}\n'
        )
        client_tls = ssl.create_default_context(cafile=str(pki.ca_pem))
        async with serve_proxy(tmp_path, text) as proxy:
            url = proxy.url.replace("http://", "wss://") + "/echo"
            async with connect(url, ssl=client_tls) as ws:
                await ws.send("over tls")
                assert await recv(ws) == "over tls"
                await ws.send("headers")
                seen = json.loads(await recv(ws))
            assert seen["x-forwarded-proto"] == "https"  # the client's scheme was wss
            assert "primary.test" in primary.server_names
        # Without the CA the primary's certificate is not trusted: a 502, logged.
        text = f"primary {primary.url} {{ timeout 2s }}\n"
        async with serve_proxy(tmp_path, text) as proxy:
            with pytest.raises(websockets.InvalidStatus) as info:
                await connect(ws_url(proxy, "/echo"))
            assert info.value.response.status_code == 502
            assert "CERTIFICATE_VERIFY_FAILED" in proxy.log()


# --- the handshake ------------------------------------------------------------------------------


async def test_refusal_passed_to_the_client(tmp_path: Path, primary: WSPrimary) -> None:
    async with serve_proxy(tmp_path, rules(primary.url)) as proxy:
        with pytest.raises(websockets.InvalidStatus) as info:
            await connect(ws_url(proxy, "/refuse"))
        response = info.value.response
        assert response.status_code == 403
        assert response.body == REFUSAL_BODY
        assert response.headers["X-Primary"] == "refused"
        text = await proxy.metrics()
        assert metric(text, "sidecar_requests_total", code="4xx") == 1
        assert metric(text, "sidecar_websockets_total") == 0  # no session


async def test_dead_and_silent_primary(tmp_path: Path, primary: WSPrimary) -> None:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with serve_proxy(tmp_path, rules(dead)) as proxy:
        with pytest.raises(websockets.InvalidStatus) as info:
            await connect(ws_url(proxy, "/echo"))
        assert info.value.response.status_code == 502
        assert b"unreachable" in (info.value.response.body or b"")
        assert "WebSocket handshake" in proxy.log()
    async with serve_proxy(tmp_path, rules(primary.url, timeout="300ms")) as proxy:
        with pytest.raises(websockets.InvalidStatus) as info:
            await connect(ws_url(proxy, "/silent"))
        assert info.value.response.status_code == 504
        text = await proxy.metrics()
        assert metric(text, "sidecar_requests_total", code="5xx") == 1


async def test_never_mirrored(tmp_path: Path, primary: WSPrimary) -> None:
    async with RecordingCanary() as canary:
        extra = (
            f'canary c {{ server {canary.url} }}\nmirror everything {{ when path ^= "/" to c }}\n'
        )
        async with serve_proxy(tmp_path, rules(primary.url, extra)) as proxy:
            async with connect(ws_url(proxy, "/echo")) as ws:
                await ws.send("hello")
                assert await recv(ws) == "hello"
            # An HTTP request after it is mirrored: the canary works, and it is the first.
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", int(proxy.url.rsplit(":", 1)[1])
            )
            writer.write(b"GET /plain HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            await writer.drain()
            await asyncio.wait_for(reader.read(), RECV_TIMEOUT_S)
            writer.close()
            first = await canary.wait_for(1)
            assert first.target == b"/plain"
            assert len(canary.requests) == 1


# --- shutdown and resources ---------------------------------------------------------------------


async def test_sigterm_closes_sessions_with_1001_at_the_end_of_the_grace(
    tmp_path: Path, primary: WSPrimary
) -> None:
    async with (
        serve_proxy(tmp_path, rules(primary.url), "--grace", "1") as proxy,
        connect(ws_url(proxy, "/echo")) as ws,
    ):
        await ws.send("hello")
        assert await recv(ws) == "hello"
        loop = asyncio.get_running_loop()
        started = loop.time()
        proxy.proc.send_signal(signal.SIGTERM)
        await ws.send("still served during the grace")
        assert await recv(ws) == "still served during the grace"
        rcvd = await closed_by_server(ws)
        waited = loop.time() - started
        assert rcvd is not None and rcvd.code == 1001
        assert 0.5 < waited < 5, waited  # at the grace's end, not at once
        assert await proxy.wait_exit() == 0
        await wait_until(lambda: (1001, "sidecar is shutting down") in primary.closes)
        assert "closing 1 WebSocket sessions with 1001" in proxy.log()


async def test_no_descriptors_left_after_many_sessions(tmp_path: Path, primary: WSPrimary) -> None:
    async with serve_proxy(tmp_path, rules(primary.url)) as proxy:
        async with connect(ws_url(proxy, "/echo")) as ws:  # warm: imports, first allocations
            await ws.send("warm")
            await recv(ws)
        await wait_until(lambda: primary.connections_open == 0, what="warm-up closed")
        baseline = open_fds(proxy.pid)

        async def session(i: int) -> None:
            async with connect(ws_url(proxy, "/echo")) as ws:
                await ws.send(f"n{i}")
                assert await recv(ws) == f"n{i}"
                if i % 3 == 0:
                    await ws.send("close 4000 done")
                    await closed_by_server(ws)
                elif i % 3 == 1:
                    await ws.send("die")
                    await closed_by_server(ws)

        for _ in range(4):  # 4 rounds of 25 concurrent sessions, ended three ways
            await asyncio.gather(*(session(i) for i in range(25)))
        await wait_until(lambda: primary.connections_open == 0, what="primary sides closed")
        await wait_until(
            lambda: open_fds(proxy.pid) <= baseline,
            what=f"descriptors back to {baseline} (now {open_fds(proxy.pid)})",
        )
        assert len(primary.handshakes) == 101  # (connections: one more, the start-up probe)
        text = await proxy.metrics()
        total = metric(text, "sidecar_websockets_total")
        assert total == 101


# --- a raw wsproto client ----------------------------------------------------------------------


class RawClient:
    """wsproto's client side on a plain asyncio connection to the proxy."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.ws = WSConnection(ConnectionType.CLIENT)
        self.events: list[Event] = []

    @classmethod
    async def open(
        cls,
        proxy: ServeProcess,
        target: str,
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> RawClient:
        host, port = proxy.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        client = cls(reader, writer)
        client.send(
            Request(host=f"{host}:{port}", target=target, extra_headers=extra_headers or [])
        )
        await client.flush()
        accepted = await client.next_event(AcceptConnection)
        assert isinstance(accepted, AcceptConnection)
        return client

    def send(self, event: Event) -> None:
        self.writer.write(self.ws.send(event))

    async def flush(self) -> None:
        await self.writer.drain()

    async def next_event(self, kind: type[Event] | tuple[type[Event], ...]) -> Event:
        """The next event of `kind` (earlier events of other kinds are kept in order)."""
        async with asyncio.timeout(RECV_TIMEOUT_S):
            while True:
                for i, event in enumerate(self.events):
                    if isinstance(event, kind):
                        del self.events[i]
                        return event
                data = await self.reader.read(65536)
                if self.ws.state is ConnectionState.CLOSED:
                    raise AssertionError("connection closed")
                self.ws.receive_data(data or None)
                self.events.extend(self.ws.events())

    async def message(self) -> str | bytes:
        """The next whole message (fragments joined)."""
        parts: list[str | bytes] = []
        while True:
            event = await self.next_event((TextMessage, BytesMessage))
            assert isinstance(event, TextMessage | BytesMessage)
            parts.append(event.data if isinstance(event, TextMessage) else bytes(event.data))
            if event.message_finished:
                if isinstance(event, TextMessage):
                    return "".join(str(p) for p in parts)
                return b"".join(bytes(p) for p in parts)  # type: ignore[arg-type]

    def close(self) -> None:
        self.writer.close()
