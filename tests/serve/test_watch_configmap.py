"""`serve --watch` on a Kubernetes ConfigMap volume: the kubelet's atomic symlink swap.

A ConfigMap mounted as a directory is not a directory of files. The kubelet writes each
version into a fresh timestamped directory and points `..data` at it; every key is a
symlink through `..data`:

    rules/
      ..2026_12_06_21_00_00.1234/api.mirror     the files of the current version
      ..data -> ..2026_12_06_21_00_00.1234
      api.mirror -> ..data/api.mirror

An update writes a new timestamped directory, replaces `..data` in one rename of a new
symlink, adds the symlinks of new keys and removes the old directory. Nothing at
`rules/api.mirror` itself changes (the symlink is the same), so a watcher keyed on the
symlink's own inode or mtime (lstat) misses every update. `ConfigMapDir` repeats the
kubelet's steps; the tests run a real `sidecar serve --watch` on it, on loopback ports,
and poll `/metrics` and `/rules` with a deadline (no sleeps).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from sidecar.serve.reload import fingerprint
from tests.support.primary import PrimaryApp
from tests.support.serve import ServeProcess, free_port, metric, sidecar_command
from tests.support.servers import RecordingCanary, serve_asgi

# A reload polls twice a second and settles 0.1 s; this leaves a slow CI machine room.
RELOAD_DEADLINE_S = 10.0
POLL_S = 0.05


class ConfigMapDir:
    """A directory laid out and updated the way the kubelet's atomic writer does it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir()
        self.keys: set[str] = set()

    @property
    def data(self) -> Path:
        return self.root / "..data"

    def update(self, files: dict[str, str]) -> None:
        """Publish `files` (key -> content) as the ConfigMap's new version."""
        old = os.readlink(self.data) if self.data.is_symlink() else None
        # 1. The new version in a fresh timestamped directory.
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.", time.gmtime())
        version = Path(tempfile.mkdtemp(prefix=stamp, dir=self.root))
        for key, text in files.items():
            (version / key).write_text(text)
        # 2. `..data` swapped in one rename of a new relative symlink.
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(version.name)
        os.replace(tmp, self.data)
        # 3. The user-visible symlinks of new keys; those of removed keys go.
        for key in files.keys() - self.keys:
            (self.root / key).symlink_to(f"..data/{key}")
        for key in self.keys - files.keys():
            (self.root / key).unlink()
        self.keys = set(files)
        # 4. The old version's directory is removed.
        if old is not None:
            shutil.rmtree(self.root / old)


def server_rules(primary: str, c1: RecordingCanary, c2: RecordingCanary) -> str:
    return f"primary {primary}\ncanary c1 {{ server {c1.url} }}\ncanary c2 {{ server {c2.url} }}\n"


def api_rules(to: str) -> str:
    return f'mirror api {{ when path ^= "/" to {to} }}\n'


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


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Callable[[Path], Awaitable[ServeProcess]]]:
    """Start `sidecar serve DIR --watch` on free ports; stopped (SIGTERM) at the end."""
    started: list[ServeProcess] = []

    async def start(rules_dir: Path) -> ServeProcess:
        listen = f"127.0.0.1:{free_port()}"
        admin = f"127.0.0.1:{free_port()}"
        log = tmp_path / f"serve-{len(started)}.log"
        with log.open("wb") as err:
            proc = subprocess.Popen(
                sidecar_command(
                    "serve", str(rules_dir), "--watch", "--listen", listen, "--admin", admin
                ),
                stdout=err,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        proxy = ServeProcess(proc, listen, admin, log)
        started.append(proxy)
        await proxy.wait_ready()
        return proxy

    yield start
    for proxy in started:
        if proxy.proc.poll() is None:
            try:
                await proxy.stop()
            finally:
                if proxy.proc.poll() is None:
                    proxy.proc.kill()
                    proxy.proc.wait()


async def rules_doc(proxy: ServeProcess) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=5.0) as client:
        r = await client.get(f"{proxy.admin_url}/rules")
        r.raise_for_status()
        doc: dict[str, Any] = r.json()
        return doc


async def reloads(proxy: ServeProcess, result: str) -> float:
    return metric(await proxy.metrics(), "sidecar_rules_reloads_total", result=result)


async def wait_for(
    predicate: Callable[[], Awaitable[bool]], what: str, proxy: ServeProcess
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + RELOAD_DEADLINE_S
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}:\n{proxy.log()}")
        await asyncio.sleep(POLL_S)


async def tee_reaches(proxy: ServeProcess, canary: RecordingCanary) -> None:
    """One proxied request; its tee arrives at `canary`."""
    seen = len(canary.requests)
    async with httpx.AsyncClient(timeout=10.0) as client:
        r = await client.get(f"{proxy.url}/api/items")
        assert r.status_code == 200, r.text
    await canary.wait_for(seen + 1)


