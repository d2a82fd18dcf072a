"""`sidecar serve` under a low descriptor limit (RLIMIT_NOFILE), and descriptor counts.

async with serve_limited(tmp_path, rules, nofile=128) as proxy:   # a ServeProcess
    open_fds(proxy.pid), close_wait(proxy.pid)
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

from tests.support.serve import ServeProcess, serve_proxy

_TCP_CLOSE_WAIT = "08"  # the state column of /proc/net/tcp


@contextlib.asynccontextmanager
async def serve_limited(
    tmp_path: Path, rules: str, *args: str, nofile: int
) -> AsyncIterator[ServeProcess]:
    """serve_proxy's process, started with RLIMIT_NOFILE lowered to `nofile`."""
    async with serve_proxy(tmp_path, rules, *args, nofile=nofile) as served:
        yield served


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def close_wait(pid: int) -> int:
    """Sockets of process `pid` in CLOSE-WAIT (the peer closed, we did not)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            next(f)
            for line in f:
                fields = line.split()
                if fields[3] == _TCP_CLOSE_WAIT and fields[9] in inodes:
                    count += 1
    return count
