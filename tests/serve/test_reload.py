"""Reloading rules without a restart: `sidecar serve` subprocesses, real sockets.

Each test starts the sidecar on free loopback ports in front of a real primary (hypercorn)
and RecordingCanary servers in the test's loop, edits the rule file, triggers a reload
(SIGHUP, POST /-/reload or --watch) and watches where the tees go. Waits are polls with a
deadline, never sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from tests.support.primary import PrimaryApp
from tests.support.serve import (
    ServeProcess,
    free_port,
    metric,
    serve_proxy,
    sidecar_command,
)
from tests.support.servers import RecordingCanary, serve_asgi, wait_until

if TYPE_CHECKING:
    from sidecar.model.config import Config

# A good edit changes where tees go within a second of the trigger.
SWITCH_DEADLINE_S = 1.0


@pytest.fixture
async def primary_url() -> AsyncIterator[str]:
    async with serve_asgi(PrimaryApp()) as url:
        yield url


@pytest.fixture
async def c1() -> AsyncIterator[RecordingCanary]:
    async with RecordingCanary() as canary:
        yield canary


@pytest.fixture
async def c2() -> AsyncIterator[RecordingCanary]:
    async with RecordingCanary() as canary:
        yield canary


def rules(primary: str, canaries: dict[str, str], to: str, head: str = "") -> str:
    """One primary, `canaries` (name -> block body) and one rule `m` teeing to `to`."""
    blocks = "".join(f"canary {name} {{ {body} }}\n" for name, body in canaries.items())
    return f"{head}primary {primary}\n{blocks}mirror m {{ to {to} }}\n"


def rules_file(proxy: ServeProcess) -> Path:
    return proxy.log_path.with_suffix(".mirror")


async def post_reload(proxy: ServeProcess) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.post(f"{proxy.admin_url}/-/reload")


async def get(proxy: ServeProcess, path: str = "/x", n: int = 1) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        for _ in range(n):
            r = await client.get(f"{proxy.url}{path}")
            assert r.status_code == 200 and r.text == "ok", r.text


async def switch_time(
    proxy: ServeProcess, new: RecordingCanary, trigger: Callable[[], object]
) -> float:
    """Fire `trigger`, then send requests until `new` receives a tee; seconds it took."""
    loop = asyncio.get_running_loop()
    async with httpx.AsyncClient(timeout=10) as client:
        started = loop.time()
        trigger()
        while not new.requests:
            assert loop.time() - started < 5 * SWITCH_DEADLINE_S, proxy.log()
            assert (await client.get(f"{proxy.url}/x")).status_code == 200
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(new.received.wait(), 0.02)
        return loop.time() - started


async def test_bad_edit_keeps_old_rules_and_reports_like_check(
    tmp_path: Path, primary_url: str, c1: RecordingCanary
) -> None:
    good = rules(primary_url, {"c1": f"server {c1.url}"}, "c1")
    async with serve_proxy(tmp_path, good) as proxy:
        path = rules_file(proxy)
        path.write_text(good.replace("to c1", "to c9"))
        checked = subprocess.run(
            sidecar_command("check", str(path)), capture_output=True, text=True, timeout=30
        )
        assert checked.returncode == 1 and "unknown-canary" in checked.stdout
        expected = checked.stdout.strip()

        answer = await post_reload(proxy)
        assert answer.status_code == 400
        assert expected in answer.text
        await wait_until(lambda: expected in proxy.log(), what="the diagnostics in the log")
        proxy.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: proxy.log().count(expected) == 2, what="the SIGHUP's log")

        text = await proxy.metrics()
        assert metric(text, "sidecar_rules_reloads_total", result="error") == 2
        assert metric(text, "sidecar_rules_reloads_total", result="ok") == 0
        await get(proxy, n=3)  # the old table still tees to c1
        await c1.wait_for(3)
        async with httpx.AsyncClient() as client:
            doc = (await client.get(f"{proxy.admin_url}/rules")).json()
        assert doc["rules"][0]["to"] == ["c1"]
    assert "Traceback" not in proxy.log()


async def test_sighup_and_post_switch_tees_within_a_second(
    tmp_path: Path, primary_url: str, c1: RecordingCanary, c2: RecordingCanary
) -> None:
    # The file's primary is dead: --primary still wins after a reload.
    dead = f"http://127.0.0.1:{free_port()}"
    both = {"c1": f"server {c1.url}", "c2": f"server {c2.url}"}
    async with serve_proxy(tmp_path, rules(dead, both, "c1"), "--primary", primary_url) as proxy:
        path = rules_file(proxy)
        before = await proxy.metrics()
        await get(proxy)
        await c1.wait_for(1)

        path.write_text(rules(dead, both, "c2"))
        took = await switch_time(proxy, c2, lambda: proxy.proc.send_signal(signal.SIGHUP))
        assert took < SWITCH_DEADLINE_S, took
        seen = len(c1.requests)
        await get(proxy, n=5)
        await c2.wait_for(6)
        assert len(c1.requests) == seen  # nothing tees to c1 any more
        mid = await proxy.metrics()
        assert _samples(mid, "sidecar_rules_info") != _samples(before, "sidecar_rules_info")
        assert len(_samples(mid, "sidecar_rules_info")) == 1  # the old hash's series is gone

        path.write_text(rules(dead, both, "c1"))
        answer = await post_reload(proxy)
        assert answer.status_code == 200 and "reloaded" in answer.text, answer.text
        await get(proxy)  # answered after the swap: this request already uses the new table
        await c1.wait_for(seen + 1)

        after = await proxy.metrics()
        assert metric(after, "sidecar_rules_reloads_total", result="ok") == 2
        assert metric(after, "sidecar_rules_reloads_total", result="error") == 0
        # The first text again: its hash again, alone.
        assert _samples(after, "sidecar_rules_info") == _samples(before, "sidecar_rules_info")
        assert metric(after, "sidecar_rules_last_reload_success_timestamp_seconds") >= metric(
            before, "sidecar_rules_last_reload_success_timestamp_seconds"
        )
    assert "Traceback" not in proxy.log()


def _samples(text: str, name: str) -> list[str]:
    return [line.rpartition(" ")[0] for line in text.splitlines() if line.startswith(name + "{")]


async def test_unchanged_canary_keeps_its_pool_and_connection(
    tmp_path: Path, primary_url: str, c1: RecordingCanary, c2: RecordingCanary
) -> None:
    one = {"c1": f"server {c1.url} workers 1"}
    async with serve_proxy(tmp_path, rules(primary_url, one, "c1")) as proxy:
        await get(proxy, n=3)
        await c1.wait_for(3)
        connections = c1.connections_total
        assert connections == 1

        two = {**one, "c2": f"server {c2.url}"}
        rules_file(proxy).write_text(rules(primary_url, two, "c1, c2"))
        answer = await post_reload(proxy)
        assert answer.status_code == 200 and "kept: c1" in answer.text, answer.text
        await get(proxy, n=3)
        await c1.wait_for(6)
        await c2.wait_for(3)
        assert c1.connections_total == connections  # the same pool, the same connection
        assert c1.connections_open == 1


async def test_removed_canary_finishes_its_jobs_within_their_deadline_counted_once(
    tmp_path: Path, primary_url: str, c1: RecordingCanary, c2: RecordingCanary
) -> None:
    async with RecordingCanary("hold") as stuck:  # never answers: its jobs time out
        c1.behaviour = "hold"
        old = {
            "c1": f"server {c1.url} workers 1 queue 10 timeout 10s",
            "stuck": f"server {stuck.url} workers 1 queue 10 timeout 1s",
        }
        async with serve_proxy(tmp_path, rules(primary_url, old, "c1, stuck")) as proxy:
            await get(proxy, n=3)  # each canary: one job held by its worker, two queued
            await c1.wait_for(1)
            await stuck.wait_for(1)

            new = {"c2": f"server {c2.url}"}
            rules_file(proxy).write_text(rules(primary_url, new, "c2"))
            answer = await post_reload(proxy)
            assert answer.status_code == 200 and "removed: c1, stuck" in answer.text
            await get(proxy, n=2)
            await c2.wait_for(2)
            c1.release.set()  # the retired pool still finishes what it holds

            def settled(text: str, canary: str) -> bool:
                done = sum(
                    metric(text, "sidecar_mirror_requests_total", canary=canary, outcome=o)
                    for o in ("completed", "failed", "panicked")
                )
                return done == 3

            text = ""

            async def poll() -> bool:
                nonlocal text
                text = await proxy.metrics()
                return settled(text, "c1") and settled(text, "stuck")

            await _wait_async(poll, 8.0, "the retired pools to settle")

            def count(canary: str, outcome: str) -> float:
                return metric(text, "sidecar_mirror_requests_total", canary=canary, outcome=outcome)

            assert count("c1", "dispatched") == 3 and count("c1", "completed") == 3
            assert count("stuck", "dispatched") == 3 and count("stuck", "failed") == 3
            assert len(c1.requests) == 3  # each job sent once
            for name in ("c1", "stuck"):
                assert count(name, "dropped_full") == 0
            # Retired pools' gauges go, their counters stay.
            await _wait_async(
                lambda: _no_gauge(proxy, "c1"), 5.0, "the retired pool's gauges to go"
            )


async def _no_gauge(proxy: ServeProcess, canary: str) -> bool:
    text = await proxy.metrics()
    return f'sidecar_mirror_queue_depth{{canary="{canary}"}}' not in text


async def _wait_async(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


async def test_watch_picks_up_an_edit(
    tmp_path: Path, primary_url: str, c1: RecordingCanary, c2: RecordingCanary
) -> None:
    both = {"c1": f"server {c1.url}", "c2": f"server {c2.url}"}
    async with serve_proxy(tmp_path, rules(primary_url, both, "c1"), "--watch") as proxy:
        path = rules_file(proxy)
        took = await switch_time(proxy, c2, lambda: path.write_text(rules(primary_url, both, "c2")))
        assert took < 2.0, took  # a poll twice a second, a settle, a load
        assert "reloaded (watch)" in proxy.log()
        path.write_text(rules(primary_url, both, "c5"))  # a bad edit: logged, old table kept
        await wait_until(lambda: "reload (watch) failed" in proxy.log(), what="a failed reload")
        seen = len(c2.requests)
        await get(proxy)
        await c2.wait_for(seen + 1)


async def test_workers_2_all_reload(
    tmp_path: Path, primary_url: str, c1: RecordingCanary, c2: RecordingCanary
) -> None:
    both = {"c1": f"server {c1.url}", "c2": f"server {c2.url}"}
    async with serve_proxy(tmp_path, rules(primary_url, both, "c1"), "--workers", "2") as proxy:
        path = rules_file(proxy)
        await wait_until(lambda: proxy.log().count("serving http") == 2, what="both workers")
        path.write_text(rules(primary_url, both, "c2"))
        assert (await post_reload(proxy)).status_code == 200

        async def reloads(n: int) -> bool:
            return metric(await proxy.metrics(), "sidecar_rules_reloads_total", result="ok") == n

        await _wait_async(lambda: reloads(2), 5.0, "both workers to reload after POST")
        await _tees_only_to(proxy, c2, c1)

        path.write_text(rules(primary_url, both, "c1"))
        proxy.proc.send_signal(signal.SIGHUP)  # to the parent: forwarded to both workers
        await _wait_async(lambda: reloads(4), 5.0, "both workers to reload after SIGHUP")
        await _tees_only_to(proxy, c1, c2)
        assert await proxy.stop() == 0
    log = proxy.log()
    pids = {line.split("pid ")[-1] for line in log.splitlines() if "serving http" in line}
    assert len(pids) == 2
    # Two for the SIGHUP, one for the POST passed on to the other worker (as a SIGHUP).
    assert log.count("reloaded (SIGHUP)") == 3 and "Traceback" not in log


async def _tees_only_to(proxy: ServeProcess, to: RecordingCanary, other: RecordingCanary) -> None:
    """New connections (spread over the workers by the kernel) all tee to `to`."""
    before_to, before_other = len(to.requests), len(other.requests)
    n = 20
    port = int(proxy.url.rsplit(":", 1)[1])
    for _ in range(n):  # a new connection each
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        reply = await reader.read()
        writer.close()
        await writer.wait_closed()
        assert reply.startswith(b"HTTP/1.1 200"), reply
    await to.wait_for(before_to + n)
    assert len(other.requests) == before_other


async def test_listen_and_admin_changes_warn_and_keep_the_old_addresses(
    tmp_path: Path, primary_url: str
) -> None:
    listen, admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    new_listen, new_admin = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    path = tmp_path / "addresses.mirror"
    path.write_text(f"listen {listen}\nadmin {admin}\nprimary {primary_url}\n")
    log = tmp_path / "addresses.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            sidecar_command("serve", str(path)),
            stdout=err,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    proxy = ServeProcess(proc, listen, admin, log)
    try:
        await proxy.wait_ready()
        path.write_text(f"listen {new_listen}\nadmin {new_admin}\nprimary {primary_url}\n")
        answer = await post_reload(proxy)
        assert answer.status_code == 200, answer.text
        assert "needs a restart" in proxy.log()
        await get(proxy)  # still on the old address
        async with httpx.AsyncClient() as client:
            doc = (await client.get(f"{proxy.admin_url}/rules")).json()
        assert (doc["listen"], doc["admin"]) == (listen, admin)
        for addr in (new_listen, new_admin):
            with socket.socket() as s:
                assert s.connect_ex(("127.0.0.1", int(addr.rsplit(":", 1)[1]))) != 0
        assert await proxy.stop() == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


async def test_listen_change_warns_even_when_the_flags_override_it(
    tmp_path: Path, primary_url: str
) -> None:
    head = f"listen 127.0.0.1:{free_port()}\nprimary {primary_url}\n"
    async with serve_proxy(tmp_path, head) as proxy:
        path = rules_file(proxy)
        path.write_text(f"listen 127.0.0.1:{free_port()}\nprimary {primary_url}\n")
        answer = await post_reload(proxy)
        assert answer.status_code == 200, answer.text
        await wait_until(lambda: "needs a restart" in proxy.log(), what="the warning")
        await get(proxy)  # still serving on the --listen address


# --- in process: the runtime and the coordinator without a server --------------------------


def _config(text: str) -> Config:
    from sidecar.dsl import loads

    result = loads(text)
    assert result.config is not None, result.diagnostics
    return result.config


async def test_retired_pool_waits_for_every_older_snapshot() -> None:
    """A pool kept by one reload and retired by the next still serves requests that began
    two snapshots ago: it closes only once those have ended."""
    from sidecar.serve.runtime import Runtime

    head = "primary http://127.0.0.1:1\n"
    c1 = "canary c1 { server http://127.0.0.1:2 }\n"
    c2 = "canary c2 { server http://127.0.0.1:3 }\n"
    runtime = Runtime(_config(head + c1 + "mirror m { to c1 }\n"), files=1, paths=("<s>",))
    await runtime.start()
    try:
        first = runtime.current
        pool = first.canary_pools["c1"]
        first.active += 1  # a request still running on the first table
        runtime.swap(_config(head + c1 + c2 + "mirror m { to c1, c2 }\n"))  # c1 kept
        assert runtime.current.canary_pools["c1"] is pool
        runtime.swap(_config(head + c2 + "mirror m { to c2 }\n"))  # c1 removed
        await asyncio.sleep(0.2)  # several retirement polls
        assert not pool._closing  # the first table's request may still tee to it
        first.active -= 1
        await wait_until(lambda: pool._closing, what="the retired pool to close")
    finally:
        await runtime.close()


async def test_concurrent_reloads_are_serialised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from sidecar.serve import reload as reload_module
    from sidecar.serve.reload import Reloader
    from sidecar.serve.runtime import Runtime

    path = tmp_path / "r.mirror"
    path.write_text("primary http://127.0.0.1:1\n")
    runtime = Runtime(_config(path.read_text()), files=1, paths=(str(path),))
    await runtime.start()
    inside = 0
    most = 0
    lock = threading.Lock()
    real_load = reload_module._load

    def counting_load(*args: Any) -> Any:
        nonlocal inside, most
        with lock:
            inside += 1
            most = max(most, inside)
        try:
            time.sleep(0.01)  # a slow load widens any overlap
            return real_load(*args)
        finally:
            with lock:
                inside -= 1

    monkeypatch.setattr(reload_module, "_load", counting_load)
    try:
        reloader = Reloader(runtime, [str(path)], prepare=lambda c: c)
        results = await asyncio.gather(*(reloader.reload(f"t{i}") for i in range(8)))
        assert all(r.ok for r in results)
        assert most == 1
    finally:
        await runtime.close()


async def test_watch_sees_an_edit_made_before_it_first_looked(tmp_path: Path) -> None:
    """An edit between the start-up load and the watcher's first poll is not lost."""
    from sidecar.dsl import load
    from sidecar.serve.reload import Reloader
    from sidecar.serve.runtime import Runtime

    path = tmp_path / "r.mirror"
    path.write_text("primary http://127.0.0.1:1\n")
    loaded = load([str(path)])
    assert loaded.config is not None
    runtime = Runtime(loaded.config, files=1, paths=(str(path),))
    await runtime.start()
    path.write_text("primary http://127.0.0.1:2\n")  # before the watcher exists
    reloader = Reloader(runtime, [str(path)], prepare=lambda c: c)
    watcher = asyncio.create_task(reloader.watch(poll_s=0.05, settle_s=0.01))
    try:
        await wait_until(
            lambda: (
                runtime.config.primary is not None and runtime.config.primary.endpoint.port == 2
            ),
            what="the watcher to load the edit made before it started",
        )
    finally:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher
        await runtime.close()
