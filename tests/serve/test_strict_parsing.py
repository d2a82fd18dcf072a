"""Strict request parsing (issue 13, item 5): sidecar/serve/strict_h11.py and framing's Host rule
as functions, then every refusal against a real `sidecar serve`: the status, never
forwarded, counted in sidecar_refused_requests_total{reason} and sidecar_requests_total."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import h2.events
import h11
import pytest
import pytest_asyncio

from sidecar.http import framing
from sidecar.serve import host_protocol
from sidecar.serve.strict_h11 import MAX_CHUNK_SIZE, RequestRefused, StrictConnection
from tests.support.primary import PrimaryApp
from tests.support.raw_http import H2Conn, exchange, status_line
from tests.support.serve import ServeProcess, metric, serve_proxy
from tests.support.servers import serve_asgi

pytestmark = pytest.mark.asyncio(loop_scope="module")

MAX_HEAD_BYTES = 16 * 1024


def _events(data: bytes) -> list[object]:
    conn = StrictConnection(MAX_HEAD_BYTES)
    conn.receive_data(data)
    out: list[object] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return out
        out.append(event)
        if isinstance(event, h11.EndOfMessage):
            return out


def _refusal(data: bytes) -> str:
    with pytest.raises(RequestRefused) as caught:
        _events(data)
    return caught.value.refusal.label


# --- the h11 layer as functions -------------------------------------------------------------

REFUSED_HEADS = {
    "obs_fold": (
        b"GET / HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n",
        "obs_fold",
    ),
    "obs_fold_tab": (b"GET / HTTP/1.1\r\nHost: a\r\nX-A: 1\r\n\tmore\r\n\r\n", "obs_fold"),
    "host_space": (b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "bad_host"),
    "host_slash": (b"GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", "bad_host"),
    "host_userinfo": (b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", "bad_host"),
    "host_port_letters": (b"GET / HTTP/1.1\r\nHost: a:8x\r\n\r\n", "bad_host"),
    "host_port_long": (b"GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n", "bad_host"),
    "host_bad_ipv6": (b"GET / HTTP/1.1\r\nHost: [::1\r\n\r\n", "bad_host"),
    "host_empty": (b"GET / HTTP/1.1\r\nHost: \r\n\r\n", "bad_host"),
    "host_missing": (b"GET / HTTP/1.1\r\nX-A: 1\r\n\r\n", "bad_host"),
    "host_twice": (b"GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", "bad_host"),
    "te_xchunked": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
        "bad_transfer_encoding",
    ),
    "te_chunked_identity": (
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        "bad_transfer_encoding",
    ),
    "te_and_cl": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "te_and_cl",
    ),
    "two_lengths": (
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        "conflicting_length",
    ),
    "bad_request_line": (b"GET /\x01 HTTP/1.1\r\nHost: a\r\n\r\n", "bad_request_line"),
    "header_no_colon": (b"GET / HTTP/1.1\r\nHost: a\r\nnocolon\r\n\r\n", "bad_header"),
    "version_9": (b"GET / HTTP/9.9\r\nHost: a\r\n\r\n", "bad_version"),
    "tls_hello": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", "bad_request_line"),
}

REFUSED_BODIES = {
    "chunk_17_digits": b"fffffffffffffffff3\r\nab\r\n",
    "chunk_not_hex": b"zz\r\nab\r\n",
    "chunk_bad_footer": b"2\r\nabXY0\r\n\r\n",
}
_CHUNKED_HEAD = b"POST /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"


@pytest.mark.parametrize("case", list(REFUSED_HEADS))
async def test_refused_heads(case: str) -> None:
    data, label = REFUSED_HEADS[case]
    assert _refusal(data) == label


@pytest.mark.parametrize("case", list(REFUSED_BODIES))
async def test_refused_chunked_bodies(case: str) -> None:
    assert _refusal(_CHUNKED_HEAD + REFUSED_BODIES[case]) == "bad_chunk"


async def test_chunk_size_limit_is_16_hex_digits() -> None:
    assert int("f" * 16, 16) == MAX_CHUNK_SIZE
    # 16 digits (leading zeros are not significant) parse; the body is merely incomplete.
    events = _events(_CHUNKED_HEAD + b"0000000000000000003\r\nab")
    assert [type(e) for e in events] == [h11.Request, h11.Data]


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\nHost: example.com:8080\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: my_service\r\n\r\n",  # Docker Compose names
        b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        b"GET / HTTP/1.0\r\n\r\n",  # HTTP/1.0 may omit Host
        b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",  # empty lines first (RFC 9112 2.2)
        b"PRI * HTTP/2.0\r\n\r\n",  # the HTTP/2 preface: hypercorn switches protocols
    ],
)
async def test_accepted_heads(data: bytes) -> None:
    (request, *_) = _events(data)
    assert isinstance(request, h11.Request)


async def test_bytes_after_a_closing_request_are_dropped() -> None:
    conn = StrictConnection(MAX_HEAD_BYTES)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\nGARBAGE\r\n\r\n")
    assert isinstance(conn.next_event(), h11.Request)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    assert conn.next_event() is h11.NEED_DATA  # h11 would raise "Got data when expecting EOF"
    assert conn.stray_bytes == len(b"GARBAGE\r\n\r\n")


async def test_every_refusal_has_a_known_label() -> None:
    refusals = [v for v in vars(framing).values() if isinstance(v, framing.Refusal)]
    assert {r.label for r in refusals} == set(framing.REFUSAL_LABELS)
    with pytest.raises(ValueError):
        framing.Refusal(400, "x", "not_a_label")


async def test_refusals_are_logged_at_debug(caplog: pytest.LogCaptureFixture) -> None:
    state = host_protocol.HostState(count_refusals=False)
    with caplog.at_level(logging.DEBUG, logger="sidecar.host"):
        host_protocol.REFUSALS.record(state, framing.OBS_FOLD, ("10.0.0.1", 5), "detail")
    assert "refused a request from 10.0.0.1:5: obs_fold (detail)" in caplog.text


# --- against a real serve -----------------------------------------------------------------


@dataclass
class Env:
    proxy: ServeProcess
    primary: PrimaryApp


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, host: str) -> AsyncIterator[Env]:
    app = PrimaryApp()
    async with serve_asgi(app) as url:
        rules = f"primary {url} {{ timeout 5s }}\n"
        async with serve_proxy(tmp_path_factory.mktemp("strict"), rules) as proxy:
            yield Env(proxy, app)


SERVED_CASES = {
    # case: (request bytes, status, reason label)
    "obs_fold": (
        b"GET /echo/m-fold HTTP/1.1\r\nHost: a\r\n Transfer-Encoding: chunked\r\n\r\n",
        400,
        "obs_fold",
    ),
    "bad_host": (b"GET /echo/m-host HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "bad_host"),
    "two_hosts": (b"GET /echo/m-hosts HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "bad_host"),
    "xchunked": (
        b"POST /echo/m-te HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n",
        400,
        "bad_transfer_encoding",
    ),
    "chunk_overflow": (
        b"POST /echo/m-chunk HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"fffffffffffffffff3\r\nab\r\n",
        400,
        "bad_chunk",
    ),
    "te_and_cl": (
        b"POST /echo/m-tecl HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        400,
        "te_and_cl",
    ),
    "huge_head": (
        b"GET /echo/m-big HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 20_000 + b"\r\n\r\n",
        431,
        "header_too_large",
    ),
    "garbage": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 400, "bad_request_line"),
}


@pytest.mark.parametrize("case", list(SERVED_CASES))
async def test_refusal_is_answered_counted_and_not_forwarded(env: Env, case: str) -> None:
    data, status, label = SERVED_CASES[case]
    before = await env.proxy.metrics()
    reply = await exchange(env.proxy.url, data)
    assert status_line(reply).startswith(b"HTTP/1.1 %d " % status), reply[:300]
    assert b"connection: close" in reply.lower()
    assert reply.count(b"HTTP/1.1 ") == 1
    after = await env.proxy.metrics()
    name = "sidecar_refused_requests_total"
    assert metric(after, name, reason=label) - metric(before, name, reason=label) == 1
    code = f"{status // 100}xx"
    requests = "sidecar_requests_total"
    assert metric(after, requests, code=code) - metric(before, requests, code=code) == 1
    assert [p for _, p in env.primary.requests if p.startswith(b"/echo/m-")] == []


async def test_http2_refusal_is_answered_on_its_stream_and_counted(env: Env, host: str) -> None:
    if host == "uvicorn":
        pytest.skip("HTTP/2 is served by hypercorn only")
    before = await env.proxy.metrics()
    async with H2Conn.open(env.proxy.url) as h2c:
        bad = await h2c.request("GET", "/echo/m-h2", authority="a b")
        good = await h2c.request("GET", "/echo/h2-ok")
        await h2c.events_until(lambda e: _ended(e, bad))
        await h2c.events_until(lambda e: _ended(e, good))
        assert h2c.status(bad) == 400 and b"Host" in h2c.body(bad)
        assert h2c.status(good) == 200  # the connection goes on
    after = await env.proxy.metrics()
    name = "sidecar_refused_requests_total"
    assert metric(after, name, reason="bad_host") - metric(before, name, reason="bad_host") == 1
    assert [p for _, p in env.primary.requests if p == b"/echo/m-h2"] == []


def _ended(event: object, stream_id: int) -> bool:
    return isinstance(event, h2.events.StreamEnded) and event.stream_id == stream_id


async def test_docs_table_lists_every_reason_label() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "proxy.md").read_text()
    documented = re.findall(r"^\| `([a-z_0-9]+)` \| (\d{3}) \|", docs, re.MULTILINE)
    assert [label for label, _ in documented] == list(framing.REFUSAL_LABELS)
    statuses = {r.label: r.status for r in vars(framing).values() if isinstance(r, framing.Refusal)}
    assert {label: int(status) for label, status in documented} == statuses
