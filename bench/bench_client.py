"""Requests per second of sidecar.client.ConnectionPool next to httpx.AsyncClient.

    .venv/bin/python bench/bench_client.py [--requests 10000] [--concurrency 32] [--server raw]

A loopback keep-alive server runs in a subprocess (so it has its own core): `raw` answers every
request head with a fixed 200 (the cheapest server possible, so the client is what is measured);
`hypercorn` serves a hello-world ASGI app. Each client sends GET requests from `concurrency`
tasks over at most `concurrency` connections, reading every body. uvloop is used when installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable

DEFAULT_REQUESTS = 10_000
DEFAULT_CONCURRENCY = 32
WARMUP_REQUESTS = 500  # opens the connections and warms the code paths before timing
SERVER_READY_TIMEOUT_S = 10.0
BODY = b"hello, world"

RAW_SERVER = r"""
import asyncio, sys
RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\ncontent-type: text/plain\r\n\r\n%s" % (
    len(sys.argv[2]), sys.argv[2].encode())

class Proto(asyncio.Protocol):
    def connection_made(self, transport):
        self.t = transport
        self.buf = b""
    def data_received(self, data):
        buf = self.buf + data
        n = buf.count(b"\r\n\r\n")  # GETs only: one head, no body, per request
        if n:
            self.t.write(RESPONSE * n)
            buf = buf[buf.rfind(b"\r\n\r\n") + 4:]
        self.buf = buf

async def main():
    server = await asyncio.get_running_loop().create_server(Proto, "127.0.0.1", int(sys.argv[1]))
    print("ready", flush=True)
    await server.serve_forever()

try:
    import uvloop
    uvloop.run(main())
except ImportError:
    asyncio.run(main())
"""

HYPERCORN_APP = r"""
BODY = b"hello, world"

async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(BODY)).encode())]})
    await send({"type": "http.response.body", "body": BODY})
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_server(kind: str, port: int, tmpdir: str) -> subprocess.Popen[bytes]:
    if kind == "raw":
        cmd = [sys.executable, "-c", RAW_SERVER, str(port), BODY.decode()]
    else:
        app_path = os.path.join(tmpdir, "bench_hello_app.py")
        with open(app_path, "w") as f:
            f.write(HYPERCORN_APP)
        cmd = [
            sys.executable, "-m", "hypercorn", "--worker-class", "uvloop",
            "--bind", f"127.0.0.1:{port}", "--log-level", "warning",
            "--root-path", "", "bench_hello_app:app",
        ]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=tmpdir, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + SERVER_READY_TIMEOUT_S
    while time.monotonic() < deadline:  # readiness: the port accepts connections
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit(f"{kind} server did not come up on port {port}")


Result = tuple[float, float]  # (requests per second, client CPU microseconds per request)


async def run_load(one: Callable[[], Awaitable[None]], requests: int, concurrency: int) -> Result:
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await one()

    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return _result(requests, start, cpu)


def _result(requests: int, start: float, cpu: float) -> Result:
    # CPU time of this process only (the server is another process): on a shared machine it is
    # a steadier measure of what a request costs the client than wall-clock throughput.
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    return requests / wall, cpu / requests * 1e6


async def bench_sidecar(port: int, requests: int, concurrency: int) -> Result:
    from sidecar.http.client import ConnectionPool
    from sidecar.model.endpoint import Endpoint

    endpoint = Endpoint(scheme="http", host="127.0.0.1", port=port)
    headers = [(b"host", f"127.0.0.1:{port}".encode()), (b"user-agent", b"bench")]
    async with ConnectionPool(endpoint, max_connections=concurrency) as pool:

        async def one() -> None:
            resp = await pool.request(b"GET", b"/", headers)
            body = await resp.aread()
            assert body == BODY, body

        await run_load(one, WARMUP_REQUESTS, concurrency)
        return await run_load(one, requests, concurrency)


async def bench_httpx(port: int, requests: int, concurrency: int) -> Result:
    import httpx

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits) as client:

        async def one() -> None:
            resp = await client.get("/", headers={"user-agent": "bench"})
            assert resp.content == BODY

        await run_load(one, WARMUP_REQUESTS, concurrency)
        return await run_load(one, requests, concurrency)


async def bench_h11_streams(port: int, requests: int, concurrency: int) -> Result:
    """Reference: the plainest h11 client, one connection per task, no pool, no error handling."""
    import h11

    headers = [(b"host", f"127.0.0.1:{port}".encode()), (b"user-agent", b"bench")]

    async def connection(count: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = h11.Connection(h11.CLIENT)
        for _ in range(count):
            head = conn.send(h11.Request(method=b"GET", target=b"/", headers=headers))
            writer.write((head or b"") + (conn.send(h11.EndOfMessage()) or b""))
            body = b""
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Data):
                    body += event.data
                elif isinstance(event, h11.EndOfMessage):
                    break
            assert body == BODY
            conn.start_next_cycle()
        writer.close()
        await writer.wait_closed()

    await asyncio.gather(*(connection(WARMUP_REQUESTS // concurrency) for _ in range(concurrency)))
    start, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(connection(requests // concurrency) for _ in range(concurrency)))
    return _result(requests // concurrency * concurrency, start, cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=DEFAULT_REQUESTS)
    parser.add_argument("--concurrency", type=int, default=DEFAULT_CONCURRENCY)
    parser.add_argument("--server", choices=["raw", "hypercorn"], default="raw")
    parser.add_argument("--httpx-requests", type=int, default=None, help="default: --requests")
    args = parser.parse_args()

    try:
        import uvloop

        runner: Callable[..., Result] = uvloop.run
        loop_name = "uvloop"
    except ImportError:  # pragma: no cover
        runner = asyncio.run
        loop_name = "asyncio"

    import tempfile

    with tempfile.TemporaryDirectory() as tmpdir:
        port = free_port()
        proc = start_server(args.server, port, tmpdir)
        try:
            ours = runner(bench_sidecar(port, args.requests, args.concurrency))
            plain = runner(bench_h11_streams(port, args.requests, args.concurrency))
            theirs = runner(
                bench_httpx(port, args.httpx_requests or args.requests, args.concurrency)
            )
        finally:
            proc.terminate()
            proc.wait()

    print(f"{args.requests} GETs, {args.concurrency} concurrent, {args.server} server, {loop_name}")
    rows = [
        ("sidecar.client.ConnectionPool", ours),
        ("plain h11 + streams (no pool)", plain),
        ("httpx.AsyncClient", theirs),
    ]
    print(f"| {'client':<32} | {'req/s':>8} | {'vs httpx':>8} | {'CPU us/req':>10} |")
    print(f"|{'-' * 34}|{'-' * 10}|{'-' * 10}|{'-' * 12}|")
    for name, (rate, cpu_us) in rows:
        print(f"| {name:<32} | {rate:>8,.0f} | {rate / theirs[0]:>7.1f}x | {cpu_us:>10,.0f} |")


if __name__ == "__main__":
    main()
