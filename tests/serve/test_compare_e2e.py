"""Response comparison end to end: `sidecar serve` with a compare block, a real primary, a
canary that answers differently and a baseline that shares the noise; the verdicts are read
from /metrics, /diffs, the diff log and `sidecar diffs`."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.support.serve import parse_metrics, serve_proxy
from tests.support.servers import serve_asgi

DEADLINE_S = 15.0
REQUESTS = 20


class JsonApp:
    """Answers every request with `{"price": ..., "ts": <a counter>}`: `ts` differs on every
    response (noise), `price` is the version's own answer."""

    def __init__(self, price: float, ts_start: int) -> None:
        self.price = price
        self.ts = ts_start

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        self.ts += 1
        price = 1.0 if scope["path"] == "/same" else self.price
        body = json.dumps({"price": price, "ts": self.ts}).encode()
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
diff_log "{log}"

canary v1 {{
    server {v1}
}}

canary v2 {{
    server {v2}
    compare {{
        status
        header "Content-Type"
        body json
        baseline v1
    }}
}}

mirror all {{
    to v2, v1
}}
"""


async def _settled(proxy: Any, total: int) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while True:
        metrics = parse_metrics(await proxy.metrics())
        done = sum(v for k, v in metrics.items() if k.startswith("sidecar_compare_total{"))
        if done >= total or loop.time() > deadline:
            return metrics
        await asyncio.sleep(0.05)


async def test_canary_diffs_and_noise_through_serve(tmp_path: Path) -> None:
    log = tmp_path / "diffs.jsonl"
    async with (
        serve_asgi(JsonApp(price=9.5, ts_start=0)) as primary,
        serve_asgi(JsonApp(price=9.5, ts_start=1000)) as v1,
        serve_asgi(JsonApp(price=9.05, ts_start=2000)) as v2,
    ):
        rules = RULES.format(primary=primary, v1=v1, v2=v2, log=log)
        async with serve_proxy(tmp_path, rules) as proxy, httpx.AsyncClient() as client:
            at_start = parse_metrics(await proxy.metrics())
            for result in ("match", "diff", "skipped"):  # present at 0 before any request
                key = f'sidecar_compare_total{{canary="v2",result="{result}",rule="all"}}'
                assert at_start.get(key) == 0
            assert at_start.get("sidecar_diff_log_dropped_total") == 0
            for i in range(REQUESTS):
                path = "/same" if i % 2 else "/api/items"
                r = await client.get(f"{proxy.url}{path}?page={i}")
                assert r.status_code == 200
                assert r.json()["price"] == (1.0 if i % 2 else 9.5)  # the primary's answer
            metrics = await _settled(proxy, REQUESTS)
            diffs = (await client.get(f"{proxy.admin_url}/diffs")).json()
            only_one = (await client.get(f"{proxy.admin_url}/diffs?limit=1")).json()
            bad = await client.get(f"{proxy.admin_url}/diffs?limit=x")

    total = 'sidecar_compare_total{{canary="v2",result="{}",rule="all"}}'
    assert metrics.get(total.format("diff")) == REQUESTS / 2
    assert metrics.get(total.format("match")) == REQUESTS / 2  # `ts` differs, but it is noise
    body_diffs = 'sidecar_compare_differences_total{canary="v2",kind="body",rule="all"}'
    assert metrics.get(body_diffs) == REQUESTS / 2
    noise = 'sidecar_compare_noise_total{canary="v2",kind="body",rule="all"}'
    assert metrics.get(noise) == REQUESTS

    assert len(diffs) == REQUESTS / 2
    newest = diffs[0]
    assert newest["request"]["path"] == "/api/items"
    assert newest["request"]["query"] == f"page={REQUESTS - 2}"  # newest first
    assert newest["canary"]["name"] == "v2"
    assert newest["rule"] == "all"
    assert [d["where"] for d in newest["differences"]] == ["$['price']"]
    assert (newest["differences"][0]["primary"], newest["differences"][0]["canary"]) == (
        "9.5",
        "9.05",
    )
    assert [n["where"] for n in newest["noise"]] == ["$['ts']"]
    assert only_one == diffs[:1]
    assert bad.status_code == 400

    logged = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(logged) == REQUESTS / 2
    assert logged[-1] == newest

    report = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", "diffs", str(log), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert report.returncode == 0, report.stderr
    assert "$['price']" in report.stdout
