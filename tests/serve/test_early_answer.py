"""The primary answers before the upload is whole (nginx's 413 for a body over its
client_max_body_size): through a real `sidecar serve`, the client gets the answer, then
the connection either keeps working (the rest of the body was read and discarded) or is
closed at once (`Connection: close`: the rest was too large or of unknown length); never a
hang, a leaked socket, a logged timeout or a shutdown that waits for the grace.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio

from sidecar.serve.upload import DISCARD_MAX_BYTES
from tests.support.limited import open_fds, serve_limited
from tests.support.scripted import EARLY_BODY, ScriptedPrimary
from tests.support.serve import ServeProcess, metric, serve_proxy
from tests.support.servers import RecordingCanary

pytestmark = pytest.mark.asyncio(loop_scope="module")

STEP_TIMEOUT_S = 5.0  # one exchange; a passing one takes milliseconds
SETTLE_TIMEOUT_S = 10.0
UPLOAD_BYTES = 2_000_000  # the reproduction: about twice nginx's default limit
# The descriptor test: a limit far below the number of clients that come and go.
FD_LIMIT = 128
FD_UPLOADS = 450


@dataclass
class Env:
    proxy: ServeProcess
    primary: ScriptedPrimary
    canary: RecordingCanary


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, host: str) -> AsyncIterator[Env]:
    async with ScriptedPrimary() as primary, RecordingCanary() as canary:
        rules = (
            f"primary {primary.url} {{ timeout 5s }}\n"
            f"canary c {{ server {canary.url} workers 2 queue 64 max_body 16MiB }}\n"
            'mirror uploads { when path ^= "/early" to c }\n'
        )
        async with serve_proxy(tmp_path_factory.mktemp("early"), rules) as proxy:
            yield Env(proxy, primary, canary)
            log = proxy.log()
            assert "Traceback" not in log, log
            assert "timed out" not in log and "stalled" not in log, log


def _host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").split(":")
    return host, int(port)


def _http_client_reproduction(url: str, path: str) -> tuple[int, int, bool]:
    """The issue's reproduction, verbatim but for the path: (first status, second status,
    whether the second request went over the same socket)."""
    host, port = _host_port(url)
    c = http.client.HTTPConnection(host, port, timeout=4)
    try:
        c.request("POST", path, body=b"q" * UPLOAD_BYTES)
        r = c.getresponse()
        r.read()
        first, sock = r.status, c.sock
        c.request("GET", "/x")
        r = c.getresponse()
        r.read()
        return first, r.status, sock is not None and c.sock is sock
    finally:
        c.close()


@pytest.mark.parametrize("path", ["/early_close/r", "/early_open/r", "/early_discard/r"])
async def test_http_client_gets_413_then_200_on_the_same_connection(env: Env, path: str) -> None:
    first, second, same = await asyncio.to_thread(_http_client_reproduction, env.proxy.url, path)
    assert (first, second) == (413, 200)
    assert same, "the proxy closed the connection instead of discarding the rest"


async def _open(proxy: ServeProcess) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(*_host_port(proxy.url))


async def _read_response(reader: asyncio.StreamReader) -> tuple[bytes, bytes]:
    """(head, body) of one Content-Length response."""
    async with asyncio.timeout(STEP_TIMEOUT_S):
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.lower().split(b"\r\n")
            if line.startswith(b"content-length:")
        )
        return head, await reader.readexactly(length)


async def _closed_by_proxy(reader: asyncio.StreamReader) -> bool:
    async with asyncio.timeout(STEP_TIMEOUT_S):
        try:
            return await reader.read(1) == b""
        except ConnectionResetError:
            return True


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()


@pytest.mark.parametrize("route", ["early_close", "early_open"])
async def test_chunked_upload_answered_early_is_closed_at_once(env: Env, route: str) -> None:
    """The rest of a chunked body has no known size: `Connection: close` and the proxy
    closes the connection right after the answer (the client still holds its rest)."""
    reader, writer = await _open(env.proxy)
    try:
        writer.write(
            f"POST /{route}/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
            + b"4000\r\n"
            + b"c" * 0x4000
            + b"\r\n"
        )
        await writer.drain()
        head, body = await _read_response(reader)
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b"connection: close" in head.lower(), head
        assert body == EARLY_BODY
        assert await _closed_by_proxy(reader)
    finally:
        await _close(writer)


async def test_rest_beyond_the_discard_bound_is_closed_at_once(env: Env) -> None:
    declared = DISCARD_MAX_BYTES + (4 << 20)
    reader, writer = await _open(env.proxy)
    try:
        writer.write(
            f"POST /early_open/big HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n\r\n".encode()
            + b"b" * 65536
        )
        await writer.drain()
        head, _ = await _read_response(reader)
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b"connection: close" in head.lower(), head
        assert await _closed_by_proxy(reader)
    finally:
        await _close(writer)


async def _outcomes(proxy: ServeProcess) -> dict[str, float]:
    text = await proxy.metrics()
    return {
        o: metric(text, "sidecar_mirror_requests_total", outcome=o)
        for o in ("dispatched", "dropped_aborted", "dropped_unread")
    }


async def _wait_outcome(proxy: ServeProcess, outcome: str, value: float) -> None:
    deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT_S
    while (got := (await _outcomes(proxy))[outcome]) != value:
        assert asyncio.get_running_loop().time() < deadline, (outcome, got, value)
        await asyncio.sleep(0.02)


async def test_discarded_body_received_whole_is_mirrored(env: Env) -> None:
    """The primary answered early, the proxy read the rest: the body was received whole, so
    its tee is dispatched (and the canary gets the whole body)."""
    before = await _outcomes(env.proxy)
    mirrored = len(env.canary.requests)
    size = 3_000_000  # far more than the socket buffers: the answer comes mid-upload
    reader, writer = await _open(env.proxy)
    try:
        writer.write(
            f"POST /early_close/m HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
            + b"m" * size
        )
        await writer.drain()
        head, _ = await _read_response(reader)
        assert head.startswith(b"HTTP/1.1 413"), head
        assert b"connection: close" not in head.lower()
    finally:
        await _close(writer)
    await _wait_outcome(env.proxy, "dispatched", before["dispatched"] + 1)
    req = await env.canary.wait_for(mirrored + 1)
    assert req.body == b"m" * size
    assert (await _outcomes(env.proxy))["dropped_aborted"] == before["dropped_aborted"]


async def test_upload_broken_off_after_the_answer_is_aborted(env: Env) -> None:
    """The client reads the early answer and goes away without sending the rest: the tee
    ends as dropped_aborted, as for any upload that broke off."""
    before = await _outcomes(env.proxy)
    reader, writer = await _open(env.proxy)
    try:
        writer.write(
            b"POST /early_open/a HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
            + b"a" * 1000
        )
        await writer.drain()
        head, _ = await _read_response(reader)
        assert head.startswith(b"HTTP/1.1 413"), head
    finally:
        await _close(writer)
    await _wait_outcome(env.proxy, "dropped_aborted", before["dropped_aborted"] + 1)
    assert (await _outcomes(env.proxy))["dispatched"] == before["dispatched"]


async def test_early_answers_leave_no_socket_and_sigterm_does_not_wait_for_the_grace(
    tmp_path: Path,
) -> None:
    async with (
        ScriptedPrimary() as primary,
        serve_proxy(tmp_path, f"primary {primary.url}\n", "--grace", "20") as proxy,
    ):
        for path in ("/early_close/r", "/early_open/r", "/early_discard/r"):
            got = await asyncio.to_thread(_http_client_reproduction, proxy.url, path)
            assert got == (413, 200, True)
        t0 = time.monotonic()
        assert await proxy.stop() == 0
        assert time.monotonic() - t0 < 5.0, "SIGTERM waited for the grace"
        assert "timed out" not in proxy.log(), proxy.log()


@pytest.mark.usefixtures("host")
async def test_450_early_answers_under_a_128_descriptor_limit(tmp_path: Path) -> None:
    """Each early answer used to leak its client connection for good: at 128 descriptors,
    450 of them exhausted the process. Two thirds are chunked uploads (closed at once), a
    third are 1 MB uploads on keep-alive connections (the rest discarded, 15 per
    connection); afterwards the process holds no more descriptors than before and answers."""
    async with (
        ScriptedPrimary() as primary,
        serve_limited(
            tmp_path, f"primary {primary.url} {{ timeout 5s }}\n", nofile=FD_LIMIT
        ) as proxy,
    ):
        baseline = open_fds(proxy.pid)
        chunked = FD_UPLOADS * 2 // 3
        for i in range(chunked):
            reader, writer = await _open(proxy)
            try:
                route = "early_close" if i % 2 else "early_open"
                writer.write(
                    f"POST /{route}/{i} HTTP/1.1\r\nHost: x\r\n"
                    "Transfer-Encoding: chunked\r\n\r\n1000\r\n".encode()
                    + b"f" * 0x1000
                    + b"\r\n"
                )
                await writer.drain()
                head, _ = await _read_response(reader)
                assert head.startswith(b"HTTP/1.1 413"), (i, head)
                assert await _closed_by_proxy(reader), i
            finally:
                await _close(writer)
        size = 1_000_000
        per_connection = 15
        for c in range((FD_UPLOADS - chunked) // per_connection):
            reader, writer = await _open(proxy)
            try:
                for i in range(per_connection):
                    route = ("early_close", "early_open", "early_discard")[i % 3]
                    writer.write(
                        f"POST /{route}/{c}-{i} HTTP/1.1\r\nHost: x\r\n"
                        f"Content-Length: {size}\r\n\r\n".encode()
                        + b"k" * size
                    )
                    await writer.drain()
                    head, _ = await _read_response(reader)
                    assert head.startswith(b"HTTP/1.1 413"), (c, i, head)
                writer.write(b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n")
                head, body = await _read_response(reader)
                assert head.startswith(b"HTTP/1.1 200") and body == b"ok", head
            finally:
                await _close(writer)
        reader, writer = await _open(proxy)
        try:
            writer.write(b"GET /after HTTP/1.1\r\nHost: x\r\n\r\n")
            head, body = await _read_response(reader)
            assert head.startswith(b"HTTP/1.1 200") and body == b"ok", head
        finally:
            await _close(writer)
        deadline = asyncio.get_running_loop().time() + SETTLE_TIMEOUT_S
        # Closed client connections still in CLOSE-WAIT are another item of the issue (the
        # host's keep-alive handling): allow one per keep-alive connection above.
        allowed = baseline + (FD_UPLOADS - chunked) // per_connection + 1
        while open_fds(proxy.pid) > allowed:
            assert asyncio.get_running_loop().time() < deadline, (open_fds(proxy.pid), allowed)
            await asyncio.sleep(0.05)
        assert "Too many open files" not in proxy.log(), proxy.log()[-2000:]
