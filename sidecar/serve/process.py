"""One `serve` process: its event loop, listeners, signals, graceful shutdown and reloads.

One process (the default): load and validate the rules (diagnostics exactly as `check`
prints them; any error exits 1, a usage error 2, before anything listens), bind the proxy and admin sockets,
start the runtime (routing table, primary client, canary pools), then serve the proxy and
the admin app on one event loop (uvloop when installed), each from its own batched accept
loop (sidecar/serve/listener.py) into hypercorn's connection handling; with `--server
uvicorn` (or `server uvicorn` in the files) the proxy's into uvicorn's instead
(sidecar/serve/host_uvicorn_listener.py). SIGTERM/SIGINT: the proxy stops accepting, idle keep-alive connections close,
in-flight requests get up to `--grace` seconds (hypercorn's `graceful_timeout`); every
HTTP/1.1 response finished meanwhile carries `Connection: close` and HTTP/2 connections get
GOAWAY at once (sidecar/serve/host_protocol.py); requests still running when the grace runs out
are counted in one log line; then the canary pools are closed without draining (queued
mirrors are shadow traffic and may be abandoned) and the process exits 0.

Reloading (sidecar/serve/reload.py): SIGHUP, `POST /-/reload` on the admin listener and,
with `--watch`, a changed rule file each make a process reload its rules; the paths and
the start-up flags are handed to its `Reloader`. SIGHUP stays blocked until the event loop
handles it (its default action would kill the process), so an early one waits, never fatal. With `--workers N` every worker reloads by itself
(each owns its own table and pools; there is no shared state to hand over):
- SIGHUP to the parent is forwarded to every worker (SIGHUP is blocked in the parent while
  it spawns them, and the workers inherit the block until they can handle it).
- `POST /-/reload` reaches ONE worker (they share the admin socket). That worker reloads
  and answers with its own result (200 or 400 with the diagnostics), then writes its pid to
  a pipe the parent waits on; the parent sends SIGHUP to every other worker, which reload
  within milliseconds from the same files. The admin socket stays shared rather than
  served by the parent: the parent stays a plain supervisor, and `/metrics` already
  answers for all processes from any worker.
- `--watch`: every worker polls the files itself (a few stat() calls per poll).
So one trigger is one reload attempt per process: `sidecar_rules_reloads_total` (summed
over processes) rises by N, and a bad edit is logged by each worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
import sys
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import ssl
    from multiprocessing.connection import Connection

    from sidecar.model.config import Config
    from sidecar.serve.host_http import HostState
    from sidecar.serve.listener import Listener
    from sidecar.serve.reload import Reloader
    from sidecar.serve.runtime import Runtime

from sidecar.serve.options import Options, ServeError, apply_overrides
from sidecar.serve.sockets import (
    KEEP_ALIVE_MAX_REQUESTS,
    KEEP_ALIVE_TIMEOUT_S,
    address_of,
    hypercorn_config,
    listen_context,
)

log = logging.getLogger("sidecar")

# The admin listener's own shutdown grace: its requests are tiny.
ADMIN_GRACE_S = 1.0
# The trigger name of `POST /-/reload` (in log lines, and the one passed on to other workers).
ADMIN_TRIGGER = "POST /-/reload"
# The start-up probe of the primary (one TCP connect, off the request path): long enough
# for a slow network, short enough that the warning comes with the start-up lines.
PRIMARY_PROBE_TIMEOUT_S = 2.0
# The collector's thresholds once serving (see tune_gc): young collections every 10,000
# net allocations; the older generations at their defaults.
GC_THRESHOLDS = (10_000, 10, 10)


def setup_logging() -> None:
    root = logging.getLogger("sidecar")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


def hold_sighup() -> None:
    """Block SIGHUP until the event loop handles it (`_reloading`); one sent meanwhile stays
    pending and is handled then, once. Threads started meanwhile inherit the block, so the
    signal can only reach the main thread's handler."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})


def run_worker(
    opts: Options,
    config: Config,
    files: int,
    proxy_sock: socket.socket,
    admin_sock: socket.socket | None,
    notify: Connection | None = None,
) -> int:
    """Serve until SIGTERM/SIGINT; exit status 0 after a graceful shutdown."""
    return run_loop(_serve(opts, config, files, proxy_sock, admin_sock, notify))


