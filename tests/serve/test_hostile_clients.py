"""Hostile clients on raw sockets against a real `sidecar serve` process.

Each hostile request gets a 4xx or a closed connection; nothing malformed is forwarded
(the primary records only requests whose body arrived whole) or mirrored (the canary
records everything it gets); a well-behaved client on its own connection keeps getting
200s meanwhile. test_proxy.py already covers CL+TE, two different Content-Lengths, TE on
HTTP/1.0, a bad request line, a huge header in one read and CONNECT; this file covers
the variants and the rest of issue 7's list.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import pytest_asyncio

from tests.support.primary import PrimaryApp
from tests.support.serve import ServeProcess, metric, serve_proxy
from tests.support.servers import RecordingCanary, serve_asgi, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

READ_TIMEOUT_S = 10.0
GOOD_MAX_REQUESTS = 5000  # the well-behaved client's bound; a test stops it far sooner
GOOD_DURING = 3  # requests the good client must complete while a hostile case runs


class Recorder:
    """The primary app, recording (method, raw path, body length) of complete requests."""

    def __init__(self) -> None:
        self.app = PrimaryApp()
        self.complete: list[tuple[str, bytes, int]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        got = 0
        whole = False

        async def rx() -> dict[str, Any]:
            nonlocal got, whole
            message: dict[str, Any] = await receive()
            if message["type"] == "http.request":
                got += len(message.get("body", b""))
                whole = whole or not message.get("more_body", False)
            return message

        await self.app(scope, rx, send)
        if whole:
            self.complete.append((scope["method"], scope["raw_path"], got))

    def saw(self, marker: bytes) -> list[tuple[str, bytes, int]]:
        return [r for r in self.complete if marker in r[1]]


@dataclass
class Env:
    proxy: ServeProcess
    primary: Recorder
    canary: RecordingCanary
    other: RecordingCanary  # stands in for "another host": must never be contacted


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, host: str) -> AsyncIterator[Env]:
    recorder = Recorder()
    async with (
        RecordingCanary() as canary,
        RecordingCanary() as other,
        serve_asgi(recorder) as purl,
    ):
        rules = (
            f"primary {purl} {{ timeout 5s }}\n"
            f"canary c {{ server {canary.url} workers 4 queue 256 timeout 5s }}\n"
            "mirror all { to c }\n"
        )
        async with serve_proxy(tmp_path_factory.mktemp("hostile"), rules) as proxy:
            yield Env(proxy, recorder, canary, other)
            assert other.connections_total == 0, "the proxy contacted another host"
            assert "Traceback" not in proxy.log(), proxy.log()


@contextlib.asynccontextmanager
async def good_client(env: Env) -> AsyncIterator[list[int]]:
    """A well-behaved keep-alive client looping GET /echo/good until the block ends; after
    the block it must have completed GOOD_DURING more requests, all 200."""
    statuses: list[int] = []
    stop = asyncio.Event()

    async def run() -> None:
        async with httpx.AsyncClient(timeout=READ_TIMEOUT_S) as client:
            for _ in range(GOOD_MAX_REQUESTS):
                r = await client.get(f"{env.proxy.url}/echo/good")
                statuses.append(r.status_code)
                if stop.is_set():
                    return

    task = asyncio.create_task(run())
    try:
        yield statuses
        await wait_until(lambda: len(statuses) >= GOOD_DURING or task.done(), what="good client")
    finally:
        stop.set()
        await task
    assert len(statuses) >= GOOD_DURING and set(statuses) == {200}, statuses[-20:]


async def _connect(env: Env) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = env.proxy.url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


async def raw(env: Env, data: bytes | list[bytes]) -> bytes:
    """Send `data` (a list: one write each, draining between) and read until the proxy
    closes the connection; a reset counts as a close."""
    reader, writer = await _connect(env)
    out = b""
    try:
        with contextlib.suppress(ConnectionError):
            for part in [data] if isinstance(data, bytes) else data:
                writer.write(part)
                await writer.drain()
        async with asyncio.timeout(READ_TIMEOUT_S):
            with contextlib.suppress(ConnectionError):
                while chunk := await reader.read(65536):
                    out += chunk
    finally:
        await _close(writer)
    return out


def _status(reply: bytes) -> int | None:
    if not reply.startswith(b"HTTP/1.1 "):
        return None
    return int(reply[9:12])


# --- malformed framing and headers: 4xx or closed, never forwarded nor mirrored ---------------

H = b"Host: x\r\n"
HOSTILE: dict[str, bytes | list[bytes]] = {
    # Bad chunk sizes: the head may already be on its way to the primary (bodies stream),
    # but the body never completes there, and nothing is mirrored.
    "chunk_not_hex": b"POST /echo/h-chunk-nothex HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk_negative": b"POST /echo/h-chunk-neg HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n-5\r\nhello\r\n0\r\n\r\n",
    "chunk_huge": b"POST /echo/h-chunk-huge HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\nfffffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
    "chunk_overrun": b"POST /echo/h-chunk-overrun HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhelloEXTRA\r\n0\r\n\r\n",
    "chunk_split_bad": [
        b"POST /echo/h-chunk-split HTTP/1.1\r\n" + H + b"Transfer-Encoding: chunked\r\n\r\n",
        b"5\r\nhello\r\n",
        b"q\r\n",
    ],
    # Content-Length variants beyond test_proxy's two differing headers.
    "cl_list_differing": b"POST /echo/h-cl-list HTTP/1.1\r\n"
    + H
    + b"Content-Length: 5, 6\r\n\r\nhello!",
    "cl_plus_sign": b"POST /echo/h-cl-plus HTTP/1.1\r\n" + H + b"Content-Length: +5\r\n\r\nhello",
    "cl_negative": b"POST /echo/h-cl-neg HTTP/1.1\r\n" + H + b"Content-Length: -1\r\n\r\nhello",
    "cl_hex": b"POST /echo/h-cl-hex HTTP/1.1\r\n" + H + b"Content-Length: 0x5\r\n\r\nhello",
    "cl_and_te_split": b"POST /echo/h-clte-split HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\nX-Pad: 1\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
    "te_gzip_chunked": b"POST /echo/h-te-gzip HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "te_twice": b"POST /echo/h-te-twice HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n",
    "te_space_before_colon": b"POST /echo/h-te-space HTTP/1.1\r\n"
    + H
    + b"Transfer-Encoding : chunked\r\nContent-Length: 5\r\n\r\nhello",
    # Oversized heads, arriving in pieces (test_proxy covers one read).
    "header_line_in_pieces": [b"GET /echo/h-bigline HTTP/1.1\r\n" + H + b"X-Big: "]
    + [b"a" * 2048] * 12
    + [b"\r\n\r\n"],
    "ten_thousand_headers": b"GET /echo/h-10k HTTP/1.1\r\n"
    + H
    + b"".join(b"X-H-%d: v\r\n" % i for i in range(10_000))
    + b"\r\n",
    # Invalid bytes in header names and values, obsolete line folding.
    "value_nul": b"GET /echo/h-nul HTTP/1.1\r\n" + H + b"X-Bad: a\x00b\r\n\r\n",
    "value_bare_cr": b"GET /echo/h-cr HTTP/1.1\r\n" + H + b"X-Bad: a\rb\r\n\r\n",
    "value_del": b"GET /echo/h-del HTTP/1.1\r\n" + H + b"X-Bad: a\x7fb\r\n\r\n",
    "value_ctl": b"GET /echo/h-ctl HTTP/1.1\r\n" + H + b"X-Bad: a\x01b\r\n\r\n",
    "name_space": b"GET /echo/h-namesp HTTP/1.1\r\n" + H + b"X Bad: 1\r\n\r\n",
    "name_nonascii": b"GET /echo/h-name8 HTTP/1.1\r\n" + H + b"X-B\xe4d: 1\r\n\r\n",
    "target_nul": b"GET /echo/h-tnul\x00 HTTP/1.1\r\n" + H + b"\r\n",
    "target_not_a_path": b"GET echo/h-tnopath HTTP/1.1\r\n" + H + b"\r\n",
    "target_userinfo": b"GET http://user@127.0.0.1/echo/h-tuser HTTP/1.1\r\n" + H + b"\r\n",
    "no_host": b"GET /echo/h-nohost HTTP/1.1\r\n\r\n",
    "bad_version": b"GET /echo/h-badver HTTP/9.9\r\n" + H + b"\r\n",
    "uri_too_long": b"GET /echo/h-longuri" + b"a" * 9000 + b" HTTP/1.1\r\n" + H + b"\r\n",
}


def _marker(data: bytes | list[bytes]) -> bytes:
    first = data if isinstance(data, bytes) else data[0]
    target = first.split(b" ")[1]
    return target[target.index(b"h-") :].rstrip(b"\x00")


@pytest.mark.parametrize("case", list(HOSTILE))
async def test_malformed_refused_never_forwarded_nor_mirrored(env: Env, case: str) -> None:
    data = HOSTILE[case]
    marker = _marker(data)
    async with good_client(env):
        reply = await raw(env, data)
    status = _status(reply)
    # A 4xx and the connection closed (raw() read to the close), or closed without a word.
    # 501 is RFC 9112's answer to a transfer coding the server does not implement.
    refused = status is not None and (400 <= status < 500 or (status == 501 and "te_" in case))
    assert reply == b"" or refused, reply[:300]
    if status is not None:
        assert reply.count(b"HTTP/1.1 ") == 1, reply  # nothing after the refusal was served
    # Give a forwarded or mirrored request the time to show up: a marked request sent
    # after it has arrived at both ends.
    await _barrier(env)
    assert env.primary.saw(marker) == [], (case, env.primary.saw(marker))
    assert [r for r in env.canary.requests if marker in r.target] == [], case


_barriers = iter(range(1_000_000))


async def _barrier(env: Env) -> None:
    """One request mirrored after the case: once the canary has it, anything the case
    would have caused (forwarded before it, admitted before it) has been recorded too."""
    target = b"/echo/barrier-%d" % next(_barriers)
    async with httpx.AsyncClient() as client:
        r = await client.get(f"{env.proxy.url}{target.decode()}")
        assert r.status_code == 200
    await wait_until(lambda: any(r.target == target for r in env.canary.requests), what="barrier")


async def test_lenient_forms_normalised_before_forwarding(env: Env) -> None:
    """A bare-LF line end is accepted as RFC 9112 allows, but what leaves the proxy is
    re-serialised: CRLF only (no parser disagreement). Obsolete line folding is refused
    (400, RFC 9112 section 5.2; issue 13): unfolding it let `Host: a` plus a folded
    `Transfer-Encoding: chunked` reach the primary as one Host value."""
    reply = await raw(
        env,
        b"GET /echo/h-fold HTTP/1.1\r\nHost: x\r\nX-Fold: a\r\n b\r\nConnection: close\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 400"), reply[:200]
    reply = await raw(env, b"GET /echo/h-lf HTTP/1.1\nHost: x\r\nConnection: close\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    await _barrier(env)
    assert [r for r in env.canary.requests if r.target == b"/echo/h-fold"] == []
    (mirrored,) = [r for r in env.canary.requests if r.target == b"/echo/h-lf"]
    assert all(b"\r" not in v and b"\n" not in v for _, v in mirrored.headers)


# --- slow clients: the proxy serves others meanwhile, and loses nothing -------------------------

SLOW_CLIENTS = 50
SLOW_TICK_S = 0.01  # the hostile pace: each slow client sends one byte per tick


async def test_slow_loris_headers_a_byte_at_a_time(env: Env) -> None:
    """SLOW_CLIENTS connections send their heads a byte at a time while the good client
    keeps getting 200s; when the heads are finally whole they are served normally."""
    conns = [await _connect(env) for _ in range(SLOW_CLIENTS)]
    heads = [
        b"GET /echo/loris-%d HTTP/1.1\r\nHost: x\r\nX-Slow: %s\r\nConnection: close\r\n\r\n"
        % (i, b"s" * 40)
        for i in range(SLOW_CLIENTS)
    ]
    try:
        async with good_client(env) as statuses:
            longest = max(len(h) for h in heads)
            for pos in range(longest - 1):  # everything but the final byte, bounded
                for (_, writer), head in zip(conns, heads, strict=True):
                    if pos < len(head) - 1:
                        writer.write(head[pos : pos + 1])
                await asyncio.sleep(SLOW_TICK_S)  # the attack's pace, not synchronisation
            served_meanwhile = len(statuses)
        assert served_meanwhile >= GOOD_DURING
        for (_, writer), head in zip(conns, heads, strict=True):
            writer.write(head[-1:])
        async with asyncio.timeout(READ_TIMEOUT_S):
            replies = [await reader.read() for reader, _ in conns]
    finally:
        for _, writer in conns:
            await _close(writer)
    assert all(r.startswith(b"HTTP/1.1 200") for r in replies), [r[:40] for r in replies]
    for i in range(SLOW_CLIENTS):
        assert env.primary.saw(b"/echo/loris-%d" % i)


async def test_slow_bodies_served_others_meanwhile_and_mirrored_whole(env: Env) -> None:
    uploads = 10
    size = 3000
    bodies = [bytes([65 + i]) * size for i in range(uploads)]
    conns = [await _connect(env) for _ in range(uploads)]
    try:
        async with good_client(env):
            for i, (_, writer) in enumerate(conns):
                writer.write(
                    b"POST /echo/slowbody-%d HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                    b"Connection: close\r\n\r\n" % (i, size)
                )
            for pos in range(0, size, 100):  # 30 pieces per upload, bounded
                for (_, writer), body in zip(conns, bodies, strict=True):
                    writer.write(body[pos : pos + 100])
                await asyncio.sleep(SLOW_TICK_S)  # the attack's pace
        async with asyncio.timeout(READ_TIMEOUT_S):
            replies = [await reader.read() for reader, _ in conns]
    finally:
        for _, writer in conns:
            await _close(writer)
    for body, reply in zip(bodies, replies, strict=True):
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        doc = json.loads(reply.partition(b"\r\n\r\n")[2])
        assert doc["sha256"] == hashlib.sha256(body).hexdigest()
    # No data lost: each slow upload is mirrored whole.
    await wait_until(
        lambda: sum(b"/echo/slowbody-" in r.target for r in env.canary.requests) == uploads
    )
    for r in env.canary.requests:
        if b"/echo/slowbody-" in r.target:
            i = int(r.target.rsplit(b"-", 1)[1])
            assert r.body == bodies[i]


# --- pipelining ---------------------------------------------------------------------------------


async def test_pipelined_requests_answered_in_order_and_mirrored(env: Env) -> None:
    data = (
        b"GET /echo/pipe-1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo/pipe-2 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
        b"GET /echo/pipe-3 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    async with good_client(env):
        reply = await raw(env, data)
    assert reply.count(b"HTTP/1.1 200") == 3, reply
    paths = [
        json.loads(part.split(b"\r\n\r\n", 1)[1].split(b"HTTP/1.1")[0])["raw_path"]
        for part in reply.split(b"HTTP/1.1 200")[1:]
    ]
    assert paths == ["/echo/pipe-1", "/echo/pipe-2", "/echo/pipe-3"]
    await wait_until(lambda: sum(b"/echo/pipe-" in r.target for r in env.canary.requests) == 3)
    assert env.primary.saw(b"/echo/pipe-2") == [("POST", b"/echo/pipe-2", 5)]


async def test_pipelined_smuggling_attempt_stops_at_the_ambiguous_request(env: Env) -> None:
    """A request hidden in the body of an ambiguous (CL + TE) one never reaches anyone."""
    hidden = b"GET /echo/smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    data = (
        b"GET /echo/smug-1 HTTP/1.1\r\nHost: x\r\n\r\n"
        b"POST /echo/smug-2 HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" % (5 + len(hidden)) + hidden
    )
    reply = await raw(env, data)
    assert reply.startswith(b"HTTP/1.1 200"), reply
    assert reply.count(b"HTTP/1.1 ") == 2 and b"HTTP/1.1 400" in reply, reply
    await _barrier(env)
    for marker in (b"smug-2", b"smuggled"):
        assert env.primary.saw(marker) == []
        assert not [r for r in env.canary.requests if marker in r.target]


# --- never an open proxy; the loop guard ------------------------------------------------------


async def test_never_an_open_proxy(env: Env) -> None:
    """Targets and headers naming another host: the primary (and the rule's canary) get the
    request, the other host is never contacted (checked again at module teardown)."""
    other = f"127.0.0.1:{env.other.port}".encode()
    cases = [
        b"GET http://%s/echo/open-abs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % other,
        b"GET https://%s/echo/open-https HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % other,
        b"GET /echo/open-host HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % other,
        b"GET //%s/echo/open-dslash HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % other,
        b"GET /echo/open-xfh HTTP/1.1\r\nHost: x\r\nX-Forwarded-Host: %s\r\n"
        b"Connection: close\r\n\r\n" % other,
    ]
    async with good_client(env):
        for data in cases:
            reply = await raw(env, data)
            assert reply.startswith(b"HTTP/1.1 200"), (data, reply[:200])
        reply = await raw(env, b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (other, other))
        assert reply.startswith(b"HTTP/1.1 405"), reply
    for marker in (b"open-abs", b"open-https", b"open-host", b"open-dslash", b"open-xfh"):
        assert len(env.primary.saw(marker)) == 1, marker
    await wait_until(lambda: sum(b"/echo/open-" in r.target for r in env.canary.requests) == 5)
    assert env.other.connections_total == 0
    assert env.other.requests == []


async def test_marked_requests_are_not_mirrored(env: Env) -> None:
    text = await env.proxy.metrics()
    before = metric(text, "sidecar_mirror_requests_total", outcome="dispatched")
    async with httpx.AsyncClient() as client:
        for name in ("X-Mirror", "x-mirror", "X-MIRROR"):
            r = await client.get(f"{env.proxy.url}/echo/marked-{name}", headers={name: "1"})
            assert r.status_code == 200
            assert [name.lower(), "1"] in r.json()["headers"]  # forwarded as sent
        # Another value is not the mark: mirrored, with the mark overwritten.
        r = await client.get(f"{env.proxy.url}/echo/marked-other", headers={"X-Mirror": "2"})
        assert r.status_code == 200
    await _barrier(env)
    assert not [r for r in env.canary.requests if b"/ECHO/MARKED-X" in r.target.upper()]
    other = [r for r in env.canary.requests if r.target == b"/echo/marked-other"]
    assert len(other) == 1 and other[0].header(b"x-mirror") == b"1"
    text = await env.proxy.metrics()
    # marked-other and the barrier
    assert metric(text, "sidecar_mirror_requests_total", outcome="dispatched") == before + 2
    for name in ("X-Mirror", "x-mirror", "X-MIRROR"):
        assert env.primary.saw(f"/echo/marked-{name}".encode())


async def test_http10_without_host_reaches_the_primary(env: Env) -> None:
    """HTTP/1.0 may omit Host: forwarded (with the primary's authority), not a 502."""
    reply = await raw(env, b"GET /echo/h-http10 HTTP/1.0\r\n\r\n")
    assert _status(reply) == 200, reply[:300]
    await _barrier(env)
    assert len(env.primary.saw(b"h-http10")) == 1
