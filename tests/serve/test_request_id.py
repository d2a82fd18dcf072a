"""`request_id "X-Request-Id"` through a real `sidecar serve`: a recording primary and a
recording canary (compared, always different) see the same id; a client's id is kept, an
invalid one replaced; the diff records name it in `request.id`."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import httpx

from tests.support.serve import parse_metrics, serve_proxy
from tests.support.servers import serve_asgi, wait_until

ID = re.compile(r"[0-9a-f]{32}")
DEADLINE_S = 10.0
POLL_S = 0.02


class Recorder:
    """Answers `{"version": ...}` and records each request's `X-Request-Id` by path."""

    def __init__(self, version: str) -> None:
        self.version = version
        self.ids: dict[str, list[str | None]] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        values = [v.decode("latin-1") for n, v in scope["headers"] if n == b"x-request-id"]
        self.ids.setdefault(scope["path"], []).extend(values or [None])
        body = json.dumps({"version": self.version}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


RULES = """
primary {primary}
request_id "X-Request-Id"

canary v2 {{
    server {v2}
    compare {{
        body json
    }}
}}

mirror all {{
    to v2
}}
"""


async def raw_get(url: str, path: str, extra: bytes) -> bytes:
    """One HTTP/1.1 request on a raw socket (httpx refuses the header we want to send)."""
    host, _, port = url.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(
            b"GET " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + extra
        )
        writer.write(b"\r\n")
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()


async def diff_records(client: httpx.AsyncClient, admin: str, n: int) -> list[dict[str, Any]]:
    """/diffs once it holds `n` records (or what it holds at the deadline)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:
        records: list[dict[str, Any]] = (await client.get(f"{admin}/diffs")).json()
        if len(records) >= n or loop.time() > deadline:
            return records
        await asyncio.sleep(POLL_S)


async def test_request_id_generated_kept_replaced_and_in_diff_records(tmp_path: Path) -> None:
    primary, v2 = Recorder("v1"), Recorder("v2")
    async with serve_asgi(primary) as primary_url, serve_asgi(v2) as v2_url:
        rules = RULES.format(primary=primary_url, v2=v2_url)
        async with serve_proxy(tmp_path, rules) as proxy, httpx.AsyncClient() as client:
            for i in range(3):
                assert (await client.get(f"{proxy.url}/gen/{i}")).status_code == 200
            kept = await client.get(f"{proxy.url}/kept", headers={"X-Request-Id": "client-42"})
            assert kept.status_code == 200
            answer = await raw_get(proxy.url, "/bad", b"X-Request-Id: a\tb\r\n")
            assert answer.startswith(b"HTTP/1.1 200")
            await wait_until(lambda: len(v2.ids) == 5, what="every copy at the canary")

            records = await diff_records(client, proxy.admin_url, 5)
            metrics = parse_metrics(await proxy.metrics())
        log = proxy.log()

    generated = []
    for i in range(3):
        (at_primary,) = primary.ids[f"/gen/{i}"]
        (at_canary,) = v2.ids[f"/gen/{i}"]
        assert at_primary is not None and ID.fullmatch(at_primary), at_primary
        assert at_canary == at_primary  # the same id on the primary and the copy
        generated.append(at_primary)
    assert len(set(generated)) == 3  # one per request, random

    assert primary.ids["/kept"] == ["client-42"] == v2.ids["/kept"]

    (replaced,) = primary.ids["/bad"]
    assert replaced is not None and ID.fullmatch(replaced)
    assert v2.ids["/bad"] == [replaced]
    assert "request id 'a\\tb' replaced by " + replaced in log

    by_path = {r["request"]["path"]: r["request"]["id"] for r in records}
    assert by_path == {
        **{f"/gen/{i}": generated[i] for i in range(3)},
        "/kept": "client-42",
        "/bad": replaced,
    }
    assert metrics.get('sidecar_mirror_paused{canary="v2"}') == 0


async def test_without_request_id_nothing_is_added(tmp_path: Path) -> None:
    primary, v2 = Recorder("v1"), Recorder("v2")
    async with serve_asgi(primary) as primary_url, serve_asgi(v2) as v2_url:
        rules = RULES.format(primary=primary_url, v2=v2_url).replace(
            'request_id "X-Request-Id"\n', ""
        )
        async with serve_proxy(tmp_path, rules) as proxy, httpx.AsyncClient() as client:
            assert (await client.get(f"{proxy.url}/plain")).status_code == 200
            await wait_until(lambda: "/plain" in v2.ids, what="the copy at the canary")
            records = await diff_records(client, proxy.admin_url, 1)
    assert primary.ids["/plain"] == [None] == v2.ids["/plain"]
    assert [r["request"]["id"] for r in records] == [None]
