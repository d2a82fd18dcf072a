"""Memory bound under a flood of mirrored 1 MiB uploads to a blackhole canary (issue 7).

Run by hand from the repository root:

    .venv/bin/python bench/bench_memory.py                  # 2000 x 1 MiB, 32 at a time
    .venv/bin/python bench/bench_memory.py --requests 500   # quicker

`sidecar serve` (one process) proxies to a primary that reads and discards the body
(tests/support/primary.py `/sink`, hypercorn, in this process) and mirrors every request
to a blackhole canary that accepts, reads, and never answers. With the canary's
`workers W queue Q max_body 1MiB`, at most W jobs are in flight and Q wait, each holding
one body copy, so the serve process's RSS must stay within

    base + (W + Q) x max_body + 50 MB

where base is the RSS after start-up and a warm-up. RSS is sampled every 50 ms from
/proc/<pid>/status (and the kernel's high-water mark VmHWM is read at the end). Prints the
figures and the outcome counters; exit 1 if the bound is exceeded. All on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.faults import FaultServer  # noqa: E402
from tests.support.primary import PrimaryApp  # noqa: E402
from tests.support.serve import metric, serve_proxy  # noqa: E402
from tests.support.servers import serve_asgi  # noqa: E402

MIB = 1 << 20
SLACK_BYTES = 50 * 1000 * 1000  # the "+ 50 MB"
SAMPLE_INTERVAL_S = 0.05


def rss(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


async def upload(host: str, port: int, body: bytes, n: int) -> int:
    """`n` POSTs of `body` on one keep-alive connection; returns how many got a 200."""
    reader, writer = await asyncio.open_connection(host, port)
    ok = 0
    head = b"POST /sink HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body)
    try:
        for _ in range(n):
            writer.write(head)
            writer.write(body)
            await writer.drain()
            status = await reader.readuntil(b"\r\n\r\n")
            length = int(status.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            ok += status.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
        await writer.wait_closed()
    return ok


async def main(args: argparse.Namespace) -> int:
    body = b"m" * MIB
    async with FaultServer("silent") as blackhole, serve_asgi(PrimaryApp()) as purl:
        rules = (
            f"primary {purl} {{ timeout 60s }}\n"
            f"canary blackhole {{ server {blackhole.url} workers {args.workers} "
            f"queue {args.queue} max_body 1MiB timeout {args.canary_timeout}s }}\n"
            "mirror all { to blackhole }\n"
        )
        tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
        async with serve_proxy(tmp, rules) as proxy:
            host, port = proxy.url.removeprefix("http://").split(":")
            # Warm-up: a few uploads (unmirrored would be nicer, but every request is
            # mirrored here; a handful only fills a few queue slots).
            await upload(host, int(port), body, 4)
            base = rss(proxy.pid)
            bound = base + (args.workers + args.queue) * MIB + SLACK_BYTES
            samples: list[int] = []
            stop = asyncio.Event()

            async def sample() -> None:
                while not stop.is_set():
                    samples.append(rss(proxy.pid))
                    await asyncio.sleep(SAMPLE_INTERVAL_S)

            sampler = asyncio.create_task(sample())
            per_conn = args.requests // args.concurrency
            t0 = time.perf_counter()
            oks = await asyncio.gather(
                *(upload(host, int(port), body, per_conn) for _ in range(args.concurrency))
            )
            elapsed = time.perf_counter() - t0
            stop.set()
            await sampler
            hwm = rss(proxy.pid, "VmHWM")
            text = await proxy.metrics()
    sent = per_conn * args.concurrency
    peak = max(samples)
    print(f"uploads: {sent} x 1 MiB at concurrency {args.concurrency} in {elapsed:.1f} s")
    print(f"primary 200s: {sum(oks)}/{sent}")
    for outcome in ("dispatched", "failed", "dropped_full", "dropped_oversize"):
        n = metric(text, "sidecar_mirror_requests_total", outcome=outcome)
        print(f"  mirror {outcome}: {n:.0f}")
    print(f"canary: workers {args.workers}, queue {args.queue}, max_body 1 MiB")
    print(f"RSS base   {base / MIB:8.1f} MiB")
    print(f"RSS peak   {peak / MIB:8.1f} MiB (sampled every {SAMPLE_INTERVAL_S * 1000:.0f} ms)")
    print(f"VmHWM      {hwm / MIB:8.1f} MiB (kernel high-water mark, includes start-up)")
    print(
        f"bound      {bound / MIB:8.1f} MiB = base + ({args.workers} + {args.queue}) x 1 MiB + 50 MB"
    )
    worst = max(peak, hwm)
    verdict = "within" if worst <= bound else "EXCEEDS"
    print(f"{verdict} the bound (headroom {(bound - worst) / MIB:.1f} MiB)")
    return 0 if worst <= bound and sum(oks) == sent else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=16)
    parser.add_argument("--queue", type=int, default=128)
    parser.add_argument("--canary-timeout", type=float, default=30.0)
    sys.exit(asyncio.run(main(parser.parse_args())))
