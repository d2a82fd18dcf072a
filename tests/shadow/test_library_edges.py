"""The library's rough edges: wrap()/use() order, a raising observe hook, the series library
mode exports, and a body the app never reads, under hypercorn and under uvicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from sidecar import Mirror, MirrorInfo, Outcome, Upstream, prom
from sidecar.asgi import Receive, Scope, Send
from sidecar.model.config import CanarySpec, ServerSpec
from sidecar.model.endpoint import Endpoint
from sidecar.shadow.pool import CanaryPool
from sidecar.shadow.tees import RequestTees
from tests.support.servers import RecordingCanary, serve_asgi, wait_until

# --- wrap() and use() ---------------------------------------------------------------------


async def hello(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers 200 "ok" without reading the request body."""
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]}
    )
    await send({"type": "http.response.body", "body": b"ok", "more_body": False})


def test_wrap_without_use_raises_naming_the_fix() -> None:
    with pytest.raises(RuntimeError, match=r"mirror\.use\(Upstream\(url\)\)"):
        Mirror().wrap(hello)


def test_wrap_twice_raises() -> None:
    m = Mirror()
    m.use(Upstream("http://127.0.0.1:9"))
    m.wrap(hello)
    with pytest.raises(RuntimeError, match=r"twice.*another Mirror"):
        m.wrap(hello)


# --- a raising observe hook ---------------------------------------------------------------


async def test_raising_observe_hook_logs_one_traceback_then_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    calls = 0

    def broken(info: MirrorInfo) -> None:
        nonlocal calls
        calls += 1
        raise KeyError("dashboards")

    n = 20
    async with RecordingCanary() as canary:
        m = Mirror(observe=broken)
        m.use(Upstream(canary.url, name="v2"))
        with caplog.at_level(logging.INFO, logger="sidecar.mirror"):
            async with serve_asgi(m.wrap(hello)) as url, httpx.AsyncClient() as client:
                for i in range(n):
                    assert (await client.get(f"{url}/{i}")).status_code == 200
                await wait_until(lambda: m.stats().completed == n)
            tracebacks = [r for r in caplog.records if r.exc_info]
            assert len(tracebacks) == 1 and len(caplog.records) == 1
            await m.aclose()
    assert calls == 2 * n  # dispatched and completed, each tee
    assert "observe hook raised for canary v2: KeyError" in caplog.records[0].getMessage()
    summary = caplog.records[1].getMessage()
    assert len(caplog.records) == 2 and caplog.records[1].exc_info is None
    assert summary.startswith(f"canary v2: observe hook raised {2 * n - 1} more times")


# --- what library mode exports --------------------------------------------------------------


async def test_library_observe_exports_only_mirror_series() -> None:
    reg = CollectorRegistry()
    async with RecordingCanary() as canary:
        m = Mirror(observe=lambda info: prom.observe(info, registry=reg))
        m.use(Upstream(canary.url, name="v2"))
        async with serve_asgi(m.wrap(hello)) as url, httpx.AsyncClient() as client:
            await client.get(url + "/")
            await wait_until(lambda: m.stats().completed == 1)
        await m.aclose()
    names = {family.name for family in reg.collect()}
    assert names == {
        "sidecar_mirror_requests",
        "sidecar_mirror_duration_seconds",
        "sidecar_mirror_responses",
        "sidecar_mirror_errors",
        "sidecar_mirror_queue_depth",
        "sidecar_mirror_busy_workers",
        "sidecar_mirror_paused",
        # The engine's comparison series are the library's too (Mirror(compare=...)).
        "sidecar_compare",
        "sidecar_compare_differences",
        "sidecar_compare_skipped",
        "sidecar_compare_noise",
    }


