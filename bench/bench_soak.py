"""Soak: half of the measured capacity for N minutes, every request mirrored to a slow
canary; the serve process's RSS and open descriptors must stay flat (issue 7).

Run by hand from the repository root (matplotlib for the PNG: pip install '.[bench]'):

    .venv/bin/python bench/bench_soak.py                 # 10 minutes
    .venv/bin/python bench/bench_soak.py --minutes 2     # shortened

Load generator: Debian's wrk 4.1 has no `-R` (rate), so this uses its own bounded
open-loop generator in Python: CONNECTIONS keep-alive raw-socket clients, each sending GETs
on a fixed schedule (rate / CONNECTIONS per second; a client that falls behind skips the
missed slots rather than bursting). First the capacity is measured closed-loop (as fast as
the same clients go, CAPACITY_S seconds, mirroring on); then the soak runs at half of it.

`sidecar serve` proxies to a hypercorn primary (tests/support/primary.py) and mirrors 100%
of requests to a canary that answers after SLOW_CANARY_S (`workers 8 queue 16`: most tees
end as dropped_full, by design). RSS (/proc/<pid>/status) and open descriptors
(/proc/<pid>/fd) are sampled every SAMPLE_S seconds. After the warm-up (the first
WARMUP_FRACTION of the run) both must stay within 5% of their median; the descriptors
are judged without the primary pool's sockets, which legitimately follow the load's
momentary concurrency (idle ones are closed by the primary's keep-alive timeout). Writes
bench/out/soak.csv and bench/out/soak.png; prints the figures; exit 1 when not flat or
when any request failed. Everything on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support.faults import census  # noqa: E402
from tests.support.primary import PrimaryApp  # noqa: E402
from tests.support.serve import metric, serve_proxy  # noqa: E402
from tests.support.servers import RecordingCanary, serve_asgi  # noqa: E402

OUT = ROOT / "bench" / "out"
CONNECTIONS = 16
CAPACITY_S = 5.0
SAMPLE_S = 2.0
SLOW_CANARY_S = 0.5
WARMUP_FRACTION = 0.2
FLAT_TOLERANCE = 0.05
REQUEST = b"GET /soak HTTP/1.1\r\nHost: x\r\n\r\n"


class Client:
    """One keep-alive connection; counts its 200s and its failures."""

    def __init__(self) -> None:
        self.ok = 0
        self.errors = 0

    async def run(self, host: str, port: int, until: float, interval: float | None) -> None:
        loop = asyncio.get_running_loop()
        reader, writer = await asyncio.open_connection(host, port)
        try:
            next_at = loop.time()
            while loop.time() < until:  # bounded by the deadline
                if interval is not None:
                    now = loop.time()
                    if next_at > now:
                        await asyncio.sleep(next_at - now)  # the schedule (the load's rate)
                    next_at = max(next_at + interval, loop.time() - interval)
                writer.write(REQUEST)
                head = await reader.readuntil(b"\r\n\r\n")
                lower = head.lower()
                length = int(lower.split(b"content-length:")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                if head.startswith(b"HTTP/1.1 200"):
                    self.ok += 1
                else:
                    self.errors += 1
                if b"\r\nconnection: close\r\n" in lower:
                    # The server's keep-alive request limit: reconnect, as any client does.
                    writer.close()
                    await writer.wait_closed()
                    reader, writer = await asyncio.open_connection(host, port)
        finally:
            writer.close()
            await writer.wait_closed()


async def drive(host: str, port: int, seconds: float, rate: float | None) -> list[Client]:
    clients = [Client() for _ in range(CONNECTIONS)]
    until = asyncio.get_running_loop().time() + seconds
    interval = None if rate is None else CONNECTIONS / rate
    await asyncio.gather(*(c.run(host, port, until, interval) for c in clients))
    return clients


def rss_and_fds(pid: int, primary_port: int) -> tuple[int, int, int]:
    """RSS, open fds, and how many of those are the primary pool's sockets (which follow
    the load's concurrency: the pool opens and idles out connections as it should)."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    c = census(pid)
    return rss, c.total, len(c.to_port(primary_port))


def flat(values: list[int]) -> tuple[bool, float]:
    """Within FLAT_TOLERANCE of the median; returns (ok, the largest relative deviation)."""
    med = statistics.median(values)
    worst = max(abs(v - med) / med for v in values)
    return worst <= FLAT_TOLERANCE, worst


