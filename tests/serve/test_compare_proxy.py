"""Response comparison, the proxy's side, on real loopback sockets.

The proxy (`ProxyApp`) and its admin app run under hypercorn in the test's loop over a
`Runtime` whose configuration gains `compare` blocks directly (the rule language side lands
separately). The canary side is driven by the test: it takes each compared job's
`rendezvous` as admission hands it over (the pool's `dispatch` is wrapped) and calls
`canary_done` itself, as the mirror worker will. The canary servers hold every shadow
request, so their workers stay out of the way until the test is over.

What the primary's capture saw is read back from the diff record (`primary.status`,
`.length`, `.sha256`, the header values) and compared with what the client received.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import json
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.dsl import loads
from sidecar.model.compare import CompareSpec
from sidecar.model.config import Config
from sidecar.serve.admin import AdminApp
from sidecar.serve.proxy import ProxyApp
from sidecar.serve.runtime import Runtime
from sidecar.shadow.compare.capture import Capture, Captured
from sidecar.shadow.compare.rendezvous import Rendezvous
from sidecar.shadow.pool import CanaryPool
from sidecar.shadow.types import Job
from tests.support.serve import free_port, metric
from tests.support.servers import RecordingCanary, serve_asgi

# How long a test waits for an asynchronous effect (a result, a metric) before failing.
WAIT_S = 10.0
POLL_S = 0.01
# The streamed responses: several chunks of distinct content.
STREAM_CHUNKS = 5
STREAM_CHUNK_BYTES = 20_000
# Large enough that the client leaves long before it is sent.
BIG_RESPONSE_BYTES = 256 << 20
BIG_CHUNK_BYTES = 64 << 10

STATUS_HEADER_BYTES = CompareSpec(status=True, headers=("Content-Type",), body="bytes")


def _stream_chunk(i: int) -> bytes:
    return f"chunk {i};".encode() * (STREAM_CHUNK_BYTES // 8)


class Primary:
    """The primary: streamed responses, a stall mid-body, a huge body, a JSON body."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        path: str = scope["path"]
        if path == "/stream":  # several chunks; with ?cl a Content-Length, else chunked
            chunks = [_stream_chunk(i) for i in range(STREAM_CHUNKS)]
            head = [(b"content-type", b"text/plain"), (b"x-id", b"1")]
            if scope["query_string"] == b"cl":
                head.append((b"content-length", str(sum(map(len, chunks))).encode()))
            await send({"type": "http.response.start", "status": 200, "headers": head})
            for chunk in chunks:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await asyncio.sleep(0.005)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif path == "/stall":  # one chunk, then nothing: the proxy's idle_timeout cuts it
            head = [(b"content-type", b"text/plain")]
            await send({"type": "http.response.start", "status": 200, "headers": head})
            await send({"type": "http.response.body", "body": b"first", "more_body": True})
            await asyncio.sleep(3600)
        elif path == "/big":
            head = [(b"content-length", str(BIG_RESPONSE_BYTES).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": head})
            chunk = b"b" * BIG_CHUNK_BYTES
            for _ in range(BIG_RESPONSE_BYTES // BIG_CHUNK_BYTES - 1):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": chunk, "more_body": False})
        elif path == "/slow":
            await asyncio.sleep(2)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": b"late"})
        else:
            body = json.dumps({"path": path, "n": 1}).encode()
            head = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": head})
            await send({"type": "http.response.body", "body": body})


@dataclasses.dataclass
class Harness:
    runtime: Runtime
    url: str
    admin_url: str
    jobs: list[tuple[str, Job]]  # (canary, job) in admission order

    async def rendezvous(self, canary: str) -> Rendezvous:
        """The rendezvous of the newest job admitted to `canary` (waits for its admission)."""
        found: list[Job] = await wait_for(lambda: [j for n, j in self.jobs if n == canary])
        rv = found[-1].rendezvous
        assert rv is not None
        return rv

    async def metrics(self) -> str:
        async with httpx.AsyncClient() as client:
            return (await client.get(f"{self.admin_url}/metrics")).text


async def wait_for(probe: Callable[[], Any]) -> Any:
    """Poll `probe` until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while not (value := probe()):
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(POLL_S)
    return value


def with_compare(config: Config, compares: dict[str, CompareSpec], **changes: Any) -> Config:
    canaries = tuple(dataclasses.replace(c, compare=compares.get(c.name)) for c in config.canaries)
    return dataclasses.replace(config, canaries=canaries, **changes)


def load_config(text: str) -> Config:
    loaded = loads(text)
    assert loaded.config is not None, loaded.diagnostics
    return loaded.config


@contextlib.asynccontextmanager
async def compare_proxy(
    primary_url: str,
    canary_url: str,
    mirrors: Sequence[tuple[str, str, str]],
    compares: dict[str, CompareSpec],
    *,
    primary_settings: str = "timeout 1s",
    diff_log: str | None = None,
) -> AsyncIterator[Harness]:
    """A proxy whose canaries (all served by `canary_url`) are mirrored by `mirrors`:
    (rule, condition or "", canaries as in `to`)."""
    lines = [f"primary {primary_url} {{ {primary_settings} }}"]
    for name in dict.fromkeys(c for _, _, to in mirrors for c in to.split(", ")):
        lines.append(f"canary {name} {{ server {canary_url} }}")
    for rule, when, canary in mirrors:
        lines.append(f"mirror {rule} {{ {when} to {canary} }}")
    config = with_compare(load_config("\n".join(lines) + "\n"), compares, diff_log=diff_log)
    runtime = Runtime(config, files=1, paths=["<test>"])
    await runtime.start()
    runtime.ready = True
    jobs: list[tuple[str, Job]] = []
    for pool in runtime.current.canary_pools.values():
        _record_jobs(pool, jobs)
    try:
        async with serve_asgi(ProxyApp(runtime)) as url, serve_asgi(AdminApp(runtime)) as admin:
            yield Harness(runtime, url, admin, jobs)
    finally:
        await runtime.close()


def _record_jobs(pool: CanaryPool, jobs: list[tuple[str, Job]]) -> None:
    dispatch = pool.dispatch

    def recording(job: Job) -> Any:
        jobs.append((pool.name, job))
        return dispatch(job)

    pool.dispatch = recording  # type: ignore[method-assign]


def captured(
    spec: CompareSpec, status: int, headers: Sequence[tuple[bytes, bytes]], body: bytes
) -> Captured:
    """A canary's response as the worker would capture it."""
    cap = Capture(spec)
    cap.start(status, headers)
    cap.feed(body)
    return cap.finish()


@pytest.fixture
async def primary_url() -> AsyncIterator[str]:
    async with serve_asgi(Primary()) as url:
        yield url


@pytest.fixture
async def held_canary() -> AsyncIterator[RecordingCanary]:
    async with RecordingCanary("hold") as canary:
        try:
            yield canary
        finally:
            canary.release.set()


# --- the primary's capture is what the client received --------------------------------------


@pytest.mark.parametrize("query", ["cl", ""], ids=["content-length", "chunked"])
@pytest.mark.parametrize("canary_first", [True, False], ids=["canary-first", "primary-first"])
async def test_streamed_response_captured_as_the_client_received_it(
    primary_url: str, held_canary: RecordingCanary, query: str, canary_first: bool
) -> None:
    name = f"stream_{query or 'chunked'}_{int(canary_first)}"
    mirrors = [("r", "", name)]
    async with compare_proxy(
        primary_url, held_canary.url, mirrors, {name: STATUS_HEADER_BYTES}
    ) as h:
        canary = captured(STATUS_HEADER_BYTES, 201, [(b"content-type", b"text/html")], b"other")
        async with httpx.AsyncClient() as client:
            async with client.stream("GET", f"{h.url}/stream?{query}") as resp:
                rv = await h.rendezvous(name)
                if canary_first:
                    rv.canary_done(name, canary)
                body = b"".join([c async for c in resp.aiter_raw()])
            if not canary_first:
                rv.canary_done(name, canary)
        records = await wait_for(lambda: h.runtime.diffs.query(canary=name))
        text = await h.metrics()
    assert resp.status_code == 200
    assert body == b"".join(_stream_chunk(i) for i in range(STREAM_CHUNKS))
    (record,) = records
    digest = hashlib.sha256(body).hexdigest()
    assert record["primary"] == {"status": 200, "length": len(body), "sha256": digest}
    assert record["request"] == {"method": "GET", "path": "/stream", "query": query, "id": None}
    assert record["rule"] == "r"
    assert [(d["kind"], d["where"], d["primary"]) for d in record["differences"]] == [
        ("status", "status", "200"),
        ("header", "Content-Type", '["text/plain"]'),
        ("body", "$", json.dumps({"length": len(body), "sha256": digest}, separators=(",", ":"))),
    ]
    assert metric(text, "sidecar_compare_total", canary=name, rule="r", result="diff") == 1
    for kind in ("status", "header", "body"):
        assert metric(text, "sidecar_compare_differences_total", canary=name, kind=kind) == 1


async def test_client_gone_mid_response_is_primary_incomplete(
    primary_url: str, held_canary: RecordingCanary
) -> None:
    name = "gone"
    async with compare_proxy(
        primary_url, held_canary.url, [("r", "", name)], {name: STATUS_HEADER_BYTES}
    ) as h:
        host, port = h.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await reader.readexactly(1 << 20)  # the head and the first MiB
        writer.close()
        await writer.wait_closed()
        rv = await h.rendezvous(name)
        rv.canary_done(name, captured(STATUS_HEADER_BYTES, 200, [], b"b"))

        async def skipped() -> float:
            return metric(await h.metrics(), "sidecar_compare_skipped_total", canary=name)

        await _until(skipped, 1)
        text = await h.metrics()
    assert metric(text, "sidecar_compare_skipped_total", reason="primary_incomplete", canary=name)
    assert metric(text, "sidecar_compare_total", canary=name, result="skipped") == 1
    assert h.runtime.diffs.query(canary=name) == []


async def test_primary_cut_by_idle_timeout_is_primary_incomplete(
    primary_url: str, held_canary: RecordingCanary
) -> None:
    name = "stalled"
    async with compare_proxy(
        primary_url,
        held_canary.url,
        [("r", "", name)],
        {name: STATUS_HEADER_BYTES},
        primary_settings="timeout 1s idle_timeout 200ms",
    ) as h:
        rv_task = asyncio.ensure_future(h.rendezvous(name))
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.TransportError):
                await client.get(f"{h.url}/stall")
        (await rv_task).canary_done(name, captured(STATUS_HEADER_BYTES, 200, [], b"first"))
        text = await h.metrics()
    assert (
        metric(text, "sidecar_compare_skipped_total", canary=name, reason="primary_incomplete") == 1
    )


@pytest.mark.parametrize("path", ["/x", "/slow"], ids=["502", "504"])
async def test_proxy_own_502_504_is_primary_failed(
    primary_url: str, held_canary: RecordingCanary, path: str
) -> None:
    name = f"failed_{path.strip('/')}"
    target = f"http://127.0.0.1:{free_port()}" if path == "/x" else primary_url
    async with compare_proxy(
        target,
        held_canary.url,
        [("r", "", name)],
        {name: STATUS_HEADER_BYTES},
        primary_settings="timeout 300ms",
    ) as h:
        async with httpx.AsyncClient() as client:
            r = await client.get(f"{h.url}{path}")
        rv = await h.rendezvous(name)
        rv.canary_done(name, captured(STATUS_HEADER_BYTES, 200, [], b"ok"))
        text = await h.metrics()
    assert r.status_code == (502 if path == "/x" else 504)
    assert metric(text, "sidecar_compare_skipped_total", canary=name, reason="primary_failed") == 1
    assert metric(text, "sidecar_compare_total", canary=name, result="skipped") == 1


async def _until(probe: Callable[[], Any], value: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while await probe() != value:
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(POLL_S)


# --- requests without comparison ----------------------------------------------------------------


async def test_request_without_compare_allocates_no_rendezvous(
    primary_url: str, held_canary: RecordingCanary
) -> None:
    mirrors = [("m_plain", 'when path ^= "/p"', "plain"), ("m_cmp", 'when path ^= "/c"', "cmp")]
    async with compare_proxy(primary_url, held_canary.url, mirrors, {}) as h:
        assert h.runtime.current.compare_report is None  # nothing compared: nothing to do
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{h.url}/p")).status_code == 200
        await wait_for(lambda: h.jobs)
        assert [j.rendezvous for _, j in h.jobs] == [None]
    spec = CompareSpec(status=True)
    async with compare_proxy(primary_url, held_canary.url, mirrors, {"cmp": spec}) as h:
        assert h.runtime.current.compare_report is not None
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{h.url}/p")).status_code == 200
            assert (await client.get(f"{h.url}/c")).status_code == 200
        await wait_for(lambda: len(h.jobs) == 2)
        plain, cmp = (j for _, j in h.jobs)
        assert plain.rendezvous is None
        assert cmp.rendezvous is not None


# --- results: metrics, noise, /diffs, diff_log ---------------------------------------------------


async def test_match_diff_and_noise_counted(primary_url: str, held_canary: RecordingCanary) -> None:
    spec = CompareSpec(status=True, body="json", baseline="n_base")
    mirrors = [("r", "", "n_can, n_base")]
    async with compare_proxy(primary_url, held_canary.url, mirrors, {"n_can": spec}) as h:
        async with httpx.AsyncClient() as client:
            for n in range(3):
                h.jobs.clear()
                r = await client.get(f"{h.url}/doc")
                rv = await h.rendezvous("n_can")
                assert rv.capture_spec("n_base") == spec  # a baseline: captured too
                doc = r.json()
                base = {**doc, "n": 2}  # the baseline differs at $.n on every request: noise
                can = {**doc, "n": 3, **({"extra": True} if n == 2 else {})}
                rv.canary_done("n_base", captured(spec, 200, [], json.dumps(base).encode()))
                rv.canary_done("n_can", captured(spec, 200, [], json.dumps(can).encode()))
        await wait_for(lambda: h.runtime.diffs.query(canary="n_can"))
        text = await h.metrics()
    labels = {"canary": "n_can", "rule": "r"}
    assert metric(text, "sidecar_compare_total", result="match", **labels) == 2
    assert metric(text, "sidecar_compare_total", result="diff", **labels) == 1
    assert metric(text, "sidecar_compare_noise_total", kind="body", **labels) == 3
    assert metric(text, "sidecar_compare_differences_total", kind="body", **labels) == 1
    assert metric(text, "sidecar_compare_total", canary="n_base") == 0  # only a baseline
    (record,) = h.runtime.diffs.query()
    assert [d["where"] for d in record["differences"]] == ["$['extra']"]
    assert [d["where"] for d in record["noise"]] == ["$['n']"]


async def test_diffs_endpoint_filters_and_limit_and_diff_log(
    tmp_path: Path, primary_url: str, held_canary: RecordingCanary
) -> None:
    spec = CompareSpec(status=True)
    mirrors = [("ra", 'when path ^= "/a"', "d1"), ("rb", 'when path ^= "/b"', "d2")]
    log_path = tmp_path / "diffs.jsonl"
    async with (
        compare_proxy(
            primary_url, held_canary.url, mirrors, {"d1": spec, "d2": spec}, diff_log=str(log_path)
        ) as h,
        httpx.AsyncClient() as client,
    ):
        for path, canary in (("/a/1", "d1"), ("/b/1", "d2"), ("/a/2", "d1")):
            h.jobs.clear()
            await client.get(f"{h.url}{path}")
            (await h.rendezvous(canary)).canary_done(canary, captured(spec, 500, [], b""))
            await wait_for(functools.partial(_recorded, h, canary, path))

        async def diffs(query: str = "") -> httpx.Response:
            return await client.get(f"{h.admin_url}/diffs{query}")

        every = (await diffs()).json()
        assert [r["request"]["path"] for r in every] == ["/a/2", "/b/1", "/a/1"]
        assert [r["request"]["path"] for r in (await diffs("?canary=d1")).json()] == [
            "/a/2",
            "/a/1",
        ]
        assert [r["rule"] for r in (await diffs("?rule=rb")).json()] == ["rb"]
        assert (await diffs("?canary=d2&rule=ra")).json() == []
        assert (await diffs("?limit=1")).json() == every[:1]
        assert (await diffs("?limit=0")).json() == []
        assert (await diffs("?limit=10")).json() == every
        for bad in ("x", "-1", "1.5", ""):
            r = await diffs(f"?limit={bad}")
            assert r.status_code == 400, bad
            assert "limit must be a non-negative integer" in r.text
        assert (await diffs()).headers["content-type"] == "application/json"

        # A reload retargets the log; the kept records stay.
        second = tmp_path / "second.jsonl"
        h.runtime.swap(dataclasses.replace(h.runtime.config, diff_log=str(second)))
        h.jobs.clear()  # the pools are kept (equal specs), with their recording dispatch
        await client.get(f"{h.url}/b/2")
        (await h.rendezvous("d2")).canary_done("d2", captured(spec, 500, [], b""))
        await wait_for(lambda: _recorded(h, "d2", "/b/2"))
        assert len((await diffs()).json()) == 4
    lines = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert lines == list(reversed(every))
    assert [json.loads(line)["request"]["path"] for line in second.read_text().splitlines()] == [
        "/b/2"
    ]


def _recorded(h: Harness, canary: str, path: str) -> bool:
    return any(r["request"]["path"] == path for r in h.runtime.diffs.query(canary=canary))
