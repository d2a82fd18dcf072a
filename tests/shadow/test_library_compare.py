"""The library's response comparison: Mirror(compare=Compare(...), on_diff=...) around a real
app under hypercorn, a real canary on loopback, stats() and the diff records."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest

from sidecar import Compare, Mirror, Upstream
from tests.support.servers import serve_asgi

DEADLINE_S = 10.0


class JsonApp:
    def __init__(self, price: float) -> None:
        self.price = price

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        price = 1.0 if scope["path"] == "/same" else self.price
        body = json.dumps({"price": price}).encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        # two chunks: the capture follows a streamed response
        await send({"type": "http.response.body", "body": body[:5], "more_body": True})
        await send({"type": "http.response.body", "body": body[5:]})


async def test_mirror_compares_with_the_apps_response() -> None:
    records: list[dict[str, Any]] = []
    async with serve_asgi(JsonApp(price=9.05)) as canary:
        mirror = Mirror(compare=Compare(body="json"), on_diff=records.append)
        mirror.use(Upstream(canary, name="v2"))
        app = mirror.wrap(JsonApp(price=9.5))
        async with serve_asgi(app) as url, httpx.AsyncClient() as client:
            for path in ("/api", "/same", "/api", "/same"):
                assert (await client.get(url + path)).json()["price"] in (9.5, 1.0)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + DEADLINE_S
            while loop.time() < deadline:
                stats = mirror.stats()
                if stats.match + stats.diff + stats.skipped >= 4:
                    break
                await asyncio.sleep(0.02)
        await mirror.aclose()
    stats = mirror.stats()
    assert (stats.completed, stats.match, stats.diff, stats.skipped) == (4, 2, 2, 0)
    assert len(records) == 2
    record = records[0]
    assert record["rule"] is None
    assert record["canary"]["name"] == "v2"
    assert [(d["where"], d["primary"], d["canary"]) for d in record["differences"]] == [
        ("$['price']", "9.5", "9.05")
    ]


def test_compare_arguments_are_checked_at_construction() -> None:
    with pytest.raises(ValueError, match="compare"):
        Mirror(compare=Compare(status=False))  # nothing to compare
    with pytest.raises(ValueError, match="compare"):
        Mirror(compare=Compare(body="bytes", ignore=("$.ts",)))  # ignore needs body json
    with pytest.raises(ValueError, match="compare"):
        Mirror(compare=Compare(body="json", ignore=("$.items[",)))
    with pytest.raises(ValueError, match="on_diff"):
        Mirror(compare=Compare(), on_diff="not callable")  # type: ignore[arg-type]
    assert Mirror().stats().match == 0
