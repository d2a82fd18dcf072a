"""Response comparison under concurrent load, through a real `sidecar serve`.

The primary and the canary are small ASGI apps in the test's loop (tests/support/servers.py
`serve_asgi`); the proxy is a subprocess. Each phase has its own rule, so its counters are
read apart from the others': the counter identity `match + diff + skipped == completed`
(sidecar_compare_total against sidecar_mirror_requests_total{outcome="completed"}) under
20 concurrent clients; both arrival orders (the primary's response last, the canary's
last), each forced by a gate the test opens once the other side is observably done; a
client that goes away mid-response; a chunked primary response. Then `sidecar diffs` reads
the diff logs of two serve processes at once. Every wait polls with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from tests.support.serve import ServeProcess, metric, serve_proxy
from tests.support.servers import serve_asgi

DEADLINE_S = 10.0
POLL_S = 0.02
CLIENTS = 20
REQUESTS_PER_CLIENT = 10
DIFF_EVERY = 4  # every 4th load request goes to a route where the canary answers otherwise
BIG_CHUNK_BYTES = 64 << 10
BIG_CHUNKS = 512  # 32 MiB: the client leaves long before the end
STREAM_PARTS = (b'{"items": [', b'{"id": 1, "v": "a"},', b'{"id": 2, "v": "b"}', b"], ", b'"n": 2}')

RULES = """
primary {primary} {{
    timeout 10s
    idle_timeout 10s
}}
diff_log "{log}"

canary v2 {{
    server {canary}
    workers 8
    queue 1024
    timeout 10s
    compare {{
        status
        body json
        max_body 1MiB
    }}
}}

