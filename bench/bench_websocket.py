"""WebSocket pass-through: latency, message rate and the cost of idle sessions (issue 17).

Run by hand from the repository root:

    .venv/bin/python bench/bench_websocket.py                       # all three parts
    .venv/bin/python bench/bench_websocket.py --idle 2000 --round-trips 5000

The primary is an echo server of the `websockets` library in its own process; `sidecar
serve` (one process) relays to it; the client is the `websockets` library in this process.
Each figure is measured twice in the same run, straight to the primary and through the
proxy, so the proxy's share can be read off:

1. latency: one session, `--round-trips` sequential echoes of a 64-byte text message,
   p50 and p99;
2. rate: `--sessions` sessions at once, each sending `--messages` 1 KiB binary messages
   and reading the echoes (sender and reader run concurrently), messages per second;
3. idle sessions: `--idle` sessions opened and held; the proxy's descriptors and RSS
   with them open, compared with before (each session should cost two descriptors: the
   client's and the primary's), and after they close (back to where it started).

All on 127.0.0.1, every loop bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from websockets.asyncio.client import ClientConnection, connect  # noqa: E402

from tests.support.limited import open_fds  # noqa: E402
from tests.support.serve import free_port, serve_proxy  # noqa: E402
from tests.support.servers import wait_until  # noqa: E402

ECHO_SERVER = """
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send(message)

async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), max_size=None, compression=None):
        await asyncio.Future()

asyncio.run(main())
"""


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


async def latency(url: str, n: int) -> tuple[float, float]:
    async with connect(url, compression=None) as ws:
        for _ in range(50):  # warm-up
            await ws.send("w" * 64)
            await ws.recv()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            await ws.send("x" * 64)
            await ws.recv()
            times.append(time.perf_counter() - t)
    times.sort()
    return statistics.median(times) * 1e6, times[int(len(times) * 0.99)] * 1e6


async def rate(url: str, sessions: int, messages: int) -> float:
    payload = b"r" * 1024

    async def one(ws: ClientConnection) -> None:
        async def sender() -> None:
            for _ in range(messages):
                await ws.send(payload)

        async def reader() -> None:
            for _ in range(messages):
                await ws.recv()

        await asyncio.gather(sender(), reader())

    conns = [await connect(url, compression=None) for _ in range(sessions)]
    try:
        t = time.perf_counter()
        await asyncio.gather(*(one(ws) for ws in conns))
        elapsed = time.perf_counter() - t
    finally:
        await asyncio.gather(*(ws.close() for ws in conns))
    return sessions * messages / elapsed


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--round-trips", type=int, default=2000)
    ap.add_argument("--sessions", type=int, default=16)
    ap.add_argument("--messages", type=int, default=2000)
    ap.add_argument("--idle", type=int, default=1000)
    args = ap.parse_args()

    port = free_port()
    primary = subprocess.Popen([sys.executable, "-c", ECHO_SERVER, str(port)])
    try:
        direct = f"ws://127.0.0.1:{port}"
        rules = f"primary http://127.0.0.1:{port} {{ timeout 5s }}\n"
        with tempfile.TemporaryDirectory() as tmp:
            async with serve_proxy(Path(tmp), rules) as proxy:
                via = proxy.url.replace("http://", "ws://") + "/"
                pid = proxy.pid
                fds_start = open_fds(pid)
                deadline = time.monotonic() + 10
                while True:  # the primary process is ready when it accepts a session
                    try:
                        async with connect(direct):
                            break
                    except OSError:
                        if time.monotonic() > deadline:
                            raise
                        await asyncio.sleep(0.05)

                for name, url in (("direct", direct), ("via sidecar", via)):
                    p50, p99 = await latency(url, args.round_trips)
                    print(f"latency {name:12} p50 {p50:7.0f} us   p99 {p99:7.0f} us")
                for name, url in (("direct", direct), ("via sidecar", via)):
                    r = await rate(url, args.sessions, args.messages)
                    print(
                        f"rate    {name:12} {r:9.0f} msg/s "
                        f"({args.sessions} sessions x {args.messages} x 1 KiB, echoed)"
                    )

                # The sessions above close asynchronously: wait until their descriptors are.
                await wait_until(lambda: open_fds(pid) <= fds_start, 30, "rate sessions closed")
                fds0, rss0 = open_fds(pid), rss(pid)
                conns: list[ClientConnection] = []
                try:
                    for _ in range(args.idle):
                        conns.append(await connect(via, compression=None))
                    await wait_until(
                        lambda: open_fds(pid) >= fds0 + 2 * args.idle,
                        30,
                        f"{2 * args.idle} more descriptors (now {open_fds(pid) - fds0} more)",
                    )
                    fds1, rss1 = open_fds(pid), rss(pid)
                finally:
                    await asyncio.gather(*(ws.close() for ws in conns))
                await wait_until(lambda: open_fds(pid) <= fds0, 30, "descriptors released")
                print(
                    f"idle    {args.idle} sessions: descriptors {fds0} -> {fds1} "
                    f"({(fds1 - fds0) / args.idle:.2f} per session), RSS {rss0 / 2**20:.1f} -> "
                    f"{rss1 / 2**20:.1f} MiB ({(rss1 - rss0) / args.idle / 1024:.1f} KiB per "
                    f"session); after closing: {open_fds(pid)} descriptors, "
                    f"RSS {rss(pid) / 2**20:.1f} MiB"
                )
    finally:
        primary.terminate()
        primary.wait()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(asyncio.run(main()))