def run_loop(main: Coroutine[Any, Any, int]) -> int:
    """Run `main` to completion on a fresh event loop: uvloop's when installed."""
    try:
        import uvloop  # only when serving
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)


def _quiet_cancellation(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The loop's exception handler: a connection task cancelled when `--grace` runs out is
    shutdown, not an error (asyncio's stream callback reports it with a traceback)."""
    if isinstance(context.get("exception"), asyncio.CancelledError):
        return
    loop.default_exception_handler(context)


async def _serve(
    opts: Options,
    config: Config,
    files: int,
    proxy_sock: socket.socket,
    admin_sock: socket.socket | None,
    notify: Connection | None = None,
) -> int:
    # The serving stack (hypercorn, prometheus-client): imported when serving starts, so
    # that `sidecar --help` and `check`, which import this module, stay light.
    from sidecar.serve.admin import AdminApp
    from sidecar.serve.listener import Listener
    from sidecar.serve.proxy import ProxyApp
    from sidecar.serve.runtime import Runtime

    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_cancellation)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    listen_addr = address_of(proxy_sock)
    admin_addr = address_of(admin_sock) if admin_sock is not None else None
    try:  # checked by `check` already; a file changed since then is said in one line
        proxy_tls = listen_context(config)
    except ServeError as exc:
        log.error("%s", exc)
        return 1
    runtime = Runtime(config, files=files, paths=opts.paths)
    await runtime.start()
    reloader, reload_tasks = _reloading(opts, runtime, stop, notify)
    proxy_done = asyncio.Event()
    admin_task: asyncio.Task[int] | None = None
    try:
        if admin_sock is not None:
            admin_cfg = hypercorn_config(grace_s=ADMIN_GRACE_S, proxy=False)
            admin_app = AdminApp(runtime, reload=lambda: reloader.reload(ADMIN_TRIGGER))
            admin_task = asyncio.create_task(
                Listener(admin_app, admin_cfg, admin_sock).serve(proxy_done.wait)
            )
        proxy_app = ProxyApp(runtime)
        proxy_listener, proxy_host = _proxy_listener(
            config.server, proxy_app, proxy_sock, opts.grace_s, proxy_tls
        )
        proxy_task = asyncio.create_task(proxy_listener.serve(stop.wait))
        # The sockets were listening before serve() began: connections made now wait in
        # the backlog, so the proxy is reachable and /readyz may say so.
        runtime.ready = True
        _log_start(runtime, listen_addr, admin_addr)
        probe = asyncio.create_task(_probe_primary(runtime))  # never delays readiness
        tune_gc()
        await stop.wait()
        probe.cancel()
        runtime.ready = False
        log.info("shutting down: finishing in-flight requests (grace %gs)", opts.grace_s)
        proxy_app.websockets.going_away_in(opts.grace_s)  # 1001 when the grace ends
        await proxy_task
        cut = proxy_host.cut
        if cut:
            log.warning(
                "grace of %gs ran out: %d requests cut off (503, or a response ended early)",
                opts.grace_s,
                cut,
            )
    finally:
        proxy_done.set()
        if admin_task is not None:
            await admin_task
        for task in reload_tasks:
            task.cancel()
        await asyncio.gather(*reload_tasks, return_exceptions=True)
        await runtime.close()
    log.info("stopped")
    return 0


def _proxy_listener(
    server: str, app: Any, sock: socket.socket, grace_s: float, tls: ssl.SSLContext | None
) -> tuple[Listener, HostState]:
    """The proxy's listener on `server` (`--server`/`server`) and its connection layer's
    state (refusals counted, requests cut off when the grace runs out). `tls`: the
    `listen { cert key }` context; uvicorn serves it over HTTP/1.1 only."""
    from sidecar.serve.listener import Listener  # the serving stack (see _serve)

    if server == "uvicorn":
        from sidecar.serve.host_http import HostState
        from sidecar.serve.host_uvicorn_listener import UvicornListener

        host = HostState(count_refusals=True)
        listener = UvicornListener(
            app,
            sock,
            grace_s=grace_s,
            keep_alive_s=KEEP_ALIVE_TIMEOUT_S,
            max_requests=KEEP_ALIVE_MAX_REQUESTS,
            host=host,
            ssl_context=tls,
        )
        return listener, host
    proxy_cfg = hypercorn_config(grace_s=grace_s, proxy=True)
    return Listener(app, proxy_cfg, sock, tls), proxy_cfg.sidecar_host


def tune_gc() -> None:
    """After start-up, for a long-running proxy process (never for the library's hosts).

    The objects alive now (modules, the grammar, the compiled rules) move to the permanent
    generation, so a full collection no longer walks them: measured under load, full
    collections paused the loop for 20-40 ms every few seconds, straight into p99. Young
    collections then run every 10,000 allocations instead of 700: a proxied request makes
    a few hundred objects that nearly all die by reference counting, and the default
    threshold ran a collection every few requests (about 1% of the CPU). Bodies are freed
    by reference counting, not by the collector: the memory bound (bench_memory.py) holds.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _declared_addresses(opts: Options) -> tuple[str, str | None] | None:
    """The files' own listen/admin when flags override them (None: nothing to compare)."""
    if opts.listen is None and opts.admin is None:
        return None
    from sidecar.dsl import load  # lark: not for `sidecar --help`

    config = load(list(opts.paths)).config
    return None if config is None else (config.listen, config.admin)


def _reloading(
    opts: Options, runtime: Runtime, stop: asyncio.Event, notify: Connection | None
) -> tuple[Reloader, set[asyncio.Task[Any]]]:
    """The process's reload coordinator, its SIGHUP handler and (--watch) its watcher."""
    from sidecar.serve.reload import Reloader, ReloadResult  # the serving stack (above)

    def after(trigger: str, _result: ReloadResult) -> None:
        if trigger == ADMIN_TRIGGER and notify is not None:
            notify.send_bytes(str(os.getpid()).encode("ascii"))  # the parent tells the rest

    reloader = Reloader(
        runtime,
        opts.paths,
        prepare=lambda config: apply_overrides(config, opts),
        after=after,
        declared=_declared_addresses(opts),
    )
    tasks: set[asyncio.Task[Any]] = set()
    loop = asyncio.get_running_loop()

    def spawn(trigger: str) -> None:
        if stop.is_set():
            return
        task = loop.create_task(reloader.reload(trigger))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    loop.add_signal_handler(signal.SIGHUP, spawn, "SIGHUP")
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})  # see _hold_sighup
    if opts.watch:
        tasks.add(loop.create_task(reloader.watch()))
        log.info("watching the rule files of %s for changes", " ".join(opts.paths))
    return reloader, tasks


