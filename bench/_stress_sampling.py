"""Sampling for bench_stress.py: the serve process's descriptors, RSS, CPU and listen-port
sockets over time, what the clients saw, the printed table, the trends and the plot.

Descriptors come from /proc/PID/fd (tests/support/faults.py `census`, which also resolves
the process's own TCP sockets, e.g. its primary pool); the CLOSE-WAIT and ESTABLISHED
counts are the kernel's, over every socket whose local port is the listen port
(/proc/net/tcp{,6}), so connections not yet accepted (no inode: `backlog`) count too.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import _stress_clients as clients
from bench_proxy import cpu_seconds

from tests.support.faults import census
from tests.support.serve import ServeProcess

HOST = "127.0.0.1"
HEALTHZ_TIMEOUT_S = 2.0
MIN_CPU_SPAN_S = 0.5  # a shorter interval's CPU share is mostly rounding (clock ticks)


# --- sampling --------------------------------------------------------------------------------


class ServeExited(Exception):
    """The serve process is gone in the middle of the run (its exit status)."""


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since the load started
    phase: str  # "load" or "settle"
    fds: int
    rss_bytes: int
    cpu_pct: float  # of one core, over the interval before this sample
    close_wait: int  # sockets on the listen port in CLOSE-WAIT (kernel-wide)
    established: int  # ... ESTABLISHED, accepted or not
    backlog: int  # ... ESTABLISHED and not yet accepted (no inode)
    admin_close_wait: int  # sockets on the admin port in CLOSE-WAIT (this script's /healthz)
    primary_pool: int  # the serve process's sockets to the primary
    healthz: int | str  # the admin /healthz status, or the error's kind
    ok: int  # observed by the Python clients, cumulative over all kinds (wrk apart)
    errors: int
    status_5xx: int
    reloads: int
    wrk_running: bool
    load1: float


TCP_CLOSE_WAIT, TCP_ESTABLISHED = "08", "01"


def listen_port_states(port: int) -> tuple[int, int, int]:
    """(CLOSE-WAIT, ESTABLISHED, ESTABLISHED not yet accepted) among the kernel's TCP
    sockets whose local port is `port`."""
    close_wait = established = backlog = 0
    for proto in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{proto}").read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            parts = line.split()
            if int(parts[1].rsplit(":", 1)[1], 16) != port:
                continue
            if parts[3] == TCP_CLOSE_WAIT:
                close_wait += 1
            elif parts[3] == TCP_ESTABLISHED:
                established += 1
                backlog += parts[9] == "0"
    return close_wait, established, backlog


def rss(pid: int) -> int:
    """VmRSS in bytes (/proc/PID/status); RuntimeError for a zombie, which has none."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"VmRSS not in /proc/{pid}/status")


