"""`serve --server uvicorn` (sidecar/serve/host_uvicorn.py): choosing the server (flag,
statement, reload), what llhttp refuses mapped to the proxy's refusals against a real
process, bare LF heads, and HTTP/2 and h2c, which only hypercorn serves. The behaviour
both servers share is tested by the modules run under the `host` fixture."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
import wsproto
import wsproto.events as ws_events

from sidecar.serve.host_http import HostState
from sidecar.serve.host_uvicorn import crlf_head
from sidecar.serve.host_uvicorn_listener import UvicornListener
from tests.serve.test_strict_parsing import REFUSED_BODIES, REFUSED_HEADS
from tests.support.primary import PrimaryApp
from tests.support.raw_http import exchange, status_line
from tests.support.serve import ServeProcess, metric, serve_proxy, sidecar_command
from tests.support.servers import serve_asgi, wait_until
from tests.support.tls import Pki

pytestmark = pytest.mark.asyncio(loop_scope="module")

# What llhttp reports for some of the heads h11's readers refuse: the same status, the
# label of llhttp's error (docs/proxy.md lists the differences).
UVICORN_LABELS = {
    "header_no_colon": "bad_header",
    "two_lengths": "conflicting_length",
}


# --- crlf_head, as a function ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "before", "expected"),
    [
        (b"GET / HTTP/1.1\r\nHost: a\r\n\r\nb\nc", b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\nb\nc"),
        (b"GET / HTTP/1.1\nHost: a\n\nb\nc", b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\nb\nc"),
        (b"GET / HTTP/1.1\r\nHost: a\n\r\nb\n", b"", b"GET / HTTP/1.1\r\nHost: a\r\n\r\nb\n"),
        (b"\n", b"a\r", b"\n"),  # the LF of a CRLF split across two reads
        (b"\nbody\n", b"a\r\n", b"\r\nbody\n"),  # the head ends across two reads
        (b"\nbody\n", b"a\n", b"\r\nbody\n"),
        (b"Host: a\n", b"", b"Host: a\r\n"),  # no end yet: all of it is head
    ],
)
async def test_crlf_head_rewrites_only_the_heads_bare_lf(
    data: bytes, before: bytes, expected: bytes
) -> None:
    assert crlf_head(data, before) == expected


# --- against a real serve --------------------------------------------------------------------


@dataclass
class Env:
    proxy: ServeProcess
    primary: PrimaryApp


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    app = PrimaryApp()
    async with serve_asgi(app) as url:
        rules = f"primary {url} {{ timeout 5s }}\nserver uvicorn\n"
        async with serve_proxy(tmp_path_factory.mktemp("uvicorn"), rules) as proxy:
            yield Env(proxy, app)
            assert "Traceback" not in proxy.log(), proxy.log()


async def test_statement_chooses_uvicorn_shown_at_start_and_in_rules(env: Env) -> None:
    assert " on uvicorn -> primary " in env.proxy.log()
    async with httpx.AsyncClient(timeout=5) as client:
        rules = (await client.get(f"{env.proxy.admin_url}/rules")).json()
        r = await client.get(f"{env.proxy.url}/echo/hello")
    assert rules["server"] == "uvicorn"
    assert r.status_code == 200 and '"/echo/hello"' in r.text
    # The primary's Date and Server (hypercorn's), once each: uvicorn adds none of its own.
    assert len(r.headers.get_list("date")) == 1
    assert r.headers.get_list("server") == ["hypercorn-h11"]


async def test_flag_wins_over_the_statement(tmp_path: Path, env: Env) -> None:
    rules = f"primary {env.proxy.url}\nserver uvicorn\n"
    async with serve_proxy(tmp_path, rules, "--server", "hypercorn") as proxy:
        assert " on hypercorn -> primary " in proxy.log()


async def test_unknown_server_flag_is_a_usage_error(tmp_path: Path) -> None:
    rules = tmp_path / "r.mirror"
    rules.write_text("primary http://127.0.0.1:9\n")
    done = subprocess.run(
        sidecar_command("serve", str(rules), "--server", "nginx"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    assert "invalid choice: 'nginx'" in done.stderr and "Traceback" not in done.stderr


async def test_reload_that_changes_the_server_keeps_the_running_one(tmp_path: Path) -> None:
    async with (
        serve_asgi(PrimaryApp()) as url,
        serve_proxy(tmp_path, f"primary {url}\nserver uvicorn\n") as proxy,
        httpx.AsyncClient(timeout=5) as client,
    ):
        rules_file = next(tmp_path.glob("rules-*.mirror"))
        rules_file.write_text(f"primary {url}\nserver hypercorn\n")
        proxy.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: "reloaded (SIGHUP)" in proxy.log(), what="the reload")
        assert "server hypercorn (still uvicorn)" in proxy.log()
        rules = (await client.get(f"{proxy.admin_url}/rules")).json()
        assert rules["server"] == "uvicorn"


@pytest.mark.parametrize("case", sorted({**REFUSED_HEADS, **REFUSED_BODIES}))
async def test_what_llhttp_refuses_is_answered_counted_and_not_forwarded(
    env: Env, case: str
) -> None:
    if case in REFUSED_HEADS:
        head, label = REFUSED_HEADS[case]
        data = head.replace(b"GET / ", b"GET /echo/u-%s " % case.encode())
    else:
        data = b"POST /echo/u-body HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        data += REFUSED_BODIES[case]
        label = "bad_chunk"
    label = UVICORN_LABELS.get(case, label)
    before = await env.proxy.metrics()
    reply = await exchange(env.proxy.url, data)
    assert status_line(reply).startswith(b"HTTP/1.1 4"), reply[:300]
    assert b"connection: close" in reply.lower()
    after = await env.proxy.metrics()
    name = "sidecar_refused_requests_total"
    assert metric(after, name, reason=label) - metric(before, name, reason=label) == 1
    assert [p for _, p in env.primary.requests if p.startswith(b"/echo/u-")] == []


async def test_a_bare_lf_head_split_into_single_bytes_is_served(env: Env) -> None:
    data = b"GET /echo/lf HTTP/1.1\nHost: a\nConnection: close\n\n"
    reader, writer = await asyncio.open_connection(*env.proxy.url[7:].split(":"))
    try:
        for i in range(len(data)):
            writer.write(data[i : i + 1])
            await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    assert status_line(reply) == b"HTTP/1.1 200 OK", reply[:300]
    assert b'"/echo/lf"' in reply


async def test_http2_prior_knowledge_is_refused_as_a_version(env: Env) -> None:
    before = await env.proxy.metrics()
    reply = await exchange(env.proxy.url, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
    assert status_line(reply) == b"HTTP/1.1 400 Bad Request", reply[:300]
    after = await env.proxy.metrics()
    name = "sidecar_refused_requests_total"
    assert metric(after, name, reason="bad_version") - metric(before, name, reason="bad_version")


async def test_h2c_upgrade_is_served_over_http11_then_closed(env: Env) -> None:
    data = (
        b"GET /echo/h2c HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\n"
        b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n"
        b"GET /echo/after HTTP/1.1\r\nHost: a\r\n\r\n"
    )
    reply = await exchange(env.proxy.url, data)
    assert status_line(reply) == b"HTTP/1.1 200 OK", reply[:300]
    assert reply.count(b"HTTP/1.1 ") == 1 and b"connection: close" in reply.lower()
    assert b"Unsupported upgrade" not in env.proxy.log().encode()


async def test_rules_json_names_the_default_server(tmp_path: Path) -> None:
    async with (
        serve_asgi(PrimaryApp()) as url,
        serve_proxy(tmp_path, f"primary {url}\n") as p,
        httpx.AsyncClient(timeout=5) as client,
    ):
        text = (await client.get(f"{p.admin_url}/rules")).text
    assert json.loads(text)["server"] == "hypercorn"


async def test_every_status_line_has_a_reason_phrase() -> None:
    from uvicorn.protocols.http.httptools_impl import STATUS_LINE

    from sidecar.serve.host_uvicorn import protocol_class

    protocol_class(HostState(count_refusals=False), max_requests=1)
    assert STATUS_LINE[200] == b"HTTP/1.1 200 OK\r\n"
    assert STATUS_LINE[299] == b"HTTP/1.1 299 Successful\r\n"
    assert STATUS_LINE[599] == b"HTTP/1.1 599 Server Error\r\n"


@contextlib.asynccontextmanager
async def in_process(
    app: Any, *, keep_alive_s: float = 5.0, ssl_context: ssl.SSLContext | None = None
) -> AsyncIterator[int]:
    """A UvicornListener in this loop on a free loopback port (yielded); stopped after,
    and it must stop cleanly (0 requests cut off)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    port: int = sock.getsockname()[1]
    listener = UvicornListener(
        app,
        sock,
        grace_s=1,
        keep_alive_s=keep_alive_s,
        max_requests=100,
        host=HostState(count_refusals=False),
        ssl_context=ssl_context,
    )
    stop = asyncio.Event()
    served = asyncio.create_task(listener.serve(stop.wait))
    try:
        yield port
    finally:
        stop.set()
        assert await served == 0