def test_default_registry_library_vs_proxy_entry_points() -> None:
    """A fresh interpreter (prometheus-client's default REGISTRY is process-wide): the ready
    hook alone registers no proxy series; the proxy's entry points register them."""
    script = textwrap.dedent(
        """
        from prometheus_client import generate_latest
        from sidecar import prom
        from sidecar.serve import metrics as serve_metrics
        from sidecar.shadow.types import MirrorInfo, Outcome
        prom.observe(MirrorInfo(Outcome.DISPATCHED, canary="v2"))
        print(generate_latest().decode())
        print("----")
        serve_metrics.primary_requests("2xx").inc()
        serve_metrics.set_rules_info("abc", rules=1, canaries=1)
        print(generate_latest().decode())
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], check=True, capture_output=True, text=True
    ).stdout
    library, proxy = out.split("----")
    assert "sidecar_mirror_requests_total{" in library
    for name in (
        "sidecar_requests_total",
        "sidecar_request_duration_seconds",
        "sidecar_refused_requests_total",
        "sidecar_rules_info",
        "sidecar_rules_reloads_total",
        "sidecar_rules_last_reload_success_timestamp_seconds",
    ):
        assert name not in library, name
        assert f"# TYPE {name.removesuffix('_total')}" in proxy, name
    assert 'sidecar_requests_total{code="2xx"} 1.0' in proxy


# --- a body the app does not read ---------------------------------------------------------


@contextlib.asynccontextmanager
async def serve_uvicorn(app: Any) -> AsyncIterator[str]:
    """Serve `app` with uvicorn (httptools) on 127.0.0.1; yield its base URL."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)  # listening already: clients may connect before uvicorn runs
    config = uvicorn.Config(
        app, lifespan="off", log_level="warning", http="httptools", ws="none", access_log=False
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_until(lambda: server.started or task.done(), what="uvicorn started")
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        await task
        sock.close()


SERVERS = {"hypercorn": serve_asgi, "uvicorn": serve_uvicorn}


async def echo_length(scope: Scope, receive: Receive, send: Send) -> None:
    """Reads the whole body, answers its length."""
    size = 0
    while True:
        msg = await receive()
        size += len(msg.get("body", b""))
        if not msg.get("more_body", False):
            break
    body = str(size).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body, "more_body": False})


@pytest.mark.parametrize("server", sorted(SERVERS))
async def test_app_reading_the_body_is_mirrored(server: str) -> None:
    body = b"p" * 5000
    async with RecordingCanary() as canary:
        m = Mirror()
        m.use(Upstream(canary.url))
        async with SERVERS[server](m.wrap(echo_length)) as url, httpx.AsyncClient() as client:
            r = await client.post(url + "/up", content=body)
            assert r.content == b"5000"
            req = await canary.wait_for(1)
        assert req.body == body
        await m.aclose()


async def test_unread_body_under_uvicorn_is_dropped_unread_not_aborted() -> None:
    """uvicorn discards a body the app did not read once the response is complete; nobody
    aborted anything, so the tee is `dropped_unread`."""
    seen: list[Outcome] = []
    async with RecordingCanary() as canary:
        m = Mirror(observe=lambda info: seen.append(info.outcome))
        m.use(Upstream(canary.url))
        async with serve_uvicorn(m.wrap(hello)) as url, httpx.AsyncClient() as client:
            for _ in range(3):
                r = await client.post(url + "/hook", content=b"x" * 3000)
                assert (r.status_code, r.content) == (200, b"ok")
            await wait_until(lambda: m.stats().dropped_unread == 3)
        s = m.stats()
        assert (s.dropped_aborted, s.dispatched) == (0, 0)
        assert seen == [Outcome.DROPPED_UNREAD] * 3
        assert canary.requests == []
        await m.aclose()


async def test_unread_body_under_hypercorn_is_read_and_mirrored() -> None:
    """hypercorn still hands over the body after the response: it is read and mirrored."""
    body = b"y" * 3000
    async with RecordingCanary() as canary:
        m = Mirror()
        m.use(Upstream(canary.url))
        async with serve_asgi(m.wrap(hello)) as url, httpx.AsyncClient() as client:
            r = await client.post(url + "/hook", content=body)
            assert r.content == b"ok"
            req = await canary.wait_for(1)
        assert req.body == body
        assert m.stats().dropped_unread == 0
        await m.aclose()


async def test_unread_after_the_whole_declared_body_is_mirrored() -> None:
    async with RecordingCanary() as canary:
        spec = CanarySpec(name="v2", servers=(ServerSpec(endpoint=Endpoint.parse(canary.url)),))
        pool = CanaryPool(spec)
        headers = [(b"host", b"app")]
        tees = RequestTees.begin([(pool, None)], "POST", b"/", b"", headers, None, "http", 4)
        assert tees is not None
        tees.feed(b"ab")
        tees.feed(b"cd")
        tees.unread()  # all 4 declared bytes are in: the copy goes out
        req = await canary.wait_for(1)
        assert req.body == b"abcd"
        partial = RequestTees.begin([(pool, None)], "POST", b"/", b"", headers, None, "http", 4)
        assert partial is not None
        partial.feed(b"ab")
        partial.unread()
        assert pool.stats().dropped_unread == 1
        await pool.aclose(drain=5.0)
