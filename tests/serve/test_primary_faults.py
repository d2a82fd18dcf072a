"""Primary faults through a real `sidecar serve` process: the client sees what nginx would
give (502 before the response head, 504 past the timeout, a truncated and then closed
response after the head, never a response that looks complete), and neither tees nor
sockets leak.

One serve process (module scope) proxies to a `FaultServer(by_path=True)`: the request
path picks the fault (`GET /truncated_chunked/x`). Every request is also mirrored to a
well-behaved canary, so the tees' accounting is checked after every fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import pytest_asyncio

from tests.support.faults import TRUNCATED_DECLARED_BYTES, TRUNCATED_SENT_BYTES, FaultServer, census
from tests.support.serve import ServeProcess, metric, serve_proxy
from tests.support.servers import RecordingCanary

pytestmark = pytest.mark.asyncio(loop_scope="module")

PRIMARY_TIMEOUT_S = 1.0
SETTLE_TIMEOUT_S = 10.0
READ_TIMEOUT_S = 10.0  # a passing test reads its reply in far less


@dataclass
class Env:
    proxy: ServeProcess
    primary: FaultServer
    canary: RecordingCanary
    baseline_fds: int


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _other_fds(proxy: ServeProcess, primary_port: int) -> int:
    """Descriptors except client connections and those to the primary."""
    c = census(proxy.pid)
    ports = (_port(proxy.url), _port(proxy.admin_url))
    accepted = [s for s in c.from_ports(*ports) if s.state != "LISTEN"]
    return c.total - len(accepted) - len(c.to_port(primary_port))


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, host: str) -> AsyncIterator[Env]:
    async with (
        FaultServer("answer", by_path=True, interval_s=0.1) as primary,
        RecordingCanary() as canary,
    ):
        rules = (
            f"primary {primary.url} {{ timeout {PRIMARY_TIMEOUT_S:g}s }}\n"
            f"canary c {{ server {canary.url} workers 2 queue 64 timeout 2s max_body 16MiB }}\n"
            "mirror all { to c }\n"
        )
        async with serve_proxy(tmp_path_factory.mktemp("primary-faults"), rules) as proxy:
            reply = await exchange(proxy, b"GET /answer/warm HTTP/1.1\r\nHost: x\r\n\r\n")
            assert reply.startswith(b"HTTP/1.1 200"), reply
            await _settled(proxy, primary, canary, None)
            yield Env(proxy, primary, canary, _other_fds(proxy, primary.port))
            assert "Traceback" not in proxy.log(), proxy.log()


async def exchange(proxy: ServeProcess, *requests: bytes) -> bytes:
    """Send `requests` one after another on one connection, each after the previous reply
    was read; return the replies' bytes (a reply ends at its framing or at the close)."""
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        out = b""
        for request in requests:
            writer.write(request)
            await writer.drain()
            out += await _read_reply(reader)
        return out
    finally:
        writer.close()
        await writer.wait_closed()


async def _read_reply(reader: asyncio.StreamReader) -> bytes:
    """One reply: its head, then a body by its framing, or until the proxy closes."""
    async with asyncio.timeout(READ_TIMEOUT_S):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as exc:
            return exc.partial
        lines = head.lower().split(b"\r\n")
        length = next(
            (int(x.split(b":")[1]) for x in lines if x.startswith(b"content-length:")), None
        )
        if length is not None:
            try:
                return head + await reader.readexactly(length)
            except asyncio.IncompleteReadError as exc:
                return head + exc.partial
        body = b""
        while not body.endswith(b"\r\n0\r\n\r\n") and not body.startswith(b"0\r\n\r\n"):
            chunk = await reader.read(65536)
            if not chunk:
                break
            body += chunk
        return head + body


async def _closed_by_proxy(reader: asyncio.StreamReader) -> bool:
    async with asyncio.timeout(READ_TIMEOUT_S):
        return await reader.read(1) == b""


async def _settled(
    proxy: ServeProcess, primary: FaultServer, canary: RecordingCanary, baseline: int | None
) -> None:
    """Poll until the tees are accounted for, no socket to the primary is half-closed or
    outlives the server's end, and the other descriptors are back to `baseline`."""
    deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT_S
    while True:
        text = await proxy.metrics()
        d, c, f, p = (
            metric(text, "sidecar_mirror_requests_total", outcome=o)
            for o in ("dispatched", "completed", "failed", "panicked")
        )
        to_primary = census(proxy.pid).to_port(primary.port)
        ok = (
            d == c + f + p
            and p == 0
            and metric(text, "sidecar_mirror_busy_workers") == 0
            and metric(text, "sidecar_mirror_queue_depth") == 0
            and len(to_primary) <= primary.connections_open
            and all(s.state == "ESTABLISHED" for s in to_primary)
            and (baseline is None or _other_fds(proxy, primary.port) <= baseline)
        )
        if ok:
            return
        assert asyncio.get_running_loop().time() < deadline, (
            f"not settled: to primary {to_primary} (server side open: "
            f"{primary.connections_open}), fds {_other_fds(proxy, primary.port)} vs "
            f"{baseline}\n{text}"
        )
        await asyncio.sleep(0.05)


