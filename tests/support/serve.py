"""Run `sidecar serve` as a subprocess on free loopback ports, ready when /readyz says so.

    async with serve_proxy(tmp_path, rules_text, "--grace", "2") as proxy:
        proxy.url, proxy.admin_url, proxy.pid
        await proxy.metrics()             # /metrics text
        code = await proxy.stop()         # SIGTERM, wait, return the exit status

Under the `host` fixture (tests/conftest.py: a module runs once per HTTP server,
`pytestmark = pytest.mark.usefixtures("host")`) every process started here gets
`--server NAME`; module-scoped fixtures that start one must request `host` too, so that
they are started once per server.

The subprocess's stderr goes to a file (`proxy.log()`), never a pipe that could fill up.
Readiness is polled on /readyz (with a deadline, failing fast with the log when the process
exits); no sleeps as synchronisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

START_TIMEOUT_S = 20.0  # generous: a cold interpreter plus imports on a slow CI machine
STOP_TIMEOUT_S = 20.0
POLL_INTERVAL_S = 0.02
# The HTTP servers `serve --server` can host the proxy on (sidecar.model.config.SERVERS).
HOSTS = ("hypercorn", "uvicorn")
_host: str | None = None  # the `host` fixture's: passed as --server by serve_proxy


def use_host(name: str | None) -> str | None:
    """Make serve_proxy pass `--server name` (None: no flag); returns the previous one."""
    global _host
    previous, _host = _host, name
    return previous


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def sidecar_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "sidecar.cli", *args]


class ServeProcess:
    def __init__(self, proc: subprocess.Popen[bytes], listen: str, admin: str, log: Path) -> None:
        self.proc = proc
        self.url = f"http://{listen}"
        self.admin_url = f"http://{admin}"
        self.log_path = log

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    async def wait_ready(self, timeout: float = START_TIMEOUT_S) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        async with httpx.AsyncClient(timeout=1.0) as client:
            while True:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"sidecar serve exited with {self.proc.returncode}:\n{self.log()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    r = await client.get(f"{self.admin_url}/readyz")
                    if r.status_code == 200:
                        return
                if loop.time() > deadline:
                    raise AssertionError(f"sidecar serve not ready after {timeout}s:\n{self.log()}")
                await asyncio.sleep(POLL_INTERVAL_S)

    async def wait_exit(self, timeout: float = STOP_TIMEOUT_S) -> int:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.proc.poll() is None:
            if loop.time() > deadline:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"sidecar serve did not exit in {timeout}s:\n{self.log()}")
            await asyncio.sleep(POLL_INTERVAL_S)
        return self.proc.returncode

    async def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return await self.wait_exit()

    async def metrics(self) -> str:
        async with httpx.AsyncClient(timeout=5.0) as client:
            r = await client.get(f"{self.admin_url}/metrics")
            r.raise_for_status()
            return r.text


@contextlib.asynccontextmanager
async def serve_proxy(
    tmp_path: Path, rules: str, *args: str, ready: bool = True, nofile: int | None = None
) -> AsyncIterator[ServeProcess]:
    """Write `rules` to a file, start `sidecar serve` on free ports, wait for /readyz.
    `nofile`: the process's RLIMIT_NOFILE (soft and hard), to exhaust descriptors."""

    def limit() -> None:
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

    if _host is not None and "--server" not in args:
        args = (*args, "--server", _host)
    rules_file = tmp_path / f"rules-{free_port()}.mirror"
    rules_file.write_text(rules)
    listen = f"127.0.0.1:{free_port()}"
    admin = f"127.0.0.1:{free_port()}"
    log = rules_file.with_suffix(".log")
    with log.open("wb") as err:
        proc = subprocess.Popen(
            sidecar_command("serve", str(rules_file), "--listen", listen, "--admin", admin, *args),
            stdout=err,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            preexec_fn=limit if nofile is not None else None,
        )
    served = ServeProcess(proc, listen, admin, log)
    try:
        if ready:
            await served.wait_ready()
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                await served.wait_exit()
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


def parse_metrics(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample line (labels as printed, sorted by name)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of `name` whose labels include `labels` (0 when none)."""
    total = 0.0
    for key, value in parse_metrics(text).items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        pairs = dict(p.split("=", 1) for p in rest.rstrip("}").split(",") if "=" in p)
        if all(pairs.get(k) == f'"{v}"' for k, v in labels.items()):
            total += value
    return total
