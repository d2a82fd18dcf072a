"""`sidecar demo`: a whole shadowing setup on loopback, with sample traffic and a live view.

How this works
--------------
Everything runs in one process and one event loop. The demo binds five loopback sockets on
free ports (the demo primary, canaries v2 and v3, the proxy and its admin listener), fills
those addresses into the rules embedded in the package (`sidecar/demo_rules/demo.mirror`,
so it works from an installed wheel in any directory; `--print-rules` prints them as used),
validates them exactly as `serve` does, and starts the same pieces `serve` runs: a
`Runtime` (routing table, primary client, one `CanaryPool` per canary), `ProxyApp` and
`AdminApp`, each on its own `hypercorn.asyncio.serve` task, next to the three demo apps.

A traffic generator (httpx) then sends a mix of reads, JSON orders, large imports and admin
calls at a fixed rate (`--rate`, open loop, at most MAX_IN_FLIGHT at once) for `--duration`
seconds. The view reads the pools' counters (`CanaryPool.stats()`), the canaries' latency
from the `sidecar_mirror_duration_seconds` histogram (a p50 estimated as Prometheus's
`histogram_quantile` would) and the primary's latency as the generator measured it
through the proxy. After the traffic, the pools drain (each for at most its `timeout`; a
job still unfinished ends as `failed`), so the final counts add up per canary:
dispatched == completed + failed + panicked; drops are counted apart.

On a terminal the view is a rich live table; otherwise (a pipe, CI) a plain line every
PLAIN_INTERVAL_S. `--format json` prints the summary as one JSON document on stdout (the
progress goes to stderr). Ctrl-C stops the traffic early, settles, prints the summary and
exits 130; a second Ctrl-C abandons the settling.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from string import Template
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from sidecar.asgi import ASGIApp
    from sidecar.runtime import Runtime

DEFAULT_DURATION_S = 20.0
# Requests per second: enough to fill v3's queue and rate limit, light on a laptop.
DEFAULT_RATE = 40.0
# Concurrent generator requests; past it a tick is skipped (counted) instead of piling up.
MAX_IN_FLIGHT = 32
# The generator's own deadline per request: above the demo primary's 5 s timeout.
CLIENT_TIMEOUT_S = 10.0
# Latency samples kept for the primary's percentiles (~40 minutes at the default rate).
MAX_LATENCY_SAMPLES = 100_000
LIVE_REFRESH_PER_S = 4
PLAIN_INTERVAL_S = 2.0
# Extra settle time beyond a canary's own timeout (its deadline covers queue + round trip).
SETTLE_SLACK_S = 0.5
# Grace for the demo apps' in-flight requests at the end (v3's stalls are not waited for).
APP_GRACE_S = 0.5
EXIT_INTERRUPTED = 130

RULES_PACKAGE = "sidecar.demo_rules"
RULES_FILE = "demo.mirror"
DROPS = ("dropped_full", "dropped_oversize", "dropped_rate", "dropped_aborted")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--duration",
        type=float,
        default=DEFAULT_DURATION_S,
        metavar="SECONDS",
        help=f"how long to send traffic (default {DEFAULT_DURATION_S:g})",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=DEFAULT_RATE,
        metavar="N",
        help=f"requests per second (default {DEFAULT_RATE:g})",
    )
    parser.add_argument("--seed", type=int, default=None, help="seed the traffic mix and faults")
    parser.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="summary as text, or as one JSON document on stdout (progress on stderr)",
    )
    parser.add_argument(
        "--print-rules",
        action="store_true",
        help="print the demo's rules with this run's addresses and exit",
    )


def run(args: argparse.Namespace) -> int:
    if args.duration < 0 or args.rate <= 0:
        print("sidecar demo: --duration must be >= 0 and --rate > 0", file=sys.stderr)
        return 2
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(_demo(args))


# --- the rules --------------------------------------------------------------------------------


def rules_template() -> str:
    from importlib.resources import files

    return files(RULES_PACKAGE).joinpath(RULES_FILE).read_text(encoding="utf-8")


def render_rules(addresses: Mapping[str, str]) -> str:
    """The demo rules with `listen`, `admin`, `primary`, `v2` and `v3` as host:port."""
    return Template(rules_template()).substitute(addresses)


# --- the run ----------------------------------------------------------------------------------


async def _demo(args: argparse.Namespace) -> int:
    from hypercorn.asyncio import serve

    from sidecar import diagnostics
    from sidecar.admin import AdminApp
    from sidecar.demo_apps import PROFILES, DemoApp
    from sidecar.dsl import loads
    from sidecar.proxy import ProxyApp
    from sidecar.runtime import Runtime
    from sidecar.server import _hypercorn_config, address_of, bind

    names = ("primary", "v2", "v3", "listen", "admin")
    socks = {name: bind("127.0.0.1:0", reuse_port=False) for name in names}
    addresses = {name: address_of(sock) for name, sock in socks.items()}
    text = render_rules(addresses)
    if args.print_rules:
        for sock in socks.values():
            sock.close()
        print("# sidecar demo rules (the ports are chosen afresh on every run)")
        print(text, end="")
        return 0
    result = loads(text, f"<demo>/{RULES_FILE}")
    if result.config is None:  # a packaging bug: show it as check would
        print(diagnostics.render_all(result.diagnostics, result.sources), file=sys.stderr)
        return 1

    out: TextIO = sys.stderr if args.format == "json" else sys.stdout
    view = View(out, duration=args.duration)
    apps = {name: DemoApp(PROFILES[name], seed=args.seed) for name in ("primary", "v2", "v3")}
    runtime = Runtime(result.config, files=1, paths=(f"<demo>/{RULES_FILE}",))
    await runtime.start()
    stop_servers = asyncio.Event()

    def serve_on(name: str, app: ASGIApp, *, proxy: bool = False) -> asyncio.Task[None]:
        cfg = _hypercorn_config(socks[name], grace_s=APP_GRACE_S, proxy=proxy)
        hyper_app: Any = app  # hypercorn's own ASGI types are narrower than sidecar.asgi's
        return asyncio.create_task(serve(hyper_app, cfg, shutdown_trigger=stop_servers.wait))

    tasks = [serve_on(name, app) for name, app in apps.items()]
    tasks.append(serve_on("admin", AdminApp(runtime)))
    tasks.append(serve_on("listen", ProxyApp(runtime), proxy=True))
    runtime.ready = True  # the sockets listened before serve() began

    traffic = Traffic(f"http://{addresses['listen']}", rate=args.rate, seed=args.seed)
    stop = asyncio.Event()
    interrupted = _on_interrupt(stop)
    view.header(addresses, args.rate)
    started = time.monotonic()

    def sample() -> dict[str, Any]:
        return summarize(runtime, traffic, apps, elapsed=time.monotonic() - started)

    try:
        async with view.live(sample):
            await traffic.run(stop, args.duration)
            view.phase = "settling"
            await _settle(runtime)
        doc = sample()
        doc["interrupted"] = interrupted()
    finally:
        # Clients first (so no connection handler outlives its server), then the servers.
        await runtime.close()
        for app in apps.values():
            app.close()
        stop_servers.set()
        await asyncio.gather(*tasks, return_exceptions=True)
    view.summary(doc)
    if args.format == "json":
        print(json.dumps(doc, indent=2))
    return EXIT_INTERRUPTED if doc["interrupted"] else 0


def _on_interrupt(stop: asyncio.Event) -> Callable[[], bool]:
    """First Ctrl-C: stop the traffic and settle; a second one: KeyboardInterrupt (exit 130)."""
    loop = asyncio.get_running_loop()
    state = {"interrupted": False}

    def handler() -> None:
        state["interrupted"] = True
        stop.set()
        loop.remove_signal_handler(signal.SIGINT)

    with contextlib.suppress(NotImplementedError, RuntimeError):  # not on Windows' loop
        loop.add_signal_handler(signal.SIGINT, handler)
    return lambda: state["interrupted"]


async def _settle(runtime: Runtime) -> None:
    """Let every pool finish its jobs (each within its timeout); unfinished ones end failed."""
    pools = list(runtime.current.canary_pools.values())
    await asyncio.gather(*(p.aclose(drain=p.spec.timeout_s + SETTLE_SLACK_S) for p in pools))


# --- traffic ----------------------------------------------------------------------------------


class Traffic:
    """An open-loop generator: one request every 1/rate s, at most MAX_IN_FLIGHT at once."""

    def __init__(self, base_url: str, *, rate: float, seed: int | None) -> None:
        import random

        self.base_url = base_url
        self.interval_s = 1.0 / rate
        self._random = random.Random(seed)
        self.sent = 0
        self.skipped = 0  # ticks with MAX_IN_FLIGHT requests still out
        self.errors = 0  # no response at all (connection trouble, client timeout)
        self.codes: dict[str, int] = {}
        self.latencies_s: deque[float] = deque(maxlen=MAX_LATENCY_SAMPLES)

    async def run(self, stop: asyncio.Event, duration_s: float) -> None:
        import httpx

        limits = httpx.Limits(
            max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT
        )
        loop = asyncio.get_running_loop()
        end = loop.time() + duration_s
        in_flight: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(
            base_url=self.base_url, timeout=CLIENT_TIMEOUT_S, limits=limits
        ) as client:
            next_at = loop.time()
            while not stop.is_set() and next_at < end:
                if len(in_flight) < MAX_IN_FLIGHT:
                    task = asyncio.create_task(self._one(client))
                    in_flight.add(task)
                    task.add_done_callback(in_flight.discard)
                else:
                    self.skipped += 1
                next_at += self.interval_s
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.0, next_at - loop.time())):
                        await stop.wait()
            if stop.is_set():  # interrupted: what is still out is abandoned
                for task in in_flight:
                    task.cancel()
            await asyncio.gather(*in_flight, return_exceptions=True)

    def next_request(self) -> tuple[str, str, dict[str, str], bytes | None]:
        """(method, path, headers, body): the demo's traffic mix."""
        r = self._random
        user = {"X-User-Id": f"user-{r.randint(1, 40)}"}
        draw = r.random()
        if draw < 0.45:
            return "GET", f"/api/items?page={r.randint(1, 10)}", user, None
        if draw < 0.65:
            return "GET", f"/api/items/{r.randint(1, 120)}", user, None
        if draw < 0.87:
            order = json.dumps({"item": r.randint(1, 100), "qty": r.randint(1, 5)}).encode()
            return "POST", "/api/orders", {**user, "Content-Type": "application/json"}, order
        if draw < 0.92:  # a bulk import, larger than the canaries' max_body: dropped_oversize
            return "POST", "/api/orders/import", user, b"x" * (200 * 1024)
        return "GET", "/admin/stats", {"Authorization": "Bearer demo"}, None

    async def _one(self, client: Any) -> None:
        import httpx

        method, path, headers, body = self.next_request()
        self.sent += 1
        started = time.perf_counter()
        try:
            resp = await client.request(method, path, headers=headers, content=body)
        except httpx.HTTPError:
            self.errors += 1
            return
        self.latencies_s.append(time.perf_counter() - started)
        code = f"{resp.status_code // 100}xx"
        self.codes[code] = self.codes.get(code, 0) + 1