mirror load {{
    when path ^= "/load/"
    to v2
}}
mirror order {{
    when path ^= "/order/"
    to v2
}}
mirror gone {{
    when path ^= "/gone/"
    to v2
}}
mirror stream {{
    when path ^= "/stream/"
    to v2
}}
"""


class Gates:
    """Events the apps wait on, opened by the test once the other side is done."""

    def __init__(self) -> None:
        self.primary = asyncio.Event()  # /order/primary-last: the primary answers after it
        self.canary = asyncio.Event()  # /order/canary-last: the canary answers after it


async def _drain(receive: Any) -> None:
    while (await receive()).get("more_body"):
        pass


async def _json(send: Any, doc: object, status: int = 200) -> None:
    head = [(b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": json.dumps(doc).encode()})


def primary_app(gates: Gates) -> Callable[..., Awaitable[None]]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await _drain(receive)
        path: str = scope["path"]
        if path == "/order/primary-last":
            await gates.primary.wait()
        if path.startswith("/gone/"):
            head = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": head})
            chunk = b" " * BIG_CHUNK_BYTES  # JSON whitespace; the client never sees the end
            for _ in range(BIG_CHUNKS):
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b"[]"})
        elif path.startswith("/stream/"):  # no content-length: chunked, in five parts
            head = [(b"content-type", b"application/json")]
            await send({"type": "http.response.start", "status": 200, "headers": head})
            for part in STREAM_PARTS:
                await send({"type": "http.response.body", "body": part, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        else:
            await _json(send, {"path": path, "v": 1})

    return app


def canary_app(gates: Gates) -> Callable[..., Awaitable[None]]:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await _drain(receive)
        path: str = scope["path"]
        if path == "/order/canary-last":
            await gates.canary.wait()
        if path.startswith("/stream/"):  # the same document, one body, other key order
            await _json(send, {"n": 2, "items": [{"v": "a", "id": 1}, {"v": "b", "id": 2}]})
        elif path.startswith("/gone/"):
            await _json(send, [])
        else:
            differs = path.startswith(("/load/diff/", "/order/"))
            await _json(send, {"path": path, "v": 2 if differs else 1})

    return app


async def _until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not await check():
        if loop.time() > deadline:
            raise AssertionError(f"not within {DEADLINE_S}s: {what}")
        await asyncio.sleep(POLL_S)


def _counts(text: str, rule: str) -> dict[str, float]:
    out = {
        r: metric(text, "sidecar_compare_total", canary="v2", rule=rule, result=r)
        for r in ("match", "diff", "skipped")
    }
    for outcome in ("dispatched", "completed", "failed", "panicked"):
        out[outcome] = metric(
            text, "sidecar_mirror_requests_total", canary="v2", rule=rule, outcome=outcome
        )
    return out


async def _settled(proxy: ServeProcess, rule: str, tees: int) -> dict[str, float]:
    """Counts once `tees` tees of `rule` settled and every completed one was judged."""
    counts: dict[str, float] = {}

    async def done() -> bool:
        nonlocal counts
        counts = _counts(await proxy.metrics(), rule)
        ended = counts["completed"] + counts["failed"] + counts["panicked"]
        judged = counts["match"] + counts["diff"] + counts["skipped"]
        return counts["dispatched"] == ended == tees and judged == counts["completed"]

    await _until(done, f"rule {rule}: {tees} tees settled and judged ({counts})")
    return counts


async def _load(proxy: ServeProcess) -> None:
    async def client(c: int) -> None:
        async with httpx.AsyncClient(timeout=DEADLINE_S) as http:
            for i in range(REQUESTS_PER_CLIENT):
                n = c * REQUESTS_PER_CLIENT + i
                route = "diff" if n % DIFF_EVERY == 0 else "same"
                r = await http.get(f"{proxy.url}/load/{route}/{n}")
                assert r.status_code == 200
                assert r.json() == {"path": f"/load/{route}/{n}", "v": 1}

    await asyncio.gather(*(client(c) for c in range(CLIENTS)))
    total = CLIENTS * REQUESTS_PER_CLIENT
    counts = await _settled(proxy, "load", total)
    assert counts["completed"] == total  # queue 1024: none dropped
    assert counts["diff"] == total // DIFF_EVERY
    assert counts["match"] == total - total // DIFF_EVERY
    assert counts["skipped"] == 0


async def _orders(proxy: ServeProcess, gates: Gates) -> None:
    async with httpx.AsyncClient(timeout=DEADLINE_S) as http:
        # The primary answers only once the canary's tee has completed: the primary's
        # capture arrives last and judges.
        pending = asyncio.ensure_future(http.get(f"{proxy.url}/order/primary-last"))

        async def canary_completed() -> bool:
            text = await proxy.metrics()
            return (
                metric(text, "sidecar_mirror_requests_total", rule="order", outcome="completed")
                == 1
            )

        await _until(canary_completed, "the canary's tee completed first")
        assert not pending.done()
        gates.primary.set()
        assert (await pending).status_code == 200
        counts = await _settled(proxy, "order", 1)
        assert counts["diff"] == 1
        # The canary answers only once the client has the primary's response: the canary's
        # capture arrives last and judges.
        r = await http.get(f"{proxy.url}/order/canary-last")
        assert r.status_code == 200
        assert metric(await proxy.metrics(), "sidecar_compare_total", rule="order") == 1
        gates.canary.set()
        counts = await _settled(proxy, "order", 2)
        assert counts["diff"] == 2


async def _client_gone(proxy: ServeProcess) -> None:
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"GET /gone/big HTTP/1.1\r\nHost: test\r\n\r\n")
    await writer.drain()
    await reader.readexactly(1 << 20)  # the head and the first MiB of 32
    writer.close()
    with contextlib.suppress(ConnectionError):
        await writer.wait_closed()
    counts = await _settled(proxy, "gone", 1)
    assert counts["skipped"] == 1
    text = await proxy.metrics()
    skipped = metric(
        text, "sidecar_compare_skipped_total", rule="gone", reason="primary_incomplete"
    )
    assert skipped == 1


async def _streamed(proxy: ServeProcess) -> None:
    async with httpx.AsyncClient(timeout=DEADLINE_S) as http:
        r = await http.get(f"{proxy.url}/stream/1")
    assert r.status_code == 200
    assert r.headers.get("transfer-encoding") == "chunked"
    assert r.content == b"".join(STREAM_PARTS)
    counts = await _settled(proxy, "stream", 1)
    assert counts["match"] == 1  # the chunks joined into one document, parsed as JSON


async def test_compare_counters_under_load_orders_gone_and_streamed(tmp_path: Path) -> None:
    gates = Gates()
    log = tmp_path / "a.jsonl"
    async with (
        serve_asgi(primary_app(gates)) as primary,
        serve_asgi(canary_app(gates)) as canary,
        serve_proxy(tmp_path, RULES.format(primary=primary, canary=canary, log=log)) as proxy,
    ):
        await _load(proxy)
        await _orders(proxy, gates)
        await _client_gone(proxy)
        await _streamed(proxy)
        text = await proxy.metrics()
    completed = metric(text, "sidecar_mirror_requests_total", canary="v2", outcome="completed")
    assert metric(text, "sidecar_compare_total", canary="v2") == completed


async def test_sidecar_diffs_reads_the_logs_of_two_processes(tmp_path: Path) -> None:
    gates = Gates()
    logs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    per_process = (3, 2)  # diff records each process writes
    async with (
        serve_asgi(primary_app(gates)) as primary,
        serve_asgi(canary_app(gates)) as canary,
        contextlib.AsyncExitStack() as stack,
    ):
        proxies = await asyncio.gather(
            *(
                stack.enter_async_context(
                    serve_proxy(tmp_path, RULES.format(primary=primary, canary=canary, log=log))
                )
                for log in logs
            )
        )
        async with httpx.AsyncClient(timeout=DEADLINE_S) as http:
            for proxy, n in zip(proxies, per_process, strict=True):
                for i in range(n):
                    assert (await http.get(f"{proxy.url}/load/diff/{i}")).status_code == 200
        for proxy, log, n in zip(proxies, logs, per_process, strict=True):
            await _settled(proxy, "load", n)

            async def written(log: Path = log, n: int = n) -> bool:
                return log.exists() and log.read_text().count("\n") == n

            await _until(written, f"{n} records in {log}")
    done = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "diffs", *map(str, logs), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["records"] == sum(per_process)
    assert report["bad_lines"] == 0
    assert [(s["source"], s["records"]) for s in report["sources"]] == [
        (str(log), n) for log, n in zip(logs, per_process, strict=True)
    ]
    (group,) = report["groups"]
    assert (group["canary"], group["rule"], group["records"]) == ("v2", "load", sum(per_process))
