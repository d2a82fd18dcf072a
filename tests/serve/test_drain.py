"""Draining on SIGTERM (issue 13, item 3), against a real `sidecar serve` process.

HTTP/1.1: a response finished after the signal carries `Connection: close` and the
connection closes after it. HTTP/2: GOAWAY as soon as draining starts, the in-flight stream
still completes, a stream opened after the GOAWAY gets RST_STREAM(REFUSED_STREAM). When the
grace runs out: 503 with a text body for a request whose response had not started, and one
log line counting the requests cut off.
"""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import h2.connection
import h2.errors
import h2.events
import h2.settings
import pytest

from tests.support.primary import PrimaryApp
from tests.support.raw_http import H2Conn, host_port, read_to_eof, status_line
from tests.support.serve import serve_proxy
from tests.support.servers import serve_asgi, wait_until
from tests.support.tls import Pki

SLOW_S = 1.0  # the primary's answer time for a request in flight at SIGTERM
GRACE_S = "10"  # ample: these requests finish within it


@pytest.fixture
async def primary() -> AsyncIterator[tuple[PrimaryApp, str]]:
    app = PrimaryApp()
    async with serve_asgi(app) as url:
        yield app, url


def _arrived(app: PrimaryApp, marker: bytes) -> bool:
    return any(marker in raw_path for _, raw_path in app.requests)