# --- numbers ----------------------------------------------------------------------------------


def summarize(
    runtime: Runtime, traffic: Traffic, apps: Mapping[str, Any], *, elapsed: float
) -> dict[str, Any]:
    """Everything the view and the JSON summary show, as plain data."""
    lat = sorted(traffic.latencies_s)
    primary = {
        "requests": traffic.sent,
        "responses": dict(sorted(traffic.codes.items())),
        "errors": traffic.errors,
        "skipped": traffic.skipped,
        "served": apps["primary"].requests,
        "p50_ms": _ms(_percentile(lat, 0.50)),
        "p99_ms": _ms(_percentile(lat, 0.99)),
    }
    canaries: dict[str, Any] = {}
    for name, pool in runtime.current.canary_pools.items():
        stats = pool.stats()._asdict()
        stats["in_flight"] = (
            stats["dispatched"] - stats["completed"] - stats["failed"] - stats["panicked"]
        )
        stats["dropped"] = sum(stats[d] for d in DROPS)
        stats["p50_ms"] = _ms(canary_quantile(name, 0.5))
        stats["responses"] = canary_responses(name)
        stats["served"] = apps[name].requests if name in apps else None
        canaries[name] = stats
    return {"elapsed_s": round(elapsed, 2), "primary": primary, "canaries": canaries}


