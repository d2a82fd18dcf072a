"""HTTP/2 from clients, h2c with prior knowledge: forwarded and mirrored as HTTP/1.1.

One proxy (a real `sidecar serve`) in front of an echoing primary and a recording canary.
The `h2` package is the client (tests/support/raw_http.py's H2Conn); curl and h2load,
which nobody here wrote, are used when installed.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import h2.errors
import h2.events
import pytest
import pytest_asyncio

from tests.support.faults import FaultServer
from tests.support.primary import PrimaryApp
from tests.support.raw_http import H2Conn, curl
from tests.support.serve import ServeProcess, metric, serve_proxy
from tests.support.servers import RecordingCanary, serve_asgi, wait_until

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT_S = 10.0


@dataclass
class StreamingPrimary:
    """PrimaryApp, plus `/stream`: records each body chunk as it arrives."""

    echo: PrimaryApp = field(default_factory=PrimaryApp)
    chunks: list[bytes] = field(default_factory=list)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/stream":
            await self.echo(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            if message.get("body"):
                self.chunks.append(message["body"])
            if not message.get("more_body"):
                break
        body = b"got %d" % sum(len(c) for c in self.chunks)
        headers = [(b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})


@dataclass
class Env:
    proxy: ServeProcess
    primary: StreamingPrimary
    canary: RecordingCanary


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    app = StreamingPrimary()
    async with serve_asgi(app) as url, RecordingCanary() as canary:
        rules = (
            f"primary {url}\n"
            f"canary c {{ server {canary.url} }}\n"
            'mirror copies { when path ^= "/echo/" to c }\n'
        )
        async with serve_proxy(tmp_path_factory.mktemp("h2"), rules) as proxy:
            yield Env(proxy, app, canary)


def _post(h2c: H2Conn, path: str, authority: str, *headers: tuple[bytes, bytes]) -> int:
    """Open a POST stream (its body still to send); returns the stream id."""
    sid: int = h2c.conn.get_next_available_stream_id()
    head = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", authority.encode()),
        (b":path", path.encode()),
    ]
    h2c.conn.send_headers(sid, [*head, *headers])
    return sid


def _ended(stream_id: int) -> Any:
    return lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == stream_id


async def test_h2c_request_reaches_primary_and_canary_as_http11(env: Env) -> None:
    body = b'{"item": 42}'
    async with H2Conn.open(env.proxy.url) as h2c:
        sid = _post(
            h2c,
            "/echo/items?x=1&y=%20",
            "Shop.test:8443",
            (b"content-type", b"application/json"),
            (b"x-user-id", b"7"),
            (b"content-length", str(len(body)).encode()),
        )
        h2c.conn.send_data(sid, body, end_stream=True)
        await h2c.flush()
        await h2c.events_until(_ended(sid))
        assert h2c.status(sid) == 200
        doc = json.loads(h2c.body(sid))
    assert doc["method"] == "POST"
    assert doc["raw_path"] == "/echo/items" and doc["query"] == "x=1&y=%20"
    headers = dict(doc["headers"])
    assert [n for n, _ in doc["headers"]].count("host") == 1
    assert headers["host"] == "Shop.test:8443"  # :authority became Host
    assert not any(n.startswith(":") for n, _ in doc["headers"])
    assert headers["x-user-id"] == "7" and headers["content-type"] == "application/json"
    assert headers["x-forwarded-proto"] == "http"
    assert doc["length"] == len(body)
    # The mirror: the same request, as HTTP/1.1, to the canary.
    seen = await env.canary.wait_for(1)
    assert seen.method == b"POST" and seen.target == b"/echo/items?x=1&y=%20"
    assert seen.header(b"host") == b"Shop.test:8443" and seen.body == body
    assert seen.header(b"x-user-id") == b"7"
    assert not any(n.startswith(b":") for n, _ in seen.headers)


async def test_streamed_h2_upload_reaches_the_primary_as_it_arrives(env: Env) -> None:
    env.primary.chunks.clear()
    async with H2Conn.open(env.proxy.url) as h2c:
        sid = await h2c.request("PUT", "/stream", end=False)
        h2c.conn.send_data(sid, b"first-part;")
        await h2c.flush()
        # The rest is not sent until the primary has the first part: a proxy that buffered
        # the whole body would never forward it, and this wait would time out.
        await wait_until(lambda: env.primary.chunks != [], WAIT_S, "the first chunk")
        assert b"".join(env.primary.chunks) == b"first-part;"
        h2c.conn.send_data(sid, b"second-part", end_stream=True)
        await h2c.flush()
        await h2c.events_until(_ended(sid))
        assert h2c.status(sid) == 200 and h2c.body(sid) == b"got 22"
    assert b"".join(env.primary.chunks) == b"first-part;second-part"


@pytest.mark.parametrize(("declared", "sent"), [(10, b"12345"), (3, b"12345")])
async def test_content_length_disagreeing_with_data_is_refused_and_counted(
    env: Env, declared: int, sent: bytes
) -> None:
    before = await env.proxy.metrics()
    path = f"/echo/cl-{declared}"
    async with H2Conn.open(env.proxy.url) as h2c:
        sid = _post(h2c, path, "a", (b"content-length", str(declared).encode()))
        h2c.conn.send_data(sid, sent, end_stream=True)
        await h2c.flush()
        got = await h2c.events_until(lambda e: isinstance(e, h2.events.ConnectionTerminated))
    assert got[-1].error_code == h2.errors.ErrorCodes.PROTOCOL_ERROR
    after = await env.proxy.metrics()
    name = "sidecar_refused_requests_total"
    label = "bad_content_length"
    assert metric(after, name, reason=label) - metric(before, name, reason=label) == 1
    assert [p for _, p in env.primary.echo.requests if p == path.encode()] == []


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_http2_prior_knowledge(env: Env) -> None:
    body, version = await curl(
        "--http2-prior-knowledge", "-H", "X-Via: curl", f"{env.proxy.url}/echo/curl"
    )
    assert version == b"2"
    headers = dict(json.loads(body)["headers"])
    assert headers["x-via"] == "curl" and headers["host"] == env.proxy.url.split("//")[1]


@pytest.mark.skipif(shutil.which("h2load") is None, reason="h2load is not installed")
async def test_h2load_every_request_succeeds(env: Env) -> None:
    out = await asyncio.to_thread(
        subprocess.run,
        ["h2load", "-n", "400", "-c", "4", "-m", "10", f"{env.proxy.url}/ok"],
        capture_output=True,
        timeout=60,
        check=True,
        text=True,
    )
    assert "400 succeeded, 0 failed, 0 errored" in out.stdout, out.stdout
    assert "status codes: 400 2xx" in out.stdout, out.stdout


async def test_h2_bodies_without_a_length(env: Env) -> None:
    """HTTP/2 needs no content-length: a body still arrives (streamed: chunked toward the
    primary), and a request without a body gets neither a length nor chunked framing."""
    async with H2Conn.open(env.proxy.url) as h2c:
        get = await h2c.request("GET", "/echo/no-body")
        post = await h2c.request("POST", "/echo/body-no-length", end=False)
        h2c.conn.send_data(post, b"abc", end_stream=True)
        await h2c.flush()
        await h2c.events_until(_ended(get))
        await h2c.events_until(_ended(post))
    got = dict(json.loads(h2c.body(get))["headers"])
    assert "content-length" not in got and "transfer-encoding" not in got
    posted = json.loads(h2c.body(post))
    assert posted["length"] == 3
    assert dict(posted["headers"]).get("transfer-encoding") == "chunked"


async def test_client_gone_while_its_flow_control_window_is_full(env: Env) -> None:
    """curl --limit-rate --max-time over HTTP/2: the client stops granting window, then
    closes. hypercorn's send task ends on the close, leaving the proxy's next write to the
    stream's full buffer blocked for good: the exchange (and its primary connection) was
    held until the primary's idle_timeout cut it, logged as a stalled primary. The
    request must end as soon as the client is gone."""
    name = "sidecar_request_duration_seconds_count"
    before = metric(await env.proxy.metrics(), name)
    async with H2Conn.open(env.proxy.url) as h2c:
        sid = await h2c.request("GET", "/download?n=8388608")
        # The head, then no more reading: no WINDOW_UPDATE after the first 64 KiB.
        await h2c.events_until(
            lambda e: isinstance(e, h2.events.ResponseReceived) and e.stream_id == sid
        )
    assert h2c.status(sid) == 200
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S  # far below the primary's idle_timeout (60 s)
    while metric(await env.proxy.metrics(), name) == before:
        assert loop.time() < deadline, "the request outlived its client"
        await asyncio.sleep(0.05)
    assert "stalled" not in env.proxy.log()


async def test_a_response_the_primary_broke_off_resets_its_stream(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """curl --http2 through a primary that closed mid-body: over HTTP/1.1 the client sees
    the connection close at once; over HTTP/2 the stream was left open, so curl waited for
    the keep-alive timeout (75 s) and h2load counted every request on the connection as
    errored. Now RST_STREAM(INTERNAL_ERROR) on that stream; the connection goes on."""
    async with FaultServer(by_path=True) as primary:
        rules = f"primary {primary.url}\n"
        async with (
            serve_proxy(tmp_path_factory.mktemp("h2-broken"), rules) as proxy,
            H2Conn.open(proxy.url) as h2c,
        ):
            sid = await h2c.request("GET", "/truncated_cl/x")
            got = await h2c.events_until(
                lambda e: (
                    isinstance(e, (h2.events.StreamReset, h2.events.StreamEnded))
                    and e.stream_id == sid
                ),
                timeout=WAIT_S,
            )
            assert isinstance(got[-1], h2.events.StreamReset)
            assert got[-1].error_code == h2.errors.ErrorCodes.INTERNAL_ERROR
            assert h2c.status(sid) == 200 and 0 < len(h2c.body(sid)) < 100000
            after = await h2c.request("GET", "/answer/y")
            await h2c.events_until(_ended(after), timeout=WAIT_S)
            assert h2c.status(after) == 200
