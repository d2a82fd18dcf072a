"""The library API end to end: a wrapped ASGI app under real hypercorn, real canaries."""

from __future__ import annotations

import asyncio
import random
import socket
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from sidecar import Mirror, MirrorInfo, Outcome, Upstream
from sidecar.asgi import Receive, Scope, Send
from sidecar.shadow.types import ShadowRequest
from tests.support.servers import RecordingCanary, serve_asgi, wait_until


class Primary:
    """A raw ASGI app: reads the whole body, answers `status` with `body` (or the byte
    count it read). Records what it saw."""

    def __init__(self, status: int = 200, body: bytes | None = None) -> None:
        self.status = status
        self.body = body
        self.seen: list[tuple[str, str, bytes]] = []
        self.disconnects = 0
        self.disconnected = asyncio.Event()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        data = bytearray()
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                self.disconnects += 1
                self.disconnected.set()
                return
            data += msg.get("body", b"")
            if not msg.get("more_body", False):
                break
        self.seen.append((scope["method"], scope["path"], bytes(data)))
        out = self.body if self.body is not None else str(len(data)).encode()
        await send(
            {
                "type": "http.response.start",
                "status": self.status,
                "headers": [(b"content-length", str(len(out)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": out, "more_body": False})


class Events:
    def __init__(self) -> None:
        self.infos: list[MirrorInfo] = []

    def __call__(self, info: MirrorInfo) -> None:
        self.infos.append(info)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for i in self.infos if i.outcome is outcome)


async def gen(*chunks: bytes) -> AsyncIterator[bytes]:
    for c in chunks:
        yield c


def mirror_for(canary: RecordingCanary, **kw: Any) -> Mirror:
    kw.setdefault("workers", 4)
    kw.setdefault("queue_size", 16)
    m = Mirror(**kw)
    m.use(Upstream(canary.url))
    return m


async def test_primary_unaffected_no_body() -> None:
    primary = Primary(status=418, body=b"primary")
    async with RecordingCanary() as canary:
        m = mirror_for(canary)
        async with serve_asgi(m.wrap(primary)) as url, httpx.AsyncClient() as client:
            r = await client.get(url + "/thing?x=1")
            assert (r.status_code, r.content) == (418, b"primary")
            req = await canary.wait_for(1)
        assert (req.method, req.target, req.body) == (b"GET", b"/thing?x=1", b"")
        assert req.header(b"content-length") is None
        assert primary.seen == [("GET", "/thing", b"")]
        await m.aclose()
        assert m.stats().completed == 1


async def test_body_identical_under_cap() -> None:
    body = random.Random(1).randbytes(4096)
    primary = Primary()
    async with RecordingCanary() as canary:
        m = mirror_for(canary)
        async with serve_asgi(m.wrap(primary)) as url, httpx.AsyncClient() as client:
            r = await client.post(url + "/up", content=body)
            assert r.content == b"4096"
            req = await canary.wait_for(1)
        assert primary.seen[0][2] == body
        assert req.body == body and req.header(b"content-length") == b"4096"
        await m.aclose()


@pytest.mark.parametrize("chunked", [False, True])
async def test_over_cap_not_mirrored_primary_gets_whole_body(chunked: bool) -> None:
    body = b"y" * 1025
    events = Events()
    primary = Primary()
    async with RecordingCanary() as canary:
        m = mirror_for(canary, max_body_bytes=1024, observe=events)
        async with serve_asgi(m.wrap(primary)) as url, httpx.AsyncClient() as client:
            content: Any = gen(body[:600], body[600:]) if chunked else body
            r = await client.post(url + "/up", content=content)
            assert r.content == b"1025"
        assert primary.seen[0][2] == body
        assert m.stats().dropped_oversize == 1 and m.stats().dispatched == 0
        assert events.count(Outcome.DROPPED_OVERSIZE) == 1
        assert canary.requests == []
        await m.aclose()


async def test_body_exactly_at_cap_mirrored() -> None:
    body = b"z" * 1024
    async with RecordingCanary() as canary:
        m = mirror_for(canary, max_body_bytes=1024)
        async with serve_asgi(m.wrap(Primary())) as url, httpx.AsyncClient() as client:
            await client.post(url + "/up", content=gen(body[:10], body[10:]))
            req = await canary.wait_for(1)
        assert req.body == body
        await m.aclose()


async def test_client_aborting_upload_drops_tee_and_primary_sees_abort() -> None:
    primary = Primary()
    events = Events()
    async with RecordingCanary() as canary:
        m = mirror_for(canary, observe=events)
        async with serve_asgi(m.wrap(primary)) as url:
            port = int(url.rsplit(":", 1)[1])
            _reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                b"POST /up HTTP/1.1\r\nHost: app\r\nContent-Length: 1000\r\n\r\n" + b"a" * 100
            )
            await writer.drain()
            await wait_until(lambda: m.pools[0].started, what="request reached the app")
            writer.transport.abort()
            writer.close()
            await primary.disconnected.wait()
            await wait_until(lambda: m.stats().dropped_aborted == 1)
        assert primary.disconnects == 1 and primary.seen == []
        assert m.stats().dispatched == 0 and canary.requests == []
        assert events.count(Outcome.DROPPED_ABORTED) == 1
        await m.aclose()


async def test_chain_raising_is_panicked_and_primaries_unaffected() -> None:
    async def boom(req: ShadowRequest) -> int:
        raise RuntimeError("canary chain bug")

    m = Mirror(workers=2)
    m.use(boom)
    async with serve_asgi(m.wrap(Primary())) as url, httpx.AsyncClient() as client:
        for _ in range(5):
            r = await client.get(url + "/")
            assert r.status_code == 200
        await wait_until(lambda: m.stats().panicked == 5)
    assert all(p.alive_workers == 2 for p in m.pools)
    await m.aclose()


async def test_canary_never_answering_never_blocks_primary() -> None:
    async with RecordingCanary("hold") as canary:
        m = mirror_for(canary, workers=4, queue_size=16, timeout=30.0)
        async with serve_asgi(m.wrap(Primary())) as url:
            baseline = len(asyncio.all_tasks())
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            limits = httpx.Limits(max_connections=20)
            async with httpx.AsyncClient(limits=limits) as client:
                rs = await asyncio.gather(*(client.get(url + f"/{i}") for i in range(200)))
            elapsed = loop.time() - t0
            assert all(r.status_code == 200 for r in rs)
            assert elapsed < 5.0
            s = m.stats()
            assert s.dropped_full > 0 and s.dispatched == 20  # 4 in service + 16 queued
            await wait_until(lambda: canary.in_flight == 4)
            assert canary.max_connections_open <= 4
            # the engine's tasks are its 4 workers and the canary holds 4 connections,
            # whatever the number of requests (hypercorn's own tasks are not ours to count)
            names = [t.get_coro().__qualname__ for t in asyncio.all_tasks()]  # type: ignore[union-attr]
            assert names.count("CanaryPool._worker") == 4
            assert names.count("RecordingCanary._handle") == 4
            assert len(asyncio.all_tasks()) >= baseline
        await m.aclose(drain=None)
        s = m.stats()
        assert s.dispatched == s.completed + s.failed + s.panicked


async def test_shadow_request_not_cancelled_by_client_disconnect() -> None:
    events = Events()
    async with RecordingCanary("hold") as canary:
        m = mirror_for(canary, observe=events)
        async with serve_asgi(m.wrap(Primary())) as url:
            async with httpx.AsyncClient() as client:
                assert (await client.get(url + "/")).status_code == 200
            # the client is gone; now the canary answers
            await canary.wait_for(1)
            canary.release.set()
            await wait_until(lambda: m.stats().completed == 1)
        done = [i for i in events.infos if i.outcome is Outcome.COMPLETED]
        assert done[0].status == 200
        await m.aclose()


async def test_hung_canary_ends_at_timeout() -> None:
    events = Events()
    async with RecordingCanary("hold") as canary:
        m = mirror_for(canary, observe=events, timeout=0.2)
        async with serve_asgi(m.wrap(Primary())) as url, httpx.AsyncClient() as client:
            await client.get(url + "/")
            await wait_until(lambda: m.stats().failed == 1)
        assert [i.error for i in events.infos if i.outcome is Outcome.FAILED] == ["timeout"]
        await m.aclose()


async def test_hop_by_hop_stripped_marked_and_reframed() -> None:
    body = b"q" * 3000
    async with RecordingCanary() as canary:
        m = mirror_for(canary)
        async with serve_asgi(m.wrap(Primary())) as url, httpx.AsyncClient() as client:
            headers = {
                "Connection": "keep-alive, X-Hop",
                "X-Hop": "1",
                "Keep-Alive": "timeout=5",
                "Proxy-Authorization": "Basic eA==",
                "Upgrade": "foo",
                "Expect": "100-continue",
                "X-App": "yes",
                "X-Mirror": "client-set",
            }
            r = await client.post(
                url + "/up", content=gen(body[:1000], body[1000:]), headers=headers
            )
            assert r.content == b"3000"
            req = await canary.wait_for(1)
        names = {n for n, _ in req.headers}
        for hop in (b"connection", b"x-hop", b"keep-alive", b"proxy-authorization", b"upgrade"):
            assert hop not in names
        assert b"expect" not in names and b"transfer-encoding" not in names
        assert req.header(b"x-app") == b"yes"
        assert req.header(b"x-mirror") == b"1"
        assert req.header(b"host") == url.removeprefix("http://").encode()
        assert req.header(b"content-length") == b"3000"
        assert req.header(b"x-forwarded-for") == b"127.0.0.1"
        assert req.body == body
        await m.aclose()


async def test_body_off() -> None:
    primary = Primary()
    async with RecordingCanary() as canary:
        m = mirror_for(canary, disable_body=True)
        async with serve_asgi(m.wrap(primary)) as url, httpx.AsyncClient() as client:
            await client.post(url + "/", content=b"payload")
            req = await canary.wait_for(1)
        assert primary.seen[0][2] == b"payload"
        assert req.body == b"" and req.header(b"content-length") is None
        await m.aclose()


async def test_mark_off_and_loop_guard() -> None:
    async with RecordingCanary() as canary:
        m = mirror_for(canary, disable_mark=True)
        guarded = mirror_for(canary)
        async with serve_asgi(guarded.wrap(m.wrap(Primary()))) as url, httpx.AsyncClient() as c:
            await c.get(url + "/", headers={"X-Mirror": "1"})  # guarded: not mirrored by it
            await wait_until(lambda: m.stats().completed == 1)
        assert guarded.stats().dispatched == 0
        assert canary.requests[0].header(b"x-mirror") == b"1"  # client's value, not ours
        await m.aclose()
        await guarded.aclose()
    async with RecordingCanary() as canary:
        m = mirror_for(canary, disable_mark=True)
        async with serve_asgi(m.wrap(Primary())) as url, httpx.AsyncClient() as c:
            await c.get(url + "/")
            req = await canary.wait_for(1)
        assert req.header(b"x-mirror") is None
        await m.aclose()


async def call(app: Any, method: str = "GET", path: str = "/") -> None:
    """Drive the middleware directly (no network under test: only the sampling decision)."""
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"app")],
        "client": ("10.0.0.1", 1234),
        "scheme": "http",
    }
    sent: list[Any] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg: Any) -> None:
        sent.append(msg)

    await app(scope, receive, send)


