"""`listen ADDR { cert key }`: TLS for clients, HTTP/2 or HTTP/1.1 by ALPN.

One proxy (a real `sidecar serve`) with a trustme certificate for 127.0.0.1 and localhost.
Clients: the `h2` package over ssl, httpx (HTTP/2 and HTTP/1.1), http.client, and curl
when installed. The primary sees `X-Forwarded-Proto: https`; the canary gets the copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import shutil
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import h2.events
import httpx
import pytest
import pytest_asyncio

from tests.support.primary import PrimaryApp
from tests.support.raw_http import H2Conn, curl
from tests.support.serve import ServeProcess, serve_proxy
from tests.support.servers import RecordingCanary, serve_asgi
from tests.support.tls import Pki

pytestmark = pytest.mark.asyncio(loop_scope="module")

WAIT_S = 10.0


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("https://").rpartition(":")
    return host, int(port)


@dataclass
class Env:
    proxy: ServeProcess
    url: str  # https://127.0.0.1:PORT
    primary: PrimaryApp
    canary: RecordingCanary
    pki: Pki

    def client_context(self, alpn: list[str]) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_pem))
        ctx.set_alpn_protocols(alpn)
        return ctx


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Env]:
    tmp = tmp_path_factory.mktemp("tls-listen")
    pki = Pki(tmp)
    pki.leaf("proxy", "127.0.0.1", "localhost")
    app = PrimaryApp()
    async with serve_asgi(app) as url, RecordingCanary() as canary:
        rules = (
            # --listen (from serve_proxy) replaces the address; the certificate stays.
            'listen 127.0.0.1:1 { cert "proxy.pem" key "proxy.key" }\n'
            f"primary {url}\n"
            f"canary c {{ server {canary.url} }}\n"
            'mirror copies { when path ^= "/echo/" to c }\n'
        )
        async with serve_proxy(tmp, rules) as proxy:
            https = proxy.url.replace("http://", "https://")
            yield Env(proxy, https, app, canary, pki)


async def _h2_over_tls(env: Env, alpn: list[str]) -> tuple[str | None, int, dict[str, str]]:
    """One GET with the h2 package over TLS; (negotiated protocol, status, echoed headers)."""
    host, port = host_port(env.url)
    reader, writer = await asyncio.open_connection(
        host, port, ssl=env.client_context(alpn), server_hostname="localhost"
    )
    try:
        chosen = writer.get_extra_info("ssl_object").selected_alpn_protocol()
        if chosen != "h2":
            return chosen, 0, {}
        h2c = H2Conn(reader, writer)
        h2c.conn.initiate_connection()
        await h2c.flush()
        sid = h2c.conn.get_next_available_stream_id()
        h2c.conn.send_headers(
            sid,
            [
                (b":method", b"GET"),
                (b":scheme", b"https"),
                (b":authority", b"shop.test"),
                (b":path", b"/echo/h2-tls?q=1"),
            ],
            end_stream=True,
        )
        await h2c.flush()
        await h2c.events_until(
            lambda e: isinstance(e, h2.events.StreamEnded) and e.stream_id == sid, WAIT_S
        )
        doc = json.loads(h2c.body(sid))
        return chosen, h2c.status(sid) or 0, dict(doc["headers"])
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def test_alpn_prefers_h2_and_forwards_https(env: Env) -> None:
    chosen, status, headers = await _h2_over_tls(env, ["http/1.1", "h2"])
    assert chosen == "h2" and status == 200  # ours is the preference that counts
    assert headers["host"] == "shop.test"
    assert headers["x-forwarded-proto"] == "https"
    seen = await env.canary.wait_for(1)
    assert seen.target == b"/echo/h2-tls?q=1" and seen.header(b"host") == b"shop.test"
    assert seen.header(b"x-forwarded-proto") == b"https"


async def test_http11_only_client_gets_http11(env: Env) -> None:
    chosen, _, _ = await _h2_over_tls(env, ["http/1.1"])
    assert chosen == "http/1.1"
    _, port = host_port(env.url)

    def get() -> tuple[int, str, dict[str, str]]:
        conn = http.client.HTTPSConnection(
            "localhost", port, context=env.client_context(["http/1.1"]), timeout=WAIT_S
        )
        try:
            conn.request("GET", "/echo/h1-tls")
            resp = conn.getresponse()
            doc = json.loads(resp.read())
            return (
                resp.status,
                f"HTTP/{resp.version // 10}.{resp.version % 10}",
                dict(doc["headers"]),
            )
        finally:
            conn.close()

    status, version, headers = await asyncio.to_thread(get)
    assert (status, version) == (200, "HTTP/1.1")
    assert headers["x-forwarded-proto"] == "https" and headers["host"] == f"localhost:{port}"


async def test_httpx_both_versions(env: Env) -> None:
    for http2, version in ((True, "HTTP/2"), (False, "HTTP/1.1")):
        async with httpx.AsyncClient(
            http2=http2, verify=env.client_context(["h2", "http/1.1"]), timeout=WAIT_S
        ) as client:
            for _ in range(3):  # one connection, kept alive
                r = await client.post(f"{env.url}/echo/httpx", content=b"x" * 100_000)
                assert r.status_code == 200 and r.http_version == version
                assert r.json()["length"] == 100_000


async def test_plain_http_and_untrusted_clients_are_refused_and_the_proxy_goes_on(
    env: Env,
) -> None:
    host, port = host_port(env.url)
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"GET /echo/plain HTTP/1.1\r\nHost: a\r\n\r\n")
    await writer.drain()
    assert await asyncio.wait_for(reader.read(), WAIT_S) == b""  # closed, nothing answered
    writer.close()
    with pytest.raises(ssl.SSLCertVerificationError):
        await asyncio.open_connection(host, port, ssl=ssl.create_default_context())
    async with httpx.AsyncClient(verify=env.client_context(["http/1.1"])) as client:
        assert (await client.get(f"{env.url}/ok")).status_code == 200
    assert [p for _, p in env.primary.requests if p == b"/echo/plain"] == []


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_curl_negotiates_h2(env: Env) -> None:
    _, port = host_port(env.url)
    url = f"https://localhost:{port}/echo/curl-tls"
    body, version = await curl("--http2", "--cacert", str(env.pki.ca_pem), url)
    assert version == b"2"
    assert dict(json.loads(body)["headers"])["x-forwarded-proto"] == "https"
