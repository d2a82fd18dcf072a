"""The admin listener of `sidecar serve`: /healthz, /readyz, /rules, /metrics, /diffs,
`admin off`."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.primary import PrimaryApp
from tests.support.serve import free_port, metric, serve_proxy
from tests.support.servers import RecordingCanary, serve_asgi


@pytest.fixture
async def primary_url() -> AsyncIterator[str]:
    async with serve_asgi(PrimaryApp()) as url:
        yield url


async def test_endpoints(tmp_path: Path, primary_url: str) -> None:
    async with RecordingCanary() as canary:
        rules = (
            f"primary {primary_url}\ncanary v2 {{ server {canary.url} compare {{ status }} }}\n"
            'mirror api { when path ^= "/api/" to v2 }\n'
        )
        async with serve_proxy(tmp_path, rules) as proxy, httpx.AsyncClient() as client:
            base = proxy.admin_url
            assert (await client.get(f"{base}/healthz")).status_code == 200
            assert (await client.get(f"{base}/readyz")).status_code == 200
            assert (await client.get(f"{base}/nope")).status_code == 404
            assert (await client.post(f"{base}/metrics")).status_code == 405
            # Nothing compared yet: no records (tests/test_compare_proxy.py fills them).
            r = await client.get(f"{base}/diffs")
            assert (r.status_code, r.json()) == (200, [])
            assert r.headers["content-type"] == "application/json"
            r = await client.get(f"{base}/diffs?limit=-1")
            assert r.status_code == 400
            assert r.text == "limit must be a non-negative integer, not '-1'\n"
            doc = (await client.get(f"{base}/rules")).json()
            rules_file = next(tmp_path.glob("*.mirror"))
            digest = hashlib.sha256(rules_file.read_bytes()).hexdigest()
            assert [c["name"] for c in doc["canaries"]] == ["v2"]
            assert doc["canaries"][0]["compare"]["status"] is True
            assert doc["canaries"][0]["compare"]["sample"] == 1.0
            assert doc["diff_log"] is None
            assert doc["files"][0]["sha256"] == digest
            assert len(doc["sha256"]) == 64
            await client.get(f"{proxy.url}/api/x")
            await canary.wait_for(1)
            r = await client.get(f"{base}/metrics")
            assert r.headers["content-type"].startswith("text/plain")
            text = r.text
    assert metric(text, "sidecar_rules_info", hash=doc["sha256"], rules="1", canaries="1") == 1
    assert metric(text, "sidecar_requests_total", code="2xx") == 1
    assert metric(text, "sidecar_request_duration_seconds_count") == 1
    assert metric(text, "sidecar_mirror_requests_total", canary="v2", outcome="dispatched") == 1
    for name in ("sidecar_mirror_queue_depth", "sidecar_mirror_busy_workers"):
        assert f'{name}{{canary="v2"}}' in text


async def test_admin_off_listens_nowhere(tmp_path: Path, primary_url: str) -> None:
    listen = f"127.0.0.1:{free_port()}"
    rules_file = tmp_path / "off.mirror"
    rules_file.write_text(f"admin off\nlisten {listen}\nprimary {primary_url}\n")
    import subprocess

    from tests.support.serve import sidecar_command

    proc = subprocess.Popen(sidecar_command("serve", str(rules_file)), stderr=subprocess.PIPE)
    try:
        async with httpx.AsyncClient() as client:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 20
            while True:
                try:
                    r = await client.get(f"http://{listen}/x")
                    break
                except httpx.TransportError:
                    assert loop.time() < deadline and proc.poll() is None
                    await asyncio.sleep(0.02)
            assert r.text == "ok"
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0
    assert b"admin off" in err
