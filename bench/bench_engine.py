"""The mirror engine's costs: admission on the request path, and one pool's throughput.

    .venv/bin/python bench/bench_engine.py [--admissions 50000] [--seconds 3] [--workers 8]

1. Microseconds per tee admission on the request path (what a proxied request pays for one
   canary): `RequestTees.begin` + `feed` + `finish` + `try_admit`, without a body (a GET)
   and with a 256-byte body, timed in a tight loop while no worker runs. Then what a
   misbehaving canary costs per request, with the Prometheus hook: a tee dropped because
   the pool is full (slow or silent canary), one failed because the only server is in
   its connect back-off (dead port; settling by the worker included), and one dropped
   because the dead canary is paused (`pause after 1 failures for 1h`). And the no-body
   admission again for a canary with a `pause` that is not paused.
2. Mirrors per second one `CanaryPool` (default 8 workers) sustains against a fast loopback
   canary (a raw asyncio server in a subprocess, so it has its own core): the queue is kept
   full and completed jobs are counted for `--seconds`; with this process's CPU per
   completed mirror (admission, worker, client, metrics: steadier on a shared machine).
3. In the same run, a hypercorn hello-world app's requests per second (subprocess), loaded
   by 32 tasks over `sidecar.client.ConnectionPool`: the yardstick for 2.

uvloop is used when installed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_client import free_port, run_load, start_server

from sidecar.model.config import CanarySpec, PauseSpec, ServerSpec
from sidecar.model.endpoint import Endpoint
from sidecar.prom import Metrics
from sidecar.shadow.pool import CanaryPool
from sidecar.shadow.tees import RequestTees
from sidecar.shadow.types import ShadowRequest

HEADERS = [
    (b"host", b"app.example.com"),
    (b"user-agent", b"bench/1.0"),
    (b"accept", b"application/json"),
    (b"x-request-id", b"4f6c2a"),
]
BODY_256 = b"b" * 256
YARDSTICK_REQUESTS = 20_000
YARDSTICK_CONCURRENCY = 32
FEED_FACTOR = 4  # keep this many x workers jobs queued during the throughput run


# A pause that outlasts the run: every tee after the first failure is dropped_paused.
PAUSE = PauseSpec(failures=1, duration_s=3600.0)


def spec_for(port: int, *, workers: int, queue: int, pause: PauseSpec | None = None) -> CanarySpec:
    endpoint = Endpoint(scheme="http", host="127.0.0.1", port=port)
    return CanarySpec(
        name="bench",
        servers=(ServerSpec(endpoint=endpoint),),
        workers=workers,
        queue=queue,
        pause=pause,
    )


async def bench_admission(port: int, n: int) -> tuple[float, float, float]:
    """(no body, 256-byte body, no body to a canary with an unused `pause`) in µs per tee."""
    results = []
    for with_body, pause in ((False, None), (True, None), (False, PAUSE)):
        pool = CanaryPool(spec_for(port, workers=1, queue=n + 1, pause=pause))
        pool.start()
        start = time.perf_counter()
        for _ in range(n):
            if with_body:
                tees = RequestTees.begin(
                    [(pool, "r")], "POST", b"/api/x", b"a=1", HEADERS, "10.0.0.1", "http", 256
                )
                assert tees is not None
                tees.feed(BODY_256)
                tees.finish()
            else:
                RequestTees.begin(
                    [(pool, "r")], "GET", b"/api/x", b"a=1", HEADERS, "10.0.0.1", "http", 0
                )
        elapsed = time.perf_counter() - start
        assert pool.stats().dispatched == n, pool.stats()
        results.append(elapsed / n * 1e6)
        await pool.aclose(drain=None)
    return results[0], results[1], results[2]


async def bench_refused(dead_port: int, n: int) -> tuple[float, float, float]:
    """Microseconds per tee that a misbehaving canary refuses, metrics included: dropped
    because the pool is full (a slow or silent canary), and dispatched then failed at once
    because its only server is in its connect back-off (a dead port), settled included."""
    metrics = Metrics(CollectorRegistry())
    never = asyncio.Event()

    async def stuck(_: ShadowRequest) -> int:
        await never.wait()
        return 200

    full = CanaryPool(spec_for(dead_port, workers=1, queue=0), observe=metrics.observe, chain=stuck)
    full.start()
    RequestTees.begin([(full, "r")], "GET", b"/", b"", HEADERS, "10.0.0.1", "http", 0)
    await asyncio.sleep(0)  # the worker takes it and blocks
    start = time.perf_counter()
    for _ in range(n):
        RequestTees.begin([(full, "r")], "GET", b"/api/x", b"a=1", HEADERS, "10.0.0.1", "http", 0)
    dropped = (time.perf_counter() - start) / n * 1e6
    assert full.stats().dropped_full == n, full.stats()
    await full.aclose(drain=None)

    dead = CanaryPool(spec_for(dead_port, workers=8, queue=64), observe=metrics.observe)
    RequestTees.begin([(dead, "r")], "GET", b"/", b"", HEADERS, "10.0.0.1", "http", 0)
    while dead.stats().failed == 0:  # the refused connect starts the back-off window
        await asyncio.sleep(0.001)
    start = time.perf_counter()
    for i in range(n):
        RequestTees.begin([(dead, "r")], "GET", b"/api/x", b"a=1", HEADERS, "10.0.0.1", "http", 0)
        if i % 32 == 31:
            await asyncio.sleep(0)  # let the workers settle what they were handed
    while dead.stats().failed + dead.stats().dropped_full < n + 1:
        await asyncio.sleep(0)
    failed = (time.perf_counter() - start) / n * 1e6
    await dead.aclose(drain=None)

    spec = spec_for(dead_port, workers=8, queue=64, pause=PAUSE)
    paused = CanaryPool(spec, observe=metrics.observe)
    RequestTees.begin([(paused, "r")], "GET", b"/", b"", HEADERS, "10.0.0.1", "http", 0)
    while not paused.paused:  # the refused connect pauses it (after 1 failure)
        await asyncio.sleep(0.001)
    start = time.perf_counter()
    for _ in range(n):
        RequestTees.begin([(paused, "r")], "GET", b"/api/x", b"a=1", HEADERS, "10.0.0.1", "http", 0)
    dropped_paused = (time.perf_counter() - start) / n * 1e6
    assert paused.stats().dropped_paused == n, paused.stats()
    await paused.aclose(drain=None)
    return dropped, failed, dropped_paused


async def bench_pool(port: int, seconds: float, workers: int) -> tuple[float, float]:
    """(mirrors/s, CPU µs per mirror of this process: admission, worker, client, metrics)."""
    feed = workers * FEED_FACTOR
    pool = CanaryPool(spec_for(port, workers=workers, queue=feed))
    pool.start()
    loop = asyncio.get_running_loop()

    def top_up() -> None:
        while pool.queue_depth < feed:
            tees = RequestTees.begin(
                [(pool, None)], "GET", b"/", b"", HEADERS, "10.0.0.1", "http", 0
            )
            assert tees is None
        if pool.stats().failed:
            raise SystemExit(f"mirrors failed: {pool.stats()}")

    # warm up: open the connections
    top_up()
    await asyncio.sleep(0.5)
    before = pool.stats().completed
    start, cpu = loop.time(), time.process_time()
    while loop.time() - start < seconds:
        top_up()
        await asyncio.sleep(0)  # let the workers run; re-fill as they drain the queue
    done = pool.stats().completed - before
    rate = done / (loop.time() - start)
    cpu_us = (time.process_time() - cpu) / max(done, 1) * 1e6
    await pool.aclose(drain=None)
    return rate, cpu_us


async def bench_hypercorn(port: int) -> float:
    from sidecar.http.client import ConnectionPool

    endpoint = Endpoint(scheme="http", host="127.0.0.1", port=port)
    headers = [(b"host", f"127.0.0.1:{port}".encode())]
    async with ConnectionPool(endpoint, max_connections=YARDSTICK_CONCURRENCY) as pool:

        async def one() -> None:
            resp = await pool.request(b"GET", b"/", headers)
            await resp.aread()

        await run_load(one, 1000, YARDSTICK_CONCURRENCY)
        rate, _cpu_us = await run_load(one, YARDSTICK_REQUESTS, YARDSTICK_CONCURRENCY)
        return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--admissions", type=int, default=50_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--workers", type=int, default=8)
    args = parser.parse_args()
    try:
        import uvloop

        runner: Callable[..., object] = uvloop.run
        loop_name = "uvloop"
    except ImportError:  # pragma: no cover
        runner = asyncio.run
        loop_name = "asyncio"

    with tempfile.TemporaryDirectory() as tmpdir:
        raw_port = free_port()
        raw = start_server("raw", raw_port, tmpdir)
        hyper_port = free_port()
        hyper = start_server("hypercorn", hyper_port, tmpdir)
        try:
            Result = tuple[
                tuple[float, float, float], tuple[float, float, float], tuple[float, float], float
            ]

            async def run() -> Result:
                admission = await bench_admission(raw_port, args.admissions)
                refused = await bench_refused(free_port(), args.admissions)
                mirrors = await bench_pool(raw_port, args.seconds, args.workers)
                hello = await bench_hypercorn(hyper_port)
                return admission, refused, mirrors, hello

            result: Result = runner(run())  # type: ignore[assignment]
            (no_body, body, with_pause), (dropped, failed, paused), (mirrors, mirror_cpu), hello = (
                result
            )
        finally:
            for proc in (raw, hyper):
                proc.terminate()
                proc.wait()
    print(f"event loop: {loop_name}, cpus: {os.cpu_count()}")
    print(f"tee admission, no body (GET):        {no_body:7.2f} us")
    print(f"tee admission, 256-byte body (POST): {body:7.2f} us")
    print(f"tee admission, no body, pause set:   {with_pause:7.2f} us")
    print(f"tee dropped, pool full (metrics incl.): {dropped:5.2f} us")
    print(f"tee failed, dead canary in back-off:    {failed:5.2f} us")
    print(f"tee dropped, canary paused:             {paused:5.2f} us")
    print(f"mirrors/s, one pool, {args.workers} workers, raw canary: {mirrors:9.0f}")
    print(f"CPU per mirror (this process):               {mirror_cpu:9.1f} us")
    print(f"hypercorn hello-world req/s (32 conns):      {hello:9.0f}")


if __name__ == "__main__":
    main()