def nofile_limit(pid: int) -> int | None:
    """The process's soft RLIMIT_NOFILE (/proc/PID/limits), None when unlimited."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft = line.split()[3]
            return None if soft == "unlimited" else int(soft)
    return None


KINDS = ("one-shot", "keep-alive", "early 413", "aborted upload", "aborted download")


@dataclass(slots=True)
class Load:
    """Everything the clients and the background jobs observed so far."""

    tallies: dict[str, clients.Tally]
    reloads: int = 0
    reloads_edited: int = 0
    wrk_runs: int = 0
    wrk_requests: int = 0
    wrk_errors: int = 0  # socket errors and non-2xx/3xx, as wrk reports them
    wrk_running: bool = False

    def totals(self) -> tuple[int, int, int]:
        """The Python clients' ok, errors (and other unexpected answers), 5xx; wrk's own
        figures arrive only when each of its runs ends, so they are kept apart."""
        ts = self.tallies.values()
        return (
            sum(t.ok for t in ts),
            sum(t.error_total() + t.unexpected for t in ts),
            sum(t.status_5xx for t in ts),
        )


class Sampler:
    """Takes, keeps and prints the samples of one serve process."""

    def __init__(self, served: ServeProcess, primary_port: int, load: Load) -> None:
        self.served = served
        self.listen_port = int(served.url.rsplit(":", 1)[1])
        self.admin_port = int(served.admin_url.rsplit(":", 1)[1])
        self.primary_port = primary_port
        self.load = load
        self.samples: list[Sample] = []
        self._t0 = time.monotonic()
        self._cpu = (self._t0, cpu_seconds([served.pid]))

    def start_clock(self) -> None:
        self._t0 = time.monotonic()
        self._cpu = (self._t0, cpu_seconds([self.served.pid]))

    async def take(self, phase: str) -> Sample:
        pid = self.served.pid
        if self.served.proc.poll() is not None:
            raise ServeExited(self.served.proc.returncode)
        healthz = await clients.get_status(HOST, self.admin_port, "/healthz", HEALTHZ_TIMEOUT_S)
        now, cpu = time.monotonic(), cpu_seconds([pid])
        span = now - self._cpu[0]
        # (the first sample comes right after start_clock(): no interval to speak of)
        cpu_pct = 100 * (cpu - self._cpu[1]) / span if span >= MIN_CPU_SPAN_S else 0.0
        self._cpu = (now, cpu)
        try:
            fds, rss_bytes = census(pid), rss(pid)
        except (OSError, RuntimeError):  # /proc/PID gone, or a zombie's without VmRSS
            if self.served.proc.poll() is not None:
                raise ServeExited(self.served.proc.returncode) from None
            raise
        close_wait, established, backlog = listen_port_states(self.listen_port)
        ok, errors, s5xx = self.load.totals()
        sample = Sample(
            t=now - self._t0,
            phase=phase,
            fds=fds.total,
            rss_bytes=rss_bytes,
            cpu_pct=cpu_pct,
            close_wait=close_wait,
            established=established,
            backlog=backlog,
            admin_close_wait=listen_port_states(self.admin_port)[0],
            primary_pool=len(fds.to_port(self.primary_port)),
            healthz=healthz,
            ok=ok,
            errors=errors,
            status_5xx=s5xx,
            reloads=self.load.reloads,
            wrk_running=self.load.wrk_running,
            load1=os.getloadavg()[0],
        )
        self.samples.append(sample)
        print_row(sample, self.samples[-2] if len(self.samples) > 1 else None)
        return sample

    async def every(self, interval: float, until: float, phase: str) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time() + interval
        while next_at <= until + 0.01:  # bounded by the deadline
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            next_at += interval
            await self.take(phase)


HEADER = (
    f"{'t s':>6} {'phase':>6} {'fds':>5} {'RSS MiB':>8} {'CPU %':>6} {'CLOSE-WAIT':>10} "
    f"{'ESTAB':>6} {'backlog':>7} {'adm CW':>6} {'pool':>5} {'healthz':>8} {'ok/s':>6} "
    f"{'err':>5} {'5xx':>5} "
    f"{'reloads':>7} {'wrk':>3} {'load1':>5}"
)


def print_row(s: Sample, prev: Sample | None) -> None:
    dt = s.t - prev.t if prev else 0.0
    ok_s = (s.ok - prev.ok) / dt if prev and dt > 0 else 0.0
    err = s.errors - prev.errors if prev else s.errors
    s5xx = s.status_5xx - prev.status_5xx if prev else s.status_5xx
    print(
        f"{s.t:6.0f} {s.phase:>6} {s.fds:5d} {s.rss_bytes / (1 << 20):8.1f} {s.cpu_pct:6.0f} "
        f"{s.close_wait:10d} {s.established:6d} {s.backlog:7d} {s.admin_close_wait:6d} "
        f"{s.primary_pool:5d} "
        f"{s.healthz!s:>8} {ok_s:6.0f} {err:5d} {s5xx:5d} {s.reloads:7d} "
        f"{'yes' if s.wrk_running else '':>3} {s.load1:5.2f}",
        flush=True,
    )


# --- trends and the plot ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trend:
    start: float
    middle: float
    end: float
    slope_per_min: float  # least squares over the samples after the warm-up
    growth: float  # slope x the span of those samples
    median: float


def trend(
    samples: list[Sample], value: Callable[[Sample], float], seconds: float, warmup_s: float
) -> Trend:
    """Start, middle and end of the load; the slope over the samples after `warmup_s`."""
    load = [s for s in samples if s.phase == "load"]
    steady = [s for s in load if s.t >= warmup_s] or load
    middle = min(load, key=lambda s: abs(s.t - seconds / 2))
    slope = 0.0
    if len(steady) >= 2 and steady[-1].t > steady[0].t:
        slope = statistics.linear_regression([s.t for s in steady], [value(s) for s in steady])[0]
    return Trend(
        start=value(load[0]),
        middle=value(middle),
        end=value(load[-1]),
        slope_per_min=slope * 60,
        growth=slope * (steady[-1].t - steady[0].t),
        median=statistics.median(value(s) for s in steady),
    )


def plot(samples: list[Sample], baseline: dict[str, Any] | None, label: str, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    runs: list[tuple[str, list[dict[str, Any]], str]] = [(label, [asdict(s) for s in samples], "-")]
    if baseline is not None:
        runs.insert(0, (str(baseline.get("label", "baseline")), baseline["samples"], "--"))
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for name, rows, style in runs:
        t = [r["t"] for r in rows]
        ax1.plot(t, [r["fds"] for r in rows], style, color="tab:orange", label=f"open fds ({name})")
        ax1.plot(
            t, [r["close_wait"] for r in rows], style, color="tab:red", label=f"CLOSE-WAIT ({name})"
        )
        ax1.plot(
            t,
            [r["primary_pool"] for r in rows],
            style,
            color="tab:green",
            linewidth=0.8,
            label=f"primary pool ({name})",
        )
        ax2.plot(
            t,
            [r["rss_bytes"] / (1 << 20) for r in rows],
            style,
            color="tab:blue",
            label=f"RSS ({name})",
        )
    load_end = max(s.t for s in samples if s.phase == "load")
    for ax in (ax1, ax2):
        ax.axvline(load_end, color="grey", linestyle=":", linewidth=1)
    ax1.set_ylabel("sockets / descriptors")
    ax1.set_ylim(bottom=0)
    ax1.legend(loc="upper left", fontsize="small")
    ax2.set_ylabel("RSS (MiB)")
    ax2.set_ylim(bottom=0)
    ax2.set_xlabel("seconds (the load, then idle)")
    ax2.legend(loc="lower right", fontsize="small")
    ax1.set_title("sidecar serve under the stress mix")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