def plot(rows: list[tuple[float, int, int, int, int]], warmup_s: float, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    t = [r[0] for r in rows]
    fig, ax1 = plt.subplots(figsize=(9, 4.5))
    ax1.plot(t, [r[1] / (1 << 20) for r in rows], color="tab:blue", label="RSS (MiB)")
    ax1.set_xlabel("seconds")
    ax1.set_ylabel("RSS (MiB)", color="tab:blue")
    ax1.set_ylim(bottom=0)
    ax2 = ax1.twinx()
    ax2.plot(t, [r[2] for r in rows], color="tab:orange", label="open fds")
    ax2.plot(t, [r[2] - r[3] for r in rows], color="tab:red", label="fds w/o primary pool")
    ax2.legend(loc="lower right")
    ax2.set_ylabel("open fds", color="tab:orange")
    ax2.set_ylim(bottom=0)
    ax1.axvline(warmup_s, color="grey", linestyle="--", linewidth=1)
    ax1.set_title("sidecar serve soak: 100% mirrored to a slow canary")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


async def main(args: argparse.Namespace) -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    async with (
        RecordingCanary("delay", delay_s=SLOW_CANARY_S) as canary,
        serve_asgi(PrimaryApp()) as purl,
    ):
        rules = (
            f"primary {purl} {{ timeout 10s }}\n"
            f"canary slow {{ server {canary.url} workers 8 queue 16 timeout 2s }}\n"
            "mirror all { to slow }\n"
        )
        tmp = Path(tempfile.mkdtemp(prefix="bench-soak-"))
        async with serve_proxy(tmp, rules) as proxy:
            host, port_text = proxy.url.removeprefix("http://").split(":")
            port = int(port_text)
            primary_port = int(purl.rsplit(":", 1)[1])
            clients = await drive(host, port, CAPACITY_S, None)
            capacity = sum(c.ok for c in clients) / CAPACITY_S
            rate = capacity / 2
            print(f"capacity (closed loop, {CONNECTIONS} connections): {capacity:.0f} req/s")
            print(f"soak: {args.minutes:g} min at {rate:.0f} req/s, 100% mirrored")
            duration = args.minutes * 60
            rows: list[tuple[float, int, int, int, int]] = []
            stop = asyncio.Event()
            t0 = time.monotonic()

            async def sample() -> None:
                while not stop.is_set():
                    rss, fds, pool = rss_and_fds(proxy.pid, primary_port)
                    rows.append((time.monotonic() - t0, rss, fds, pool, len(canary.requests)))
                    canary.requests.clear()  # the recorder's own memory, not the proxy's
                    try:
                        async with asyncio.timeout(SAMPLE_S):
                            await stop.wait()
                    except TimeoutError:
                        pass

            sampler = asyncio.create_task(sample())
            clients = await drive(host, port, duration, rate)
            stop.set()
            await sampler
            text = await proxy.metrics()
    ok = sum(c.ok for c in clients)
    errors = sum(c.errors for c in clients)
    warmup_s = duration * WARMUP_FRACTION
    steady = [r for r in rows if r[0] >= warmup_s]
    rss_ok, rss_dev = flat([r[1] for r in steady])
    fds_ok, fds_dev = flat([r[2] - r[3] for r in steady])
    with (OUT / "soak.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["seconds", "rss_bytes", "open_fds", "primary_pool_sockets", "canary_requests"])
        w.writerows((f"{r[0]:.1f}", *r[1:]) for r in rows)
    png = plot(rows, warmup_s, OUT / "soak.png")
    print(f"requests: {ok} ok, {errors} errors ({ok / duration:.0f} req/s achieved)")
    for outcome in ("dispatched", "completed", "failed", "dropped_full"):
        n = metric(text, "sidecar_mirror_requests_total", outcome=outcome)
        print(f"  mirror {outcome}: {n:.0f}")
    mib = 1 << 20
    print(
        f"RSS after warm-up ({len(steady)} samples): min {min(r[1] for r in steady) / mib:.1f} "
        f"max {max(r[1] for r in steady) / mib:.1f} MiB, max deviation from median "
        f"{rss_dev:.1%} -> {'flat' if rss_ok else 'NOT flat'}"
    )
    print(
        f"open fds after warm-up: total min {min(r[2] for r in steady)} max "
        f"{max(r[2] for r in steady)} (primary pool sockets {min(r[3] for r in steady)}.."
        f"{max(r[3] for r in steady)}); without the primary pool: min "
        f"{min(r[2] - r[3] for r in steady)} max {max(r[2] - r[3] for r in steady)}, max "
        f"deviation {fds_dev:.1%} -> {'flat' if fds_ok else 'NOT flat'}"
    )
    print(f"wrote {OUT / 'soak.csv'}" + (f" and {OUT / 'soak.png'}" if png else " (no matplotlib)"))
    return 0 if rss_ok and fds_ok and errors == 0 else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    sys.exit(asyncio.run(main(parser.parse_args())))