async def test_sampling_rate_over_40k_requests() -> None:
    async with RecordingCanary("hold") as canary:
        m = mirror_for(canary, sample_rate=0.25, queue_size=65536, _random=random.Random(7).random)
        app = m.wrap(Primary())
        for _ in range(40_000):
            await call(app)
        assert 9_000 <= m.stats().dispatched <= 11_000
        await m.aclose(drain=None)


async def test_match_gate() -> None:
    async with RecordingCanary() as canary:
        m = mirror_for(canary, match=lambda r: r.method == "POST")
        app = m.wrap(Primary())
        for _ in range(20):
            await call(app, "GET")
        assert m.stats().dispatched == 0
        await call(app, "POST")
        assert m.stats().dispatched == 1
        await m.aclose(drain=5)
        assert canary.requests[0].method == b"POST"


async def test_match_raising_never_reaches_the_primary(caplog: pytest.LogCaptureFixture) -> None:
    def bad(request: Any) -> bool:
        raise KeyError("bug")

    async with RecordingCanary() as canary:
        m = mirror_for(canary, match=bad)
        primary = Primary()
        await call(m.wrap(primary))
        assert len(primary.seen) == 1 and m.stats().dispatched == 0
        assert any(r.exc_info for r in caplog.records)
        await m.aclose()