@pytest.mark.usefixtures("host")
async def test_http11_response_after_sigterm_carries_connection_close(
    tmp_path: Path, primary: tuple[PrimaryApp, str]
) -> None:
    app, url = primary
    rules = f"primary {url} {{ timeout 5s }}\n"
    async with serve_proxy(tmp_path, rules, "--grace", GRACE_S) as proxy:
        reader, writer = await asyncio.open_connection(*host_port(proxy.url))
        try:
            # A keep-alive connection that already served one request, then a slow one.
            writer.write(b"GET /echo/warm HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert b"connection: close" not in head.lower()
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            writer.write(b"GET /slow?s=%g HTTP/1.1\r\nHost: proxy.test\r\n\r\n" % SLOW_S)
            await writer.drain()
            await wait_until(lambda: _arrived(app, b"/slow"), what="slow request at primary")
            proxy.proc.send_signal(signal.SIGTERM)
            reply = await asyncio.wait_for(read_to_eof(reader), 10)  # closed after it
        finally:
            writer.close()
        assert b"\r\nconnection: close\r\n" in reply.lower(), reply
        assert status_line(reply) == b"HTTP/1.1 200 OK", reply
        assert reply.endswith(b"slow done")
        assert await proxy.wait_exit() == 0


async def test_http2_goaway_at_sigterm_then_refused_stream(
    tmp_path: Path, primary: tuple[PrimaryApp, str]
) -> None:
    app, url = primary
    rules = f"primary {url} {{ timeout 5s }}\n"
    async with (
        serve_proxy(tmp_path, rules, "--grace", GRACE_S) as proxy,
        H2Conn.open(proxy.url) as h2c,
    ):
        slow = await h2c.request("GET", f"/slow?s={SLOW_S:g}")
        await wait_until(lambda: _arrived(app, b"/slow"), what="slow request at primary")
        proxy.proc.send_signal(signal.SIGTERM)
        got = await h2c.events_until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
        goaway = got[-1]
        assert goaway.error_code == h2.errors.ErrorCodes.NO_ERROR
        assert goaway.last_stream_id == slow
        assert h2c.status(slow) is None  # GOAWAY came first, while the stream was running
        # A stream opened after GOAWAY (a client that did not look) is refused, retryable.
        h2c.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        late = await h2c.request("GET", "/echo/late")
        await h2c.events_until(
            lambda e: isinstance(e, h2.events.StreamReset) and e.stream_id == late
        )
        (reset,) = [
            e for e in h2c.events if isinstance(e, h2.events.StreamReset) and e.stream_id == late
        ]
        assert reset.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
        await h2c.events_until(
            lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == slow
        )
        assert h2c.status(slow) == 200 and h2c.body(slow) == b"slow done"
        assert not _arrived(app, b"/echo/late")
        assert await proxy.wait_exit() == 0


@pytest.mark.usefixtures("host")
async def test_grace_running_out_answers_503_and_logs_the_cut_count(
    tmp_path: Path, primary: tuple[PrimaryApp, str]
) -> None:
    app, url = primary
    rules = f"primary {url} {{ timeout 30s }}\n"
    async with serve_proxy(tmp_path, rules, "--grace", "0.5") as proxy:
        reader, writer = await asyncio.open_connection(*host_port(proxy.url))
        try:
            writer.write(b"GET /slow?s=20 HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
            await writer.drain()
            await wait_until(lambda: _arrived(app, b"/slow"), what="slow request at primary")
            proxy.proc.send_signal(signal.SIGTERM)
            reply = await asyncio.wait_for(read_to_eof(reader), 10)
        finally:
            writer.close()
        assert await proxy.wait_exit() == 0
        assert status_line(reply) == b"HTTP/1.1 503 Service Unavailable", reply
        assert b"connection: close" in reply.lower()
        assert reply.endswith(b"the proxy shut down before the primary answered\n")
        assert "grace of 0.5s ran out: 1 requests cut off" in proxy.log(), proxy.log()


async def test_http2_grace_running_out_answers_503_and_exits_promptly(
    tmp_path: Path, primary: tuple[PrimaryApp, str]
) -> None:
    """hypercorn's HTTP/2 cut-off path waited for a send task cancelled with it: the
    process never exited. Now: 503 on the stream, exit 0 right after the grace."""
    app, url = primary
    rules = f"primary {url} {{ timeout 30s }}\n"
    async with (
        serve_proxy(tmp_path, rules, "--grace", "0.5") as proxy,
        H2Conn.open(proxy.url) as h2c,
    ):
        sid = await h2c.request("GET", "/slow?s=20")
        await wait_until(lambda: _arrived(app, b"/slow"), what="slow request at primary")
        proxy.proc.send_signal(signal.SIGTERM)
        await h2c.events_until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
        # h2 (the client library) refuses frames after a GOAWAY; the server may send them.
        h2c.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        await h2c.events_until(lambda e: isinstance(e, h2.events.StreamEnded))
        assert h2c.status(sid) == 503
        assert await proxy.wait_exit(timeout=5) == 0
        assert "grace of 0.5s ran out: 1 requests cut off" in proxy.log()


async def test_tls_client_that_stopped_reading_does_not_hold_the_exit(
    tmp_path: Path, primary: tuple[PrimaryApp, str]
) -> None:
    """A TLS client in the middle of a large download that stopped reading (curl
    --limit-rate): when the grace ran out, closing its connection waited for TLS's close
    to get through, up to the TLS shutdown timeout (30 s), so `--grace 0.5` took over
    30 s, and the timeout surfaced as a traceback ('SSL shutdown timed out')."""
    _app, url = primary
    pki = Pki(tmp_path)
    pki.leaf("proxy", "127.0.0.1")
    rules = f'listen 127.0.0.1:1 {{ cert "proxy.pem" key "proxy.key" }}\nprimary {url}\n'
    async with serve_proxy(tmp_path, rules, "--grace", "0.5") as proxy:
        ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
        ctx.set_alpn_protocols(["http/1.1"])
        reader, writer = await asyncio.open_connection(
            *host_port(proxy.url), ssl=ctx, server_hostname="127.0.0.1"
        )
        try:
            writer.write(b"GET /download?n=268435456 HTTP/1.1\r\nHost: proxy.test\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert status_line(head) == b"HTTP/1.1 200 OK"
            # From here on nothing is read: the proxy's buffers toward us fill up.
            proxy.proc.send_signal(signal.SIGTERM)
            assert await proxy.wait_exit(timeout=5) == 0
        finally:
            writer.transport.abort()
        assert "grace of 0.5s ran out: 1 requests cut off" in proxy.log()
        assert "Traceback" not in proxy.log(), proxy.log()


async def test_http2_client_that_stopped_reading_does_not_hold_the_exit(
    tmp_path: Path, primary: tuple[PrimaryApp, str]
) -> None:
    """Three `curl --http2 --limit-rate 50k` downloads at SIGTERM: `--grace 2` took 17 s.
    When the grace ran out, the cut streams' last frames (and the final GOAWAY) waited to
    drain into a connection whose client was not reading."""
    _app, url = primary
    rules = f"primary {url}\n"
    async with (
        serve_proxy(tmp_path, rules, "--grace", "0.5") as proxy,
        H2Conn.open(proxy.url) as h2c,
    ):
        # curl's windows (32 MiB a stream, more for the connection): what stops the
        # proxy is the socket's buffers, not flow control.
        h2c.conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 2**25})
        h2c.conn.increment_flow_control_window(2**30)
        await h2c.flush()
        sids = [await h2c.request("GET", "/download?n=268435456") for _ in range(3)]
        await h2c.events_until(
            lambda e: isinstance(e, h2.events.ResponseReceived) and e.stream_id == sids[-1]
        )
        # From here on nothing is read (nor any window granted).
        proxy.proc.send_signal(signal.SIGTERM)
        assert await proxy.wait_exit(timeout=5) == 0
        assert "grace of 0.5s ran out: 3 requests cut off" in proxy.log(), proxy.log()
