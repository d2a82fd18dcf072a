"""`sidecar serve` as a process: start-up, flags, bad rules, graceful shutdown, --workers."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.primary import PrimaryApp
from tests.support.serve import free_port, metric, serve_proxy, sidecar_command
from tests.support.servers import serve_asgi, wait_until


@pytest.fixture
async def primary_url() -> AsyncIterator[str]:
    async with serve_asgi(PrimaryApp()) as url:
        yield url


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_bad_rules_exit_1_with_check_diagnostics_and_nothing_listens(tmp_path: Path) -> None:
    rules = tmp_path / "bad.mirror"
    rules.write_text(
        "primary http://127.0.0.1:1\ncanary v2 { server http://127.0.0.1:2 }\nmirror m { to v3 }\n"
    )
    port, admin = free_port(), free_port()
    served = subprocess.run(
        sidecar_command(
            "serve", str(rules), "--listen", f"127.0.0.1:{port}", "--admin", f"127.0.0.1:{admin}"
        ),
        capture_output=True,
        text=True,
        timeout=30,
    )
    checked = subprocess.run(
        sidecar_command("check", str(rules)), capture_output=True, text=True, timeout=30
    )
    assert served.returncode == 1
    assert checked.returncode == 1
    expected = (checked.stdout + checked.stderr).strip()
    assert "unknown-canary" in expected
    assert served.stderr.strip() == expected
    assert "Traceback" not in served.stderr
    assert not _port_open(port) and not _port_open(admin)


def test_no_primary_anywhere_is_a_clear_error(tmp_path: Path) -> None:
    rules = tmp_path / "noprimary.mirror"
    rules.write_text("")
    served = subprocess.run(
        sidecar_command("serve", str(rules), "--listen", f"127.0.0.1:{free_port()}"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert served.returncode == 1
    assert "--primary" in served.stderr and "Traceback" not in served.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["{missing}"],
        ["--listen", "bogus", "{rules}"],
        ["--listen", "999.1.1.1:80", "{rules}"],
        ["--admin", "nope", "{rules}"],
        ["--primary", "ftp://x", "{rules}"],
    ],
)
def test_usage_errors_exit_2_like_check(tmp_path: Path, args: list[str]) -> None:
    rules = tmp_path / "base.mirror"
    rules.write_text("primary http://127.0.0.1:1\n")
    argv = [a.format(missing=tmp_path / "nonexist", rules=rules) for a in args]
    served = subprocess.run(
        sidecar_command("serve", *argv), capture_output=True, text=True, timeout=30
    )
    assert served.returncode == 2, served.stderr
    assert served.stderr.startswith("sidecar serve: ") and "Traceback" not in served.stderr


@pytest.mark.usefixtures("host")
async def test_flags_override_files_and_start_line(tmp_path: Path, primary_url: str) -> None:
    # The file's primary is dead and its admin is off: --primary replaces only the URL (the
    # 1s timeout stays, as the 504 shows) and --admin wins over `admin off`.
    rules = (
        f"listen 127.0.0.1:{free_port()}\nadmin off\n"
        f"primary http://127.0.0.1:{free_port()} {{ timeout 1s }}\n"
    )
    async with (
        serve_proxy(tmp_path, rules, "--primary", primary_url) as proxy,
        httpx.AsyncClient() as client,
    ):
        assert (await client.get(f"{proxy.url}/x")).text == "ok"
        assert (await client.get(f"{proxy.url}/slow?s=3")).status_code == 504
        doc = (await client.get(f"{proxy.admin_url}/rules")).json()
        assert doc["primary"]["url"] == primary_url
    start = [line for line in proxy.log().splitlines() if "serving" in line]
    assert len(start) == 1
    assert proxy.url.removeprefix("http://") in start[0]
    assert proxy.admin_url.removeprefix("http://") in start[0]
    assert "0 rules, 0 canaries" in start[0]


async def test_admin_off_flag_serves_without_an_admin_listener(tmp_path: Path) -> None:
    # serve_proxy passes its own --admin first: the later `--admin off` wins.
    rules = "primary http://127.0.0.1:1\n"
    async with serve_proxy(tmp_path, rules, "--admin", "off", ready=False) as proxy:
        port = int(proxy.url.rsplit(":", 1)[1])
        await wait_until(lambda: "serving" in proxy.log(), what="the start line")
        assert _port_open(port)
        start = [line for line in proxy.log().splitlines() if "serving" in line]
        assert len(start) == 1 and "admin off" in start[0], proxy.log()
        assert not _port_open(int(proxy.admin_url.rsplit(":", 1)[1]))


async def test_closed_primary_port_502_with_reason_and_a_start_up_warning(tmp_path: Path) -> None:
    dead = free_port()  # bound and closed again: connecting is refused
    async with (
        serve_proxy(tmp_path, f"primary http://127.0.0.1:{dead}\n") as proxy,
        httpx.AsyncClient() as client,
    ):
        reply = await client.get(f"{proxy.url}/x")
        assert reply.status_code == 502
        assert reply.reason_phrase == "Bad Gateway"
        assert reply.text == "Bad Gateway: the primary is unreachable\n"

        def warned() -> bool:
            return f"primary http://127.0.0.1:{dead} refuses connections (" in proxy.log()

        await wait_until(warned, what="the start-up warning")
    lines = [line for line in proxy.log().splitlines() if "refuses connections" in line]
    assert len(lines) == 1 and "WARNING" in lines[0], proxy.log()


@pytest.mark.usefixtures("host")
async def test_sigterm_finishes_in_flight_request_then_exits_0(tmp_path: Path) -> None:
    app = PrimaryApp()
    async with serve_asgi(app) as primary_url:
        rules = f"primary {primary_url} {{ timeout 10s }}\n"
        async with serve_proxy(tmp_path, rules, "--grace", "5") as proxy:
            port = int(proxy.url.rsplit(":", 1)[1])
            async with httpx.AsyncClient(timeout=10) as client:
                request = asyncio.create_task(client.get(f"{proxy.url}/slow?s=1"))
                await wait_until(lambda: len(app.requests) == 1, what="the primary request")
                proxy.proc.send_signal(signal.SIGTERM)
                response = await request
                assert response.status_code == 200 and response.text == "slow done"
            assert await proxy.wait_exit() == 0
        assert not _port_open(port)
        assert "shutting down" in proxy.log()


@pytest.mark.usefixtures("host")
async def test_sigterm_past_grace_exits_0_without_a_traceback(tmp_path: Path) -> None:
    """A request still running when --grace runs out is cut off; the exit stays clean."""
    app = PrimaryApp()
    async with serve_asgi(app) as primary_url:
        rules = f"primary {primary_url} {{ timeout 30s }}\n"
        async with (
            serve_proxy(tmp_path, rules, "--grace", "0.5") as proxy,
            httpx.AsyncClient(timeout=30) as client,
        ):
            request = asyncio.create_task(client.get(f"{proxy.url}/slow?s=20"))
            await wait_until(lambda: len(app.requests) == 1, what="the primary request")
            proxy.proc.send_signal(signal.SIGTERM)
            assert await proxy.wait_exit() == 0
            with contextlib.suppress(httpx.HTTPError):
                await request
        assert "Traceback" not in proxy.log(), proxy.log()


@pytest.mark.usefixtures("host")
async def test_workers_2_serve_and_metrics_count_across_processes(
    tmp_path: Path, primary_url: str
) -> None:
    rules = f"primary {primary_url}\n"
    async with serve_proxy(tmp_path, rules, "--workers", "2") as proxy:
        n = 40
        port = int(proxy.url.rsplit(":", 1)[1])
        for _ in range(n):  # a new connection each: the kernel spreads them over both
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = await reader.read()
            writer.close()
            await writer.wait_closed()
            assert reply.startswith(b"HTTP/1.1 200")
        text = await proxy.metrics()
        assert metric(text, "sidecar_requests_total", code="2xx") == n
        assert metric(text, "sidecar_rules_info") >= 1
        assert await proxy.stop() == 0
    log = proxy.log()
    assert "Traceback" not in log
    pids = {line.rsplit("pid ", 1)[1] for line in log.splitlines() if "serving http" in line}
    assert len(pids) == 2, log


async def test_runtime_swap_keeps_unchanged_pools_and_retires_the_rest() -> None:
    """The reload-ready design: one snapshot reference, pools keyed by canary name."""
    from sidecar.dsl import loads
    from sidecar.serve.runtime import Runtime

    def config(c2_workers: int, with_c3: bool) -> Any:
        text = (
            "primary http://127.0.0.1:1\n"
            "canary c1 { server http://127.0.0.1:2 }\n"
            f"canary c2 {{ server http://127.0.0.1:3 workers {c2_workers} }}\n"
            + ("canary c3 { server http://127.0.0.1:4 }\n" if with_c3 else "")
            + "mirror m { to c1, c2"
            + (", c3" if with_c3 else "")
            + " }\n"
        )
        result = loads(text)
        assert result.config is not None, result.diagnostics
        return result.config

    runtime = Runtime(config(2, False), files=1, paths=("<string>",))
    await runtime.start()
    try:
        old = runtime.current
        old.active += 1  # a request still running on the old table
        new = runtime.swap(config(3, True))
        assert runtime.current is new
        assert new.canary_pools["c1"] is old.canary_pools["c1"]
        assert new.canary_pools["c2"] is not old.canary_pools["c2"]
        assert set(new.canary_pools) == {"c1", "c2", "c3"}
        assert new.primary is old.primary
        retired = old.canary_pools["c2"]
        assert not retired._closing  # still takes that request's tees
        old.active -= 1
        await wait_until(lambda: retired._closing, what="the retired pool to close")
    finally:
        await runtime.close()


def test_tune_gc_freezes_start_up_objects_and_raises_the_young_threshold() -> None:
    import gc

    from sidecar.serve.process import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 1000  # the imported modules, at least
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