async def _probe_primary(runtime: Runtime) -> None:
    """Connect to the primary once after start-up and log a WARNING when it refuses: the
    first refusal is then said clearly at start, not only in each request's 502 line."""
    config = runtime.config
    assert config.primary is not None
    endpoint = config.primary.endpoint
    try:
        _reader, writer = await asyncio.wait_for(
            asyncio.open_connection(endpoint.host, endpoint.port), PRIMARY_PROBE_TIMEOUT_S
        )
    except (OSError, TimeoutError) as exc:
        reason = str(exc) or f"no answer in {PRIMARY_PROBE_TIMEOUT_S:g}s"
        log.warning("primary %s refuses connections (%s)", endpoint.url, reason)
        return
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def _log_start(runtime: Runtime, listen: str, admin: str | None) -> None:
    config = runtime.config
    assert config.primary is not None
    if config.listen_tls is None:
        scheme, alpn = "http", ""
    elif config.server == "uvicorn":  # uvicorn speaks HTTP/1.1 only, over TLS too
        scheme, alpn = "https", " (http/1.1 only)"
    else:
        scheme, alpn = "https", " (h2, http/1.1)"
    log.info(
        "serving %s://%s%s on %s -> primary %s; admin %s; %d rules, %d canaries from %d "
        "files (sha256 %s); pid %d",
        scheme,
        listen,
        alpn,
        config.server,
        config.primary.endpoint.url,
        f"http://{admin}" if admin else "off",
        len(config.rules),
        len(config.canaries),
        runtime.files,
        config.sha256[:12],
        os.getpid(),
    )
