"""`sidecar demo`: a whole shadowing setup on loopback, with sample traffic and a live view.

How this works
--------------
Everything runs in one process and one event loop. The demo binds six loopback sockets on
free ports (the demo primary, canaries v1, v2 and v3, the proxy and its admin listener), fills
those addresses into the rules embedded in the package (`sidecar/demo/rules/demo.mirror`,
so it works from an installed wheel in any directory; `--print-rules` prints them as used),
validates them exactly as `serve` does, and starts the same pieces `serve` runs: a
`Runtime` (routing table, primary client, one `CanaryPool` per canary), `ProxyApp` and
`AdminApp`, each on its own `hypercorn.asyncio.serve` task, next to the four demo apps
(v1 is the primary's app again: v2's `compare` names it as its baseline, so what differs on
every answer whatever the version, the `generated_at` timestamp, is noise, not a diff).

A traffic generator (httpx) then sends a mix of reads, JSON orders, large imports and admin
calls at a fixed rate (`--rate`, open loop, at most MAX_IN_FLIGHT at once) for `--duration`
seconds. The view reads the pools' counters (`CanaryPool.stats()`), the canaries' latency
from the `sidecar_mirror_duration_seconds` histogram (a p50 estimated as Prometheus's
`histogram_quantile` would) and the primary's latency as the generator measured it
through the proxy. After the traffic, the pools drain (each for at most its `timeout`; a
job still unfinished ends as `failed`), so the final counts add up per canary:
dispatched == completed + failed + panicked; drops are counted apart.

On a terminal the view is a rich live table; otherwise (a pipe, CI) a plain line every
PLAIN_INTERVAL_S (sidecar/demo/view.py). `--format json` prints the summary as one JSON document on stdout (the
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
from collections.abc import Callable, Mapping
from importlib.resources import files
from string import Template
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    from sidecar.asgi import ASGIApp
    from sidecar.serve.runtime import Runtime

DEFAULT_DURATION_S = 20.0
# Requests per second: enough to fill v3's queue and rate limit, light on a laptop.
DEFAULT_RATE = 40.0
# Extra settle time beyond a canary's own timeout (its deadline covers queue + round trip).
SETTLE_SLACK_S = 0.5
# Grace for the demo apps' in-flight requests at the end (v3's stalls are not waited for).
APP_GRACE_S = 0.5
EXIT_INTERRUPTED = 130

RULES_PACKAGE = "sidecar.demo.rules"
RULES_FILE = "demo.mirror"
# Where the template's trailing comments start (0-based): kept after the ports are filled in,
# so `--print-rules` reads as aligned as the file.
COMMENT_COLUMN = 35


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
    from sidecar.serve.process import run_loop  # the serving stack: not for `--help`

    return run_loop(_demo(args))


# --- the rules --------------------------------------------------------------------------------


def rules_template() -> str:
    return files(RULES_PACKAGE).joinpath(RULES_FILE).read_text(encoding="utf-8")


def render_rules(addresses: Mapping[str, str]) -> str:
    """The demo rules with `listen`, `admin`, `primary`, `v1`, `v2` and `v3` as host:port,
    each trailing comment kept in the template's comment column (COMMENT_COLUMN)."""
    lines = []
    for line in rules_template().splitlines():
        code, comment = _split_comment(line)
        code = Template(code).substitute(addresses)
        if comment and code.strip():
            code = code.rstrip().ljust(max(COMMENT_COLUMN, len(code.rstrip()) + 3))
        lines.append(code + comment)
    return "\n".join(lines) + "\n"


def _split_comment(line: str) -> tuple[str, str]:
    """(code, `# comment`) of a template line; a `#` inside a string is code."""
    quoted = False
    for i, ch in enumerate(line):
        if ch == '"':
            quoted = not quoted
        elif ch == "#" and not quoted:
            return line[:i], line[i:]
    return line, ""


# --- the run ----------------------------------------------------------------------------------


async def _demo(args: argparse.Namespace) -> int:
    # The demo's whole stack (hypercorn, prometheus-client, rich, httpx): imported when it
    # runs, so that `sidecar --help` and `check` stay light.
    from sidecar.demo.apps import PROFILES, DemoApp
    from sidecar.demo.traffic import Traffic
    from sidecar.demo.view import View, summarize
    from sidecar.dsl import loads
    from sidecar.serve.admin import AdminApp
    from sidecar.serve.listener import Listener
    from sidecar.serve.proxy import ProxyApp
    from sidecar.serve.runtime import Runtime
    from sidecar.serve.sockets import address_of, bind, hypercorn_config

    names = ("primary", "v1", "v2", "v3", "listen", "admin")
    socks = {name: bind("127.0.0.1:0", reuse_port=False) for name in names}
    addresses = {name: address_of(sock) for name, sock in socks.items()}
    text = render_rules(addresses)
    if args.print_rules:
        for sock in socks.values():
            sock.close()
        print(text, end="")
        return 0
    result = loads(text, f"<demo>/{RULES_FILE}")
    if result.config is None:  # a packaging bug: show it as check would
        print(result.report(), file=sys.stderr)
        return 1

    out: TextIO = sys.stderr if args.format == "json" else sys.stdout
    view = View(out, duration=args.duration)
    apps = {name: DemoApp(PROFILES[name], seed=args.seed) for name in ("primary", "v2", "v3")}
    apps["v1"] = DemoApp(PROFILES["primary"], seed=args.seed)  # the baseline: the primary's app
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
