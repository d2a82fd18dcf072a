"""`pause after N failures for D` through a real `sidecar serve`: a resetting canary is
paused (gauge, dropped_paused, one log line, no connection while paused), a reload that
leaves the canary's block unchanged keeps the pause, one that changes it starts afresh."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.support.faults import FaultServer
from tests.support.primary import PrimaryApp
from tests.support.serve import ServeProcess, metric, serve_proxy
from tests.support.servers import serve_asgi

DEADLINE_S = 10.0
POLL_S = 0.02

RULES = """
primary {primary}
canary v2 {{
    server {canary}
    pause after 2 failures for {pause}
}}
mirror m {{ to v2 }}
"""


async def outcome(proxy: ServeProcess, name: str) -> float:
    return metric(await proxy.metrics(), "sidecar_mirror_requests_total", outcome=name)


async def poll(proxy: ServeProcess, check: Callable[[str], bool], what: str) -> None:
    """Poll /metrics until `check(text)` holds, failing after DEADLINE_S."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE_S
    while not check(await proxy.metrics()):
        assert loop.time() < deadline, f"timed out after {DEADLINE_S}s waiting for {what}"
        await asyncio.sleep(POLL_S)


async def test_pause_through_serve_and_across_a_reload(tmp_path: Path) -> None:
    async with (
        serve_asgi(PrimaryApp()) as primary,
        FaultServer("reset_early") as canary,
    ):
        rules = RULES.format(primary=primary, canary=canary.url, pause="1h")
        async with serve_proxy(tmp_path, rules) as proxy, httpx.AsyncClient() as client:

            def paused(text: str) -> bool:
                return metric(text, "sidecar_mirror_paused", canary="v2") == 1

            text = await proxy.metrics()
            assert 'sidecar_mirror_paused{canary="v2"} 0.0' in text
            for _ in range(2):
                assert (await client.get(f"{proxy.url}/x")).status_code == 200
            await poll(proxy, paused, "the pause")
            accepted = canary.connections_total
            for _ in range(5):
                assert (await client.get(f"{proxy.url}/x")).status_code == 200
            assert await outcome(proxy, "dropped_paused") == 5
            assert await outcome(proxy, "failed") == 2
            assert canary.connections_total == accepted == 2

            # The same rules again: the canary is unchanged, its pool and pause are kept.
            reload = await client.post(f"{proxy.admin_url}/-/reload")
            assert reload.status_code == 200, reload.text
            assert (await client.get(f"{proxy.url}/x")).status_code == 200
            text = await proxy.metrics()
            assert paused(text)
            assert metric(text, "sidecar_mirror_requests_total", outcome="dropped_paused") == 6

            # A changed block is a new canary: not paused, its tees are sent again.
            rules_file = proxy.log_path.with_suffix(".mirror")
            rules_file.write_text(RULES.format(primary=primary, canary=canary.url, pause="2h"))
            reload = await client.post(f"{proxy.admin_url}/-/reload")
            assert reload.status_code == 200, reload.text
            assert not paused(await proxy.metrics())
            canary.fault = "answer"
            assert (await client.get(f"{proxy.url}/x")).status_code == 200
            await poll(
                proxy,
                lambda t: metric(t, "sidecar_mirror_requests_total", outcome="completed") == 1,
                "the tee after the reload",
            )
        log = proxy.log()
    assert log.count("canary v2 paused for 3600s after 2 consecutive failed tees") == 1
    assert "dropped_paused until a probe completes" in log