async def test_a_client_that_sends_nothing_is_closed_after_the_idle_timeout() -> None:
    """uvicorn arms its keep-alive timer only after a response: a silent client used to
    hold its connection forever. A 0.2 s timeout on an in-process listener."""
    async with in_process(PrimaryApp(), keep_alive_s=0.2) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /echo/x HTTP/1.1\r\n")  # a head that never completes
        assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the proxy
        writer.close()


async def _ws_echo(scope: dict[str, object], receive: Any, send: Any) -> None:
    """An ASGI WebSocket echo, standing in for the proxy's WebSocket handler."""
    assert scope["type"] == "websocket"
    assert (await receive())["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": "echo " + message["text"]})


async def test_websocket_upgrade_is_handed_to_an_asgi_websocket_app() -> None:
    """uvicorn's wsproto protocol takes over the upgraded connection from ours."""
    client = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    got: list[object] = []
    async with in_process(_ws_echo) as port:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)

        async def until(kind: type) -> None:
            async with asyncio.timeout(5):
                while not any(isinstance(e, kind) for e in got):
                    client.receive_data(await reader.read(4096))
                    got.extend(client.events())

        try:
            writer.write(client.send(ws_events.Request(host="a", target="/ws")))
            await until(ws_events.AcceptConnection)
            writer.write(client.send(ws_events.TextMessage(data="hi")))
            await until(ws_events.TextMessage)
        finally:
            writer.close()
    assert [e.data for e in got if isinstance(e, ws_events.TextMessage)] == ["echo hi"]