def canary_quantile(canary: str, q: float) -> float | None:
    """`histogram_quantile(q, sidecar_mirror_duration_seconds{canary=...})` in seconds."""
    from sidecar import prom

    buckets: list[tuple[float, float]] = []
    for metric in prom.metrics().mirror_duration.collect():
        for s in metric.samples:
            if s.name.endswith("_bucket") and s.labels.get("canary") == canary:
                buckets.append((float(s.labels["le"]), s.value))
    return histogram_quantile(q, buckets)


def canary_responses(canary: str) -> dict[str, int]:
    """`sidecar_mirror_responses_total{canary=...}` by status class (completed round trips)."""
    from sidecar import prom

    codes: dict[str, int] = {}
    for metric in prom.metrics().mirror_responses.collect():
        for s in metric.samples:
            if s.name.endswith("_total") and s.labels.get("canary") == canary:
                codes[s.labels["code"]] = int(s.value)
    return dict(sorted(codes.items()))


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """Prometheus's estimate from cumulative (upper bound, count) buckets; None when empty."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for upper, count in ordered:
        if count >= rank:
            if upper == float("inf"):
                return lower
            if count == below:
                return upper
            return lower + (upper - lower) * (rank - below) / (count - below)
        lower, below = upper, count
    return lower


def _percentile(ordered: Sequence[float], q: float) -> float | None:
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


# --- the view ---------------------------------------------------------------------------------


class View:
    """A rich live table on a terminal, plain periodic lines elsewhere."""

    def __init__(self, out: TextIO, *, duration: float) -> None:
        from rich.console import Console

        self.out = out
        self.console = Console(file=out, highlight=False)
        self.tty = self.console.is_terminal
        self.duration = duration
        self.phase = "traffic"

    def header(self, addresses: Mapping[str, str], rate: float) -> None:
        a = addresses
        self._line(
            f"sidecar demo: proxy http://{a['listen']} -> primary http://{a['primary']}; "
            f"canaries v2 http://{a['v2']} (healthy), v3 http://{a['v3']} (slow, failing); "
            f"admin http://{a['admin']}/metrics; {rate:g} req/s for {self.duration:g} s"
            + (" (Ctrl-C stops early)" if self.tty else "")
        )

    @contextlib.asynccontextmanager
    async def live(self, sample: Callable[[], dict[str, Any]]) -> Any:
        """Refresh the view from `sample()` while the body runs."""
        if self.tty:
            from rich.live import Live

            with Live(
                self._tables(sample()),
                console=self.console,
                refresh_per_second=LIVE_REFRESH_PER_S,
                transient=True,
            ) as live:
                task = asyncio.create_task(
                    self._tick(1 / LIVE_REFRESH_PER_S, lambda: live.update(self._tables(sample())))
                )
                try:
                    yield
                finally:
                    task.cancel()
            return
        task = asyncio.create_task(
            self._tick(PLAIN_INTERVAL_S, lambda: self._line(plain_progress(sample(), self.phase)))
        )
        try:
            yield
        finally:
            task.cancel()

    async def _tick(self, interval_s: float, show: Callable[[], None]) -> None:
        while True:
            await asyncio.sleep(interval_s)
            show()

    def summary(self, doc: dict[str, Any]) -> None:
        if self.tty:
            self.console.print(self._tables(doc, final=True))
        else:
            for line in plain_summary(doc):
                self._line(line)

    def _line(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def _tables(self, doc: dict[str, Any], *, final: bool = False) -> Any:
        from rich import box
        from rich.console import Group
        from rich.table import Table

        title = (
            f"summary after {doc['elapsed_s']:.1f} s"
            + (" (interrupted)" if doc.get("interrupted") else "")
            if final
            else f"{self.phase}: {doc['elapsed_s']:.1f} s of {self.duration:g} s"
        )
        p = doc["primary"]
        prim = Table(
            title=f"sidecar demo - {title}",
            title_justify="left",
            box=box.SIMPLE_HEAD,
            pad_edge=False,
        )
        for col in ("primary", "requests", "responses", "errors", "p50", "p99"):
            left = col in ("primary", "responses")
            prim.add_column(col, justify="left" if left else "right", no_wrap=True)
        codes = " ".join(f"{k} {v}" for k, v in p["responses"].items()) or "-"
        prim.add_row(
            "via proxy",
            str(p["requests"]),
            codes,
            str(p["errors"]),
            _fmt_ms(p["p50_ms"]),
            _fmt_ms(p["p99_ms"]),
        )
        notes = []
        for name, c in doc["canaries"].items():
            why = ", ".join(f"{d.removeprefix('dropped_')} {c[d]}" for d in DROPS if c[d])
            codes = " ".join(f"{k} {v}" for k, v in c["responses"].items())
            notes.append(f"{name}: responses {codes or '-'}; dropped {why or '-'}")
        can = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        cols = ("canary", "dispatched", "completed", "failed", "panicked", "in flight")
        for col in (*cols, "dropped", "p50"):
            can.add_column(col, justify="left" if col == "canary" else "right", no_wrap=True)
        for name, c in doc["canaries"].items():
            can.add_row(
                name,
                *(str(c[k.replace(" ", "_")]) for k in cols[1:]),
                str(c["dropped"]),
                _fmt_ms(c["p50_ms"]),
            )
        parts: list[Any] = [prim, can, *notes]
        if final:
            parts.append(_verdict(doc))
        return Group(*parts)


def plain_progress(doc: dict[str, Any], phase: str) -> str:
    p = doc["primary"]
    parts = [
        f"[{doc['elapsed_s']:6.1f}s {phase}] primary {p['requests']} req p50 {_fmt_ms(p['p50_ms'])}"
    ]
    for name, c in doc["canaries"].items():
        parts.append(
            f"{name} dispatched {c['dispatched']} completed {c['completed']} failed {c['failed']} "
            f"dropped {c['dropped']} p50 {_fmt_ms(c['p50_ms'])}"
        )
    return " | ".join(parts)


def plain_summary(doc: dict[str, Any]) -> list[str]:
    """The final lines: one for the primary and one `canary NAME: key=value ...` per canary."""
    p = doc["primary"]
    codes = " ".join(f"{k}={v}" for k, v in p["responses"].items())
    lines = [
        f"summary: elapsed_s={doc['elapsed_s']} interrupted={'yes' if doc.get('interrupted') else 'no'}",
        f"primary: requests={p['requests']} {codes} errors={p['errors']} "
        f"p50_ms={p['p50_ms']} p99_ms={p['p99_ms']}".replace("  ", " "),
    ]
    keys = ("dispatched", "completed", "failed", "panicked", *DROPS)
    for name, c in doc["canaries"].items():
        fields = " ".join(f"{k}={c[k]}" for k in keys)
        lines.append(f"canary {name}: {fields} p50_ms={c['p50_ms']}")
    lines.append(_verdict(doc))
    return lines


def _verdict(doc: dict[str, Any]) -> str:
    settled = all(c["in_flight"] == 0 for c in doc["canaries"].values())
    check = "add up" if settled else "DO NOT add up (a bug: please report it)"
    return (
        f"per canary, dispatched = completed + failed + panicked: the counts {check}; "
        f"the primary's p50 stayed {_fmt_ms(doc['primary']['p50_ms'])} whatever the canaries did."
    )


def _fmt_ms(ms: float | None) -> str:
    return "-" if ms is None else f"{ms:.1f} ms"
