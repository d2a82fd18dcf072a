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
PLAIN_INTERVAL_S (sidecar/demo_view.py). `--format json` prints the summary as one JSON document on stdout (the
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
from collections.abc import Callable, Mapping
from string import Template
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from sidecar.asgi import ASGIApp
    from sidecar.serve.runtime import Runtime

DEFAULT_DURATION_S = 20.0
# Requests per second: enough to fill v3's queue and rate limit, light on a laptop.
DEFAULT_RATE = 40.0
# Concurrent generator requests; past it a tick is skipped (counted) instead of piling up.
MAX_IN_FLIGHT = 32
# The generator's own deadline per request: above the demo primary's 5 s timeout.
CLIENT_TIMEOUT_S = 10.0
# Latency samples kept for the primary's percentiles (~40 minutes at the default rate).
MAX_LATENCY_SAMPLES = 100_000
# Extra settle time beyond a canary's own timeout (its deadline covers queue + round trip).
SETTLE_SLACK_S = 0.5
# Grace for the demo apps' in-flight requests at the end (v3's stalls are not waited for).
APP_GRACE_S = 0.5
EXIT_INTERRUPTED = 130

RULES_PACKAGE = "sidecar.demo_rules"
RULES_FILE = "demo.mirror"


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
    from sidecar.serve.process import run_loop

    return run_loop(_demo(args))


# --- the rules --------------------------------------------------------------------------------


def rules_template() -> str:
    from importlib.resources import files

    return files(RULES_PACKAGE).joinpath(RULES_FILE).read_text(encoding="utf-8")


def render_rules(addresses: Mapping[str, str]) -> str:
    """The demo rules with `listen`, `admin`, `primary`, `v2` and `v3` as host:port."""
    return Template(rules_template()).substitute(addresses)


# --- the run ----------------------------------------------------------------------------------


async def _demo(args: argparse.Namespace) -> int:
    from sidecar import diagnostics
    from sidecar.demo_apps import PROFILES, DemoApp
    from sidecar.demo_view import View, summarize
    from sidecar.dsl import loads
    from sidecar.serve.admin import AdminApp
    from sidecar.serve.listener import Listener
    from sidecar.serve.proxy import ProxyApp
    from sidecar.serve.runtime import Runtime
    from sidecar.serve.sockets import address_of, bind, hypercorn_config

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

    def serve_on(name: str, app: ASGIApp, *, proxy: bool = False) -> asyncio.Task[int]:
        cfg = hypercorn_config(grace_s=APP_GRACE_S, proxy=proxy)
        return asyncio.create_task(Listener(app, cfg, socks[name]).serve(stop_servers.wait))

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