async def test_observe_counts_equal_stats() -> None:
    events = Events()
    async with RecordingCanary() as canary:
        m = mirror_for(canary, observe=events, queue_size=2, workers=1)
        app = m.wrap(Primary())
        for _ in range(10):
            await call(app)
        await m.aclose(drain=5)
        counts = Counter(i.outcome.value for i in events.infos)
        assert {k: v for k, v in m.stats()._asdict().items() if v} == dict(counts)
        s = m.stats()
        assert s.dispatched == s.completed + s.failed + s.panicked
        assert all(i.canary == canary.url and i.rule is None for i in events.infos)


async def test_weighted_upstreams_form_one_canary() -> None:
    async with RecordingCanary() as a, RecordingCanary() as b:
        m = Mirror(queue_size=100)
        m.use(Upstream(a.url, name="v2", weight=2))
        m.use(Upstream(b.url, name="v2"))
        app = m.wrap(Primary())
        for _ in range(30):
            await call(app)
        await m.aclose(drain=5)
        assert (len(a.requests), len(b.requests)) == (20, 10)
        assert len(m.pools) == 1


def test_invalid_arguments_name_the_parameter() -> None:
    for kw, word in [
        ({"sample_rate": 0}, "sample_rate"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"timeout": 0}, "timeout"),
        ({"max_body_bytes": -1}, "max_body_bytes"),
        ({"workers": 0}, "workers"),
        ({"queue_size": -1}, "queue_size"),
        ({"mark_header": "bad header"}, "mark_header"),
        ({"mark_value": ""}, "mark_value"),
        ({"match": 3}, "match"),
    ]:
        with pytest.raises(ValueError, match=word):
            Mirror(**kw)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="url"):
        Upstream("http://x/path")


