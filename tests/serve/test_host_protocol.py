"""sidecar/serve/host_protocol.py against a real `sidecar serve` process (issue 13, items 2, 6, 7
and lingering close): descriptors freed when clients close, bytes after a closing request
ignored, reason phrases, refusals the client can read while still uploading; and the layer
stays scoped to sidecar's own listeners."""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from hypercorn.asyncio.tcp_server import TCPServer as StockTCPServer
from hypercorn.config import Config as HyperConfig

from sidecar.serve import host_protocol
from tests.support.limited import close_wait, open_fds, serve_limited
from tests.support.primary import PrimaryApp
from tests.support.raw_http import exchange, host_port, status_line
from tests.support.serve import ServeProcess, serve_proxy
from tests.support.servers import serve_asgi, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

NOFILE = 128  # the serve process's descriptor limit in the exhaustion test
ONE_SHOT_CLIENTS = 5 * NOFILE  # many times the limit, each closing after one response
CLOSE_WAIT_DEADLINE_S = 5.0  # far below the 75 s keep-alive timeout that held them before
UPLOAD_BYTES = 16 * 1024 * 1024  # more than loopback's socket buffers hold
H2LOAD_REQUESTS = 300


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def primary_url() -> AsyncIterator[str]:
    async with serve_asgi(PrimaryApp()) as url:
        yield url


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy(
    tmp_path_factory: pytest.TempPathFactory, primary_url: str, host: str
) -> AsyncIterator[ServeProcess]:
    rules = f"primary {primary_url} {{ timeout 5s }}\n"
    async with serve_proxy(tmp_path_factory.mktemp("host"), rules) as served:
        yield served


def _get(path: str, *extra: bytes) -> bytes:
    return b"GET %s HTTP/1.1\r\nHost: proxy.test\r\n%s\r\n" % (path.encode(), b"".join(extra))


async def _one_shot(url: str) -> bytes:
    """What curl does: one keep-alive request, read the response, close (FIN)."""
    reader, writer = await asyncio.open_connection(*host_port(url))
    try:
        writer.write(_get("/echo/one-shot"))
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await asyncio.wait_for(reader.readexactly(length), 10)
        return status_line(head)
    finally:
        writer.close()
        await writer.wait_closed()


# --- item 2: a client's FIN frees the descriptor at once -------------------------------------


async def test_one_shot_clients_leave_no_close_wait(proxy: ServeProcess) -> None:
    for _ in range(50):
        assert await _one_shot(proxy.url) == b"HTTP/1.1 200 OK"
    await wait_until(
        lambda: close_wait(proxy.pid) == 0, CLOSE_WAIT_DEADLINE_S, "no CLOSE-WAIT sockets"
    )


@pytest.mark.usefixtures("host")
async def test_low_descriptor_limit_survives_many_times_that_many_clients(
    tmp_path: Path, primary_url: str
) -> None:
    """Before: every one-shot client held a descriptor for the 75 s keep-alive timeout, so
    past ~NOFILE of them accept() failed and /healthz stopped answering."""
    rules = f"primary {primary_url} {{ timeout 5s }}\n"
    async with serve_limited(tmp_path, rules, nofile=NOFILE) as proxy:
        baseline = open_fds(proxy.pid)
        for i in range(ONE_SHOT_CLIENTS):
            status = await _one_shot(proxy.url)
            assert status == b"HTTP/1.1 200 OK", (i, status, proxy.log()[-2000:])
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(f"{proxy.admin_url}/healthz")).status_code == 200
            assert (await client.get(f"{proxy.url}/echo/after")).status_code == 200
        # The primary pool's few keep-alive connections come and go: allow their slack.
        await wait_until(
            lambda: open_fds(proxy.pid) <= baseline + 8 and close_wait(proxy.pid) == 0,
            CLOSE_WAIT_DEADLINE_S,
            f"descriptors back near {baseline}",
        )


# --- item 6: bytes after a request that ends the connection ----------------------------------


async def test_connection_close_request_followed_by_another_gets_its_answer(
    proxy: ServeProcess,
) -> None:
    reply = await exchange(
        proxy.url, _get("/echo/first", b"Connection: close\r\n") + _get("/echo/second")
    )
    assert status_line(reply) == b"HTTP/1.1 200 OK", reply[:300]
    assert reply.count(b"HTTP/1.1 ") == 1, reply  # the second request is ignored
    assert b"/echo/first" in reply and b"connection: close" in reply.lower()