async def test_a_configmap_update_reloads_and_a_broken_one_keeps_the_old_rules(
    tmp_path: Path,
    primary_url: str,
    c1: RecordingCanary,
    c2: RecordingCanary,
    served: Callable[[Path], Awaitable[ServeProcess]],
) -> None:
    cm = ConfigMapDir(tmp_path / "rules")
    server = server_rules(primary_url, c1, c2)
    cm.update({"00-server.mirror": server, "api.mirror": api_rules("c1")})
    assert os.path.islink(cm.root / "api.mirror") and os.path.islink(cm.data)
    proxy = await served(cm.root)

    first = (await rules_doc(proxy))["sha256"]
    await tee_reaches(proxy, c1)
    assert await reloads(proxy, "ok") == 0

    # A good update: the kubelet's swap of `..data`. The symlink api.mirror is untouched.
    link_before = os.lstat(cm.root / "api.mirror")
    cm.update({"00-server.mirror": server, "api.mirror": api_rules("c2")})
    link_after = os.lstat(cm.root / "api.mirror")
    assert (link_before.st_ino, link_before.st_mtime_ns) == (
        link_after.st_ino,
        link_after.st_mtime_ns,
    )

    async def reloaded_ok() -> bool:
        return await reloads(proxy, "ok") == 1

    await wait_for(reloaded_ok, 'sidecar_rules_reloads_total{result="ok"} to rise', proxy)
    doc = await rules_doc(proxy)
    second = doc["sha256"]
    assert second != first
    assert doc["rules"][0]["to"] == ["c2"]
    await tee_reaches(proxy, c2)
    assert "reloaded (watch)" in proxy.log()

    # A broken update (an unknown canary): counted as an error, the old table keeps serving,
    # although the files it was loaded from are gone (the old version's directory removed).
    cm.update({"00-server.mirror": server, "api.mirror": api_rules("c9")})

    async def reload_failed() -> bool:
        return await reloads(proxy, "error") == 1

    await wait_for(reload_failed, 'sidecar_rules_reloads_total{result="error"} to rise', proxy)
    assert await reloads(proxy, "ok") == 1
    assert (await rules_doc(proxy))["sha256"] == second
    c1_seen = len(c1.requests)
    await tee_reaches(proxy, c2)
    assert len(c1.requests) == c1_seen
    log = proxy.log()
    assert "reload (watch) failed" in log and "unknown-canary" in log
    assert "Traceback" not in log

    # Fixed again: the next swap reloads.
    cm.update({"00-server.mirror": server, "api.mirror": api_rules("c1")})

    async def reloaded_twice() -> bool:
        return await reloads(proxy, "ok") == 2

    await wait_for(reloaded_twice, "the fixed update to reload", proxy)
    assert (await rules_doc(proxy))["sha256"] == first  # the first text again
    await tee_reaches(proxy, c1)


async def test_a_key_added_to_the_configmap_is_loaded(
    tmp_path: Path,
    primary_url: str,
    c1: RecordingCanary,
    c2: RecordingCanary,
    served: Callable[[Path], Awaitable[ServeProcess]],
) -> None:
    cm = ConfigMapDir(tmp_path / "rules")
    server = server_rules(primary_url, c1, c2)
    cm.update({"00-server.mirror": server, "api.mirror": api_rules("c1")})
    proxy = await served(cm.root)
    extra = 'mirror search { when path == "/search" to c2 }\n'
    cm.update({"00-server.mirror": server, "api.mirror": api_rules("c1"), "zz.mirror": extra})

    async def two_rules() -> bool:
        return len((await rules_doc(proxy))["rules"]) == 2

    await wait_for(two_rules, "the new key's rule in /rules", proxy)
    files = [f["path"] for f in (await rules_doc(proxy))["files"]]
    assert [os.path.basename(f) for f in files] == ["00-server.mirror", "api.mirror", "zz.mirror"]


def test_fingerprint_follows_the_swap_and_skips_the_dot_directories(tmp_path: Path) -> None:
    """The watcher's fingerprint: the `*.mirror` symlinks, stat()ed through to the files."""
    cm = ConfigMapDir(tmp_path / "rules")
    cm.update({"api.mirror": api_rules("c1")})
    before = fingerprint([str(cm.root)])
    names = [item[0] for item in before[1:] if isinstance(item, tuple)]
    assert names == [str(cm.root / "api.mirror")]  # not ..data, not ..2026_...
    cm.update({"api.mirror": api_rules("c2")})  # the same size: only the target changed
    assert fingerprint([str(cm.root)]) != before