async def _open(proxy: ServeProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = proxy.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


@pytest.mark.parametrize(
    "fault", ["reset_cl", "truncated_cl", "reset_chunked", "truncated_chunked"]
)
async def test_broken_body_reaches_the_client_truncated_then_closed(env: Env, fault: str) -> None:
    """After the head the status cannot change: the client gets the bytes that came and
    then a closed connection, never a complete-looking response (as nginx does). The
    request is counted with the status the client got, as nginx logs it."""
    ok_before = metric(await env.proxy.metrics(), "sidecar_requests_total", code="2xx")
    reader, writer = await _open(env.proxy)
    try:
        writer.write(f"GET /{fault}/x HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await writer.drain()
        reply = await _read_reply(reader)
        assert await _closed_by_proxy(reader), "the proxy kept a broken response's connection"
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), reply[:300]
    if fault.endswith("_cl"):
        assert f"content-length: {TRUNCATED_DECLARED_BYTES}".encode() in head.lower()
        assert len(body) < TRUNCATED_DECLARED_BYTES
    else:
        # Re-chunked by the proxy: the bytes that came, and no terminating chunk.
        assert b"transfer-encoding: chunked" in head.lower()
        assert b"t" * TRUNCATED_SENT_BYTES in body.replace(b"\r\n", b"").replace(b"3e8", b"")
        assert not body.endswith(b"0\r\n\r\n"), body[-50:]
    await _settled(env.proxy, env.primary, env.canary, env.baseline_fds)
    assert "mid-response" in env.proxy.log()
    text = await env.proxy.metrics()
    assert metric(text, "sidecar_requests_total", code="2xx") == ok_before + 1


async def test_slow_headers_past_the_timeout_504_and_primary_connection_closed(env: Env) -> None:
    before = metric(await env.proxy.metrics(), "sidecar_requests_total", code="5xx")
    t0 = time.monotonic()
    reply = await exchange(env.proxy, b"GET /slow_headers/x HTTP/1.1\r\nHost: x\r\n\r\n")
    elapsed = time.monotonic() - t0
    assert reply.startswith(b"HTTP/1.1 504"), reply
    assert PRIMARY_TIMEOUT_S <= elapsed < PRIMARY_TIMEOUT_S + 2.0
    conn = env.primary.conns[-1]
    await _settled(env.proxy, env.primary, env.canary, env.baseline_fds)
    assert conn.closed_at is not None  # the proxy gave the connection up, not just the request
    text = await env.proxy.metrics()
    assert metric(text, "sidecar_requests_total", code="5xx") == before + 1


async def test_primary_closing_keep_alive_after_each_response(env: Env) -> None:
    """The primary closes every connection right after a keep-alive response (no
    `Connection: close`): the next request, on the same client connection, still works."""
    before = env.primary.connections_total
    request = b"GET /keepalive_close/x HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(3):  # sequential on one client connection, with idle time in between
        reply = await exchange(env.proxy, request, request)
        assert reply.count(b"HTTP/1.1 200") == 2 and reply.endswith(b"ok"), reply
    assert env.primary.connections_total - before >= 6
    await _settled(env.proxy, env.primary, env.canary, env.baseline_fds)


async def test_primary_closing_without_an_answer_502(env: Env) -> None:
    reply = await exchange(env.proxy, b"GET /close_silently/x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 502"), reply
    assert b"text/plain" in reply
    await _settled(env.proxy, env.primary, env.canary, env.baseline_fds)
    # Still serving: the next request is fine.
    reply = await exchange(env.proxy, b"GET /answer/x HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200"), reply


async def test_primary_reset_during_upload_502_and_tee_aborted(env: Env) -> None:
    """The primary resets as soon as the head is in while the client is still uploading:
    the client gets a 502 (or a closed connection) and, having sent only part of its body,
    goes away: the tee ends as dropped_aborted (the body never became whole), and nothing
    leaks. (A client that sends its whole body anyway has it read and discarded by the
    proxy, and mirrored: tests/serve/test_early_answer.py.)"""
    text = await env.proxy.metrics()
    aborted = metric(text, "sidecar_mirror_requests_total", outcome="dropped_aborted")
    mirrored = len(env.canary.requests)
    size = 4 << 20
    reader, writer = await _open(env.proxy)
    try:
        writer.write(
            f"POST /reset_early/x HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
        )
        block = b"u" * 65536
        sent = 0
        reply = b""
        try:
            while sent < size // 4:  # stops once the proxy answers or closes, or at 1 MiB
                writer.write(block)
                sent += len(block)
                await writer.drain()
                if reader.at_eof() or reader._buffer:  # type: ignore[attr-defined]
                    break
        except ConnectionError:
            pass
        try:
            reply = await _read_reply(reader)
        except ConnectionError:
            reply = b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    assert reply == b"" or reply.startswith(b"HTTP/1.1 502"), reply[:300]

    async def aborted_counted() -> bool:
        t = await env.proxy.metrics()
        return metric(t, "sidecar_mirror_requests_total", outcome="dropped_aborted") == aborted + 1

    deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT_S
    while not await aborted_counted():
        assert asyncio.get_running_loop().time() < deadline, await env.proxy.metrics()
        await asyncio.sleep(0.05)
    await _settled(env.proxy, env.primary, env.canary, env.baseline_fds)
    assert len(env.canary.requests) == mirrored  # an incomplete body is never mirrored