async def test_http10_request_followed_by_crlf_gets_its_answer(proxy: ServeProcess) -> None:
    reply = await exchange(proxy.url, b"GET /echo/ten HTTP/1.0\r\n\r\n\r\n")
    assert status_line(reply) == b"HTTP/1.1 200 OK", reply[:300]
    assert reply.count(b"HTTP/1.1 ") == 1


async def test_crlf_between_keep_alive_requests_is_ignored(proxy: ServeProcess) -> None:
    """RFC 9112 section 2.2: empty lines before a request line are skipped."""
    reply = await exchange(
        proxy.url, _get("/echo/a") + b"\r\n" + _get("/echo/b", b"Connection: close\r\n")
    )
    assert reply.count(b"HTTP/1.1 200 OK") == 2, reply[:600]


# --- item 7: reason phrases -------------------------------------------------------------------


async def test_status_line_has_the_standard_reason_phrase(proxy: ServeProcess) -> None:
    reply = await exchange(proxy.url, _get("/cookies", b"Connection: close\r\n"))
    assert status_line(reply) == b"HTTP/1.1 201 Created"


async def test_reason_phrase_table() -> None:
    assert host_protocol.reason_phrase(200) == b"OK"
    assert host_protocol.reason_phrase(413) == b"Request Entity Too Large"  # Python 3.11 table
    assert host_protocol.reason_phrase(299) == b"Successful"  # not in http.HTTPStatus
    assert host_protocol.reason_phrase(599) == b"Server Error"


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load not installed")
async def test_h2load_counts_no_failures(proxy: ServeProcess, host: str) -> None:
    # HTTP/1.1, then HTTP/2 with prior knowledge (hypercorn only)
    for proto in (["--h1"], []) if host == "hypercorn" else (["--h1"],):
        done = await asyncio.create_subprocess_exec(
            "h2load",
            *proto,
            "-n",
            str(H2LOAD_REQUESTS),
            "-c",
            "4",
            f"{proxy.url}/echo/h2load",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(done.communicate(), 60)
        text = out.decode()
        assert f"{H2LOAD_REQUESTS} succeeded, 0 failed, 0 errored" in text, text


# --- lingering close ----------------------------------------------------------------------------


def _upload_then_read(port: int, head: bytes) -> bytes:
    """A blocking client as http.client is: write the whole body, only then read."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(head + b"x" * UPLOAD_BYTES)
        except OSError as exc:
            return f"<send failed: {exc!r}>".encode()
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except OSError as exc:
            out += f"<recv failed: {exc!r}>".encode()
        return out


async def test_refusal_reaches_a_client_still_uploading(proxy: ServeProcess) -> None:
    """The head is refused at once (Content-Length with Transfer-Encoding) while the client
    goes on writing 16 MiB: without lingering close, our close with unread data sends RST
    and the client never reads the 400."""
    head = (
        b"POST /sink HTTP/1.1\r\nHost: proxy.test\r\nContent-Length: %d\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" % UPLOAD_BYTES
    )
    _, port = host_port(proxy.url)
    reply = await asyncio.to_thread(_upload_then_read, port, head)
    assert status_line(reply) == b"HTTP/1.1 400 Bad Request", reply[:300]
    assert b"Content-Length with Transfer-Encoding" in reply


# --- scope: only sidecar's listeners get this layer --------------------------------------------


async def test_unmarked_hypercorn_configs_keep_hypercorn_classes() -> None:
    host_protocol.install()
    plain = host_protocol.connection(None, None, HyperConfig(), None, {}, None, None)
    assert type(plain) is StockTCPServer
    marked_config = HyperConfig()
    host_protocol.mark(marked_config, proxy=True)
    marked = host_protocol.connection(None, None, marked_config, None, {}, None, None)
    assert isinstance(marked, host_protocol.SidecarTCPServer)


async def test_in_process_hypercorn_keeps_stock_behaviour() -> None:
    """The primary in this process is a plain hypercorn server: stock behaviour (an empty
    reason phrase) even though the layer is installed."""
    host_protocol.install()
    async with serve_asgi(PrimaryApp()) as url:
        reply = await exchange(url, _get("/echo/stock", b"Connection: close\r\n"))
    assert status_line(reply) == b"HTTP/1.1 200 "