async def test_tls_is_served_over_http11_whatever_the_client_offers(tmp_path: Path) -> None:
    """`listen ADDR { cert key }` under uvicorn: the handshake picks http/1.1 even for a
    client that offers h2 first (hypercorn's listener offers both)."""
    pki = Pki(tmp_path)
    cert, key = pki.leaf("proxy", "127.0.0.1")
    server_ctx = pki.server_context(cert, key)
    server_ctx.set_alpn_protocols(["h2", "http/1.1"])
    client_ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
    client_ctx.set_alpn_protocols(["h2", "http/1.1"])
    async with in_process(PrimaryApp(), ssl_context=server_ctx) as port:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_ctx, server_hostname="127.0.0.1"
        )
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "http/1.1"
        writer.write(b"GET /echo/tls HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        reply = await asyncio.wait_for(reader.read(), 5)
        writer.close()
    assert status_line(reply) == b"HTTP/1.1 200 OK", reply[:300]
    assert b'"/echo/tls"' in reply


async def test_serve_with_a_listen_certificate_says_http11_only(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    pki.leaf("proxy", "127.0.0.1")
    async with serve_asgi(PrimaryApp()) as url:
        rules = (
            'listen 127.0.0.1:1 { cert "proxy.pem" key "proxy.key" }\n'
            f"primary {url}\nserver uvicorn\n"
        )
        async with serve_proxy(tmp_path, rules) as proxy:
            https = proxy.url.replace("http://", "https://")
            client_ctx = ssl.create_default_context(cafile=str(pki.ca_pem))
            async with httpx.AsyncClient(verify=client_ctx, http2=True, timeout=5) as client:
                r = await client.get(f"{https}/echo/tls")
    assert r.status_code == 200 and r.http_version == "HTTP/1.1"
    echoed = {k.lower(): v for k, v in r.json()["headers"]}
    assert echoed["x-forwarded-proto"] == "https"
    assert " (http/1.1 only) on uvicorn -> primary " in proxy.log()
