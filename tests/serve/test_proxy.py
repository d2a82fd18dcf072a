"""`sidecar serve` as a subprocess, on real loopback sockets: the proxy as docs/proxy.md and README describe it.

The primary (tests/support/primary.py under hypercorn) and the canaries (tests/support/servers.py)
run in the test's event loop; the proxy is a separate process started per module.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.primary import PrimaryApp
from tests.support.serve import free_port, metric, serve_proxy
from tests.support.servers import RecordingCanary, serve_asgi

# Streaming tests move this much each way; memory must stay bounded regardless. 256 MiB by
# default keeps the file fast and is four times the RSS bound below, so any buffering of
# the body would fail; SIDECAR_TEST_STREAM_BYTES=1073741824 runs the full 1 GiB (~26 s).
STREAM_BYTES = int(os.environ.get("SIDECAR_TEST_STREAM_BYTES", str(256 << 20)))
# Growth of the proxy's peak RSS allowed while streaming STREAM_BYTES (it must not scale).
STREAM_RSS_GROWTH_MAX_BYTES = 64 << 20


async def raw_exchange(url: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send raw bytes on a new connection; return everything until the server closes."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


@pytest.fixture
async def primary() -> AsyncIterator[tuple[PrimaryApp, str]]:
    app = PrimaryApp()
    async with serve_asgi(app) as url:
        yield app, url


def rules_for(
    primary_url: str, *canaries: tuple[str, str, str], extra: str = "", timeout: str = "1s"
) -> str:
    """A primary, canaries (name, url, settings) each mirrored on path prefix /<name>/."""
    out = [f"primary {primary_url} {{ timeout {timeout} }}"]
    for name, url, settings in canaries:
        out.append(f"canary {name} {{ server {url} {settings} }}")
        out.append(f'mirror m_{name} {{ when path ^= "/{name}/" to {name} }}')
    out.append(extra)
    return "\n".join(out) + "\n"


# --- forwarding ------------------------------------------------------------------------------


@pytest.mark.usefixtures("host")
async def test_request_forwarded_unchanged_except_hop_by_hop_and_forwarded(
    tmp_path: Path, primary: tuple[PrimaryApp, str]
) -> None:
    _, purl = primary
    async with serve_proxy(tmp_path, rules_for(purl)) as proxy:
        raw = (
            b"PUT /echo/a%20b/../c?x=1&y=%2F HTTP/1.1\r\n"
            b"Host: My.Host:8443\r\n"
            b"X-First: 1\r\n"
            b"Connection: keep-alive, X-Custom\r\n"
            b"X-Custom: secret\r\n"
            b"Keep-Alive: timeout=5\r\n"
            b"TE: trailers\r\n"
            b"Proxy-Authorization: Basic x\r\n"
            b"X-Forwarded-For: 203.0.113.9\r\n"
            b"X-Repeat: a\r\n"
            b"X-Repeat: b\r\n"
            b"Content-Length: 5\r\n"
            b"Connection: close\r\n"
            b"\r\nhello"
        )
        reply = await raw_exchange(proxy.url, raw)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), reply
    doc = json.loads(body)
    assert doc["method"] == "PUT"
    assert doc["raw_path"] == "/echo/a%20b/../c"
    assert doc["query"] == "x=1&y=%2F"
    assert doc["sha256"] == hashlib.sha256(b"hello").hexdigest()
    headers = [(n, v) for n, v in doc["headers"]]
    names = [n for n, _ in headers]
    for gone in ("connection", "x-custom", "keep-alive", "te", "proxy-authorization"):
        assert gone not in names
    assert ("host", "My.Host:8443") in headers
    assert [v for n, v in headers if n == "x-repeat"] == ["a", "b"]
    assert ("x-forwarded-for", "203.0.113.9, 127.0.0.1") in headers
    assert ("x-forwarded-proto", "http") in headers
    assert ("x-forwarded-host", "My.Host:8443") in headers
    assert names.index("x-first") < names.index("x-repeat")


async def test_forwarded_proto_and_host_kept_when_present(
    tmp_path: Path, primary: tuple[PrimaryApp, str]
) -> None:
    _, purl = primary
    async with (
        serve_proxy(tmp_path, rules_for(purl)) as proxy,
        httpx.AsyncClient() as client,
    ):
        r = await client.get(
            f"{proxy.url}/echo",
            headers={"X-Forwarded-Proto": "https", "X-Forwarded-Host": "front.example"},
        )
    headers = [tuple(h) for h in r.json()["headers"]]
    assert ("x-forwarded-proto", "https") in headers
    assert ("x-forwarded-host", "front.example") in headers
    assert sum(1 for n, _ in headers if n == "x-forwarded-proto") == 1


@pytest.mark.usefixtures("host")
async def test_response_status_headers_and_body_exact(
    tmp_path: Path, primary: tuple[PrimaryApp, str]
) -> None:
    _, purl = primary
    async with serve_proxy(tmp_path, rules_for(purl)) as proxy:
        reply = await raw_exchange(
            proxy.url, b"GET /cookies HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        chunked = await raw_exchange(
            proxy.url, b"GET /chunked HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
    head, _, body = reply.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 201")
    headers = [tuple(line.split(b": ", 1)) for line in lines[1:]]
    assert [v for n, v in headers if n.lower() == b"set-cookie"] == [
        b"a=1; Path=/",
        b"b=2",
        b"c=3; HttpOnly",
    ]
    names = {n.lower() for n, _ in headers}
    assert b"x-kept" in names
    assert not names & {b"x-hop", b"keep-alive", b"proxy-authenticate"}
    assert body == b"cookies!"
    # The primary's own Date and Server pass through; the proxy adds none of its own.
    assert sum(1 for n, _ in headers if n.lower() == b"date") == 1
    assert [v for n, v in headers if n.lower() == b"server"] == [b"hypercorn-h11"]
    # A chunked response is re-chunked for the client with the same bytes.
    head, _, body = chunked.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    assert body.replace(b"\r\n", b"").endswith(b"three0")


async def test_unreachable_primary_502_and_timeout_504_counted(
    tmp_path: Path, primary: tuple[PrimaryApp, str]
) -> None:
    _, purl = primary
    async with (
        serve_proxy(tmp_path, rules_for(purl)) as proxy,
        serve_proxy(tmp_path, rules_for(f"http://127.0.0.1:{free_port()}")) as dead,
        httpx.AsyncClient() as client,
    ):
        r = await client.get(f"{dead.url}/x")
        assert r.status_code == 502
        assert r.headers["content-type"].startswith("text/plain")
        assert b"primary" in r.content and len(r.content) < 200
        r = await client.get(f"{proxy.url}/slow?s=3")  # the primary timeout is 1s
        assert r.status_code == 504
        assert r.headers["content-type"].startswith("text/plain")
        assert metric(await dead.metrics(), "sidecar_requests_total", code="5xx") == 1
        assert metric(await proxy.metrics(), "sidecar_requests_total", code="5xx") == 1
    assert "502" in dead.log()
    assert "504" in proxy.log()


# --- refused framing ---------------------------------------------------------------------------

BAD_REQUESTS = {
    "cl_and_te": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "two_lengths": (
        b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    "te_in_http10": (
        b"POST /echo HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "bad_request_line": (b"GET /echo HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
    "huge_headers_one_read": (
        b"GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        431,
    ),
    "connect": (b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n", 405),
}


@pytest.mark.usefixtures("host")
async def test_malformed_requests_refused_never_forwarded_nor_mirrored(
    tmp_path: Path, primary: tuple[PrimaryApp, str]
) -> None:
    app, purl = primary
    async with RecordingCanary() as canary:
        rules = rules_for(purl, extra=f"canary c {{ server {canary.url} }}\nmirror all {{ to c }}")
        async with serve_proxy(tmp_path, rules) as proxy:
            for name, (raw, status) in BAD_REQUESTS.items():
                reply = await raw_exchange(proxy.url, raw)
                assert reply.startswith(f"HTTP/1.1 {status}".encode()), (name, reply[:200])
            # A well-formed request afterwards is forwarded and mirrored: the pipes work.
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{proxy.url}/echo")).status_code == 200
            await canary.wait_for(1)
            text = await proxy.metrics()
    assert app.requests == [("GET", b"/echo")]
    assert len(canary.requests) == 1
    assert metric(text, "sidecar_mirror_requests_total", outcome="dispatched") == 1


@pytest.mark.usefixtures("host")
async def test_absolute_form_goes_to_the_primary_only(
    tmp_path: Path, primary: tuple[PrimaryApp, str]
) -> None:
    app, purl = primary
    elsewhere = RecordingCanary()
    async with elsewhere, serve_proxy(tmp_path, rules_for(purl)) as proxy:
        raw = (
            f"GET {elsewhere.url}/echo/abs?q=1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ).encode()
        reply = await raw_exchange(proxy.url, raw)
        assert reply.startswith(b"HTTP/1.1 200")
        doc = json.loads(reply.partition(b"\r\n\r\n")[2])
    assert doc["raw_path"] == "/echo/abs" and doc["query"] == "q=1"
    assert ["host", f"127.0.0.1:{elsewhere.port}"] in doc["headers"]
    assert elsewhere.requests == []
    assert app.requests == [("GET", b"/echo/abs")]


# --- mirroring ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("host")
async def test_mirrored_upload_byte_identical_content_length_and_chunked(
    tmp_path: Path, primary: tuple[PrimaryApp, str]
) -> None:
    _, purl = primary
    payload = os.urandom(700_000)
    digest = hashlib.sha256(payload).hexdigest()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(payload), 50_000):
            yield payload[i : i + 50_000]

    async with RecordingCanary() as canary:
        rules = rules_for(purl, ("c", canary.url, "max_body 1MiB"))
        async with serve_proxy(tmp_path, rules) as proxy, httpx.AsyncClient() as client:
            r = await client.post(f"{proxy.url}/c/echo", content=payload)
            assert r.json()["sha256"] == digest
            first = await canary.wait_for(1)
            r = await client.post(f"{proxy.url}/c/echo", content=chunks())
            assert r.json()["sha256"] == digest
            assert ["transfer-encoding", "chunked"] in r.json()["headers"]
            second = await canary.wait_for(2)
    for rec in (first, second):
        assert hashlib.sha256(rec.body).hexdigest() == digest
        assert rec.header(b"content-length") == str(len(payload)).encode()
        assert rec.header(b"transfer-encoding") is None
        assert rec.header(b"x-mirror") == b"1"


async def test_canary_trouble_never_slows_the_primary(
    tmp_path: Path, primary: tuple[PrimaryApp, str]
) -> None:
    """Slow, silent, dead and resetting canaries: 200 sequential requests on ONE keep-alive
    connection each all succeed, with latency near the unmirrored run; outcomes counted."""
    _, purl = primary
    slow = RecordingCanary("delay", delay_s=0.5)
    silent = RecordingCanary("hold")
    reset = RecordingCanary("reset")
    dead_url = f"http://127.0.0.1:{free_port()}"
    settings = "workers 2 queue 4 timeout 1s"
    async with slow, silent, reset:
        rules = rules_for(
            purl,
            ("slow", slow.url, settings),
            ("silent", silent.url, settings),
            ("dead", dead_url, settings),
            ("reset", reset.url, settings),
        )
        async with serve_proxy(tmp_path, rules) as proxy:
            medians = {}
            async with httpx.AsyncClient(
                limits=httpx.Limits(max_connections=1, max_keepalive_connections=1)
            ) as client:
                for name in ("none", "slow", "silent", "dead", "reset"):
                    times = []
                    for _ in range(200):
                        t0 = time.perf_counter()
                        r = await client.get(f"{proxy.url}/{name}/x")
                        times.append(time.perf_counter() - t0)
                        assert r.status_code == 200 and r.content == b"ok"
                    medians[name] = statistics.median(times)

            async def settled() -> str:
                text = await proxy.metrics()
                return text

            def outcome(text: str, canary: str, name: str) -> float:
                return metric(text, "sidecar_mirror_requests_total", canary=canary, outcome=name)

            # Every admitted job ends within its 1s deadline (the silent canary's too).
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                text = await settled()
                done = all(
                    outcome(text, c, "dispatched")
                    == outcome(text, c, "completed")
                    + outcome(text, c, "failed")
                    + outcome(text, c, "panicked")
                    for c in ("slow", "silent", "dead", "reset")
                )
                if done or asyncio.get_running_loop().time() > deadline:
                    break
                await asyncio.sleep(0.05)
            assert done, text
    base = medians["none"]
    for name in ("slow", "silent", "dead", "reset"):
        # Generous: the mirror's own work shares the proxy's CPU, never its waiting.
        assert medians[name] < 3 * base + 0.005, medians
    for c in ("slow", "silent", "dead", "reset"):
        total = sum(
            outcome(text, c, o)
            for o in ("dispatched", "dropped_full", "dropped_rate", "dropped_oversize")
        )
        assert total == 200, (c, text)
    assert outcome(text, "slow", "dropped_full") > 0
    assert outcome(text, "slow", "completed") > 0
    assert outcome(text, "silent", "failed") > 0
    assert outcome(text, "dead", "failed") > 0
    assert outcome(text, "reset", "failed") > 0
    assert outcome(text, "reset", "completed") == 0
    assert metric(text, "sidecar_requests_total", code="2xx") == 1000


# --- streaming with bounded memory -------------------------------------------------------------


def _rss_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"{field} not found")


def _upload(url: str, size: int) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            f"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        block = b"u" * (1 << 20)
        sent = 0
        while sent < size:
            part = block if size - sent >= len(block) else block[: size - sent]
            s.sendall(part)
            sent += len(part)
        out = bytearray()
        while chunk := s.recv(65536):
            out += chunk
        return bytes(out)


def _download(url: str, size: int) -> int:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            f"GET /download?n={size} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        buf = bytearray(1 << 20)
        total = 0
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(65536)
        total = len(head.partition(b"\r\n\r\n")[2])
        view = memoryview(buf)
        while n := s.recv_into(view):
            total += n
        return total


@pytest.mark.usefixtures("host")
@pytest.mark.parametrize("direction", ["upload", "download"])
async def test_streaming_keeps_memory_bounded(
    tmp_path: Path, primary: tuple[PrimaryApp, str], direction: str
) -> None:
    _, purl = primary
    async with RecordingCanary() as canary:
        # Mirrored too: the tee keeps at most max_body, then drops the copy as oversize.
        rules = rules_for(
            purl, extra=f"canary c {{ server {canary.url} }}\nmirror all {{ to c }}", timeout="10m"
        )
        async with serve_proxy(tmp_path, rules) as proxy:
            before = _rss_bytes(proxy.pid, "VmRSS")
            if direction == "upload":
                reply = await asyncio.to_thread(_upload, proxy.url, STREAM_BYTES)
                assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
                assert reply.endswith(str(STREAM_BYTES).encode())
            else:
                got = await asyncio.to_thread(_download, proxy.url, STREAM_BYTES)
                assert got == STREAM_BYTES
            peak = _rss_bytes(proxy.pid, "VmHWM")
            text = await proxy.metrics()
    assert peak - before < STREAM_RSS_GROWTH_MAX_BYTES, (before, peak)
    if direction == "upload":
        assert metric(text, "sidecar_mirror_requests_total", outcome="dropped_oversize") == 1
        assert canary.requests == []


@pytest.mark.usefixtures("host")
async def test_client_abort_mid_upload_drops_tees_as_aborted(
    tmp_path: Path, primary: tuple[PrimaryApp, str]
) -> None:
    _, purl = primary
    async with RecordingCanary() as canary:
        rules = rules_for(purl, ("c", canary.url, ""))
        async with serve_proxy(tmp_path, rules) as proxy:
            host, port = proxy.url.removeprefix("http://").split(":")
            _, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /c/sink HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n")
            writer.write(b"a" * 1000)
            await writer.drain()
            writer.close()
            await writer.wait_closed()
            deadline = asyncio.get_running_loop().time() + 10
            while True:
                text = await proxy.metrics()
                if metric(text, "sidecar_mirror_requests_total", outcome="dropped_aborted") == 1:
                    break
                assert asyncio.get_running_loop().time() < deadline, text
                await asyncio.sleep(0.02)
            # The proxy carries on.
            async with httpx.AsyncClient() as client:
                assert (await client.get(f"{proxy.url}/x")).status_code == 200
    assert canary.requests == []
    assert "Traceback" not in proxy.log()