def test_use_after_wrap_raises() -> None:
    m = Mirror()
    m.use(Upstream("http://127.0.0.1:9"))
    m.wrap(Primary())
    with pytest.raises(RuntimeError):
        m.use(Upstream("http://127.0.0.1:10"))


async def test_unused_socket_helper_closes_cleanly() -> None:
    # serve_asgi owns its listening socket; after the context nothing listens there.
    async with serve_asgi(Primary()) as url:
        port = int(url.rsplit(":", 1)[1])
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


async def test_first_requests_after_wrap_find_the_workers_idle() -> None:
    """Pools start on the first request; their fresh workers count as idle at once, so with
    `queue_size=0` a first burst gets exactly `workers` tees through, the rest dropped_full."""
    async with RecordingCanary(behaviour="hold") as canary:
        m = mirror_for(canary, workers=3, queue_size=0)
        app = m.wrap(Primary())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://app") as client:
            replies = await asyncio.gather(*(client.get(f"/b{i}") for i in range(6)))
        assert [r.status_code for r in replies] == [200] * 6
        stats = m.stats()
        assert (stats.dispatched, stats.dropped_full) == (3, 3)
        await canary.wait_for(3)
        canary.release.set()
        await m.aclose(drain=5.0)
        assert m.stats().completed == 3


def test_upstream_name_defaults_to_its_url() -> None:
    assert Upstream("http://127.0.0.1:9").name == "http://127.0.0.1:9"
    assert Upstream("http://127.0.0.1:9", name="v2").name == "v2"
