"""`sidecar serve`: hypercorn listeners, signals, graceful shutdown and `--workers N`.

One process (the default): load and validate the rules (diagnostics exactly as `check`
prints them; any error exits 1, a usage error 2, before anything listens), bind the proxy and admin sockets,
start the runtime (routing table, primary client, canary pools), then serve the proxy and
the admin app on one event loop (uvloop when installed), each from its own batched accept
loop (sidecar/listener.py) into hypercorn's connection handling. SIGTERM/SIGINT: the proxy stops accepting, idle keep-alive connections close,
in-flight requests get up to `--grace` seconds (hypercorn's `graceful_timeout`); every
HTTP/1.1 response finished meanwhile carries `Connection: close` and HTTP/2 connections get
GOAWAY at once (sidecar/host_protocol.py); requests still running when the grace runs out
are counted in one log line; then the canary pools are closed without draining (queued
mirrors are shadow traffic and may be abandoned) and the process exits 0.

`--workers N` (N > 1): the parent validates the rules, binds N proxy sockets with
SO_REUSEPORT on the one address (the kernel spreads connections across them) and one admin
socket, and starts N worker processes (multiprocessing, spawn), each serving its own
proxy socket and sharing the admin socket, each with its own primary client and canary
pools. Per-canary concurrency (`workers`, in requests and TCP connections) is therefore
N x the canary's `workers` across the whole sidecar. Metrics use prometheus-client's
multiprocess mode: the parent makes a private PROMETHEUS_MULTIPROC_DIR before any worker
imports prometheus-client, every worker writes its samples there, and `/metrics` in any
worker aggregates all of them with a MultiProcessCollector (gauges declare how they
aggregate). The parent forwards SIGTERM/SIGINT to the workers, waits for them, removes the
directory and exits 0 when every worker did. A single process keeps the plain in-memory
registry (faster: no mmap writes on the hot path).

Reloading (sidecar/reload.py): SIGHUP, `POST /-/reload` on the admin listener and,
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

import argparse
import asyncio
import contextlib
import gc
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from sidecar.model.endpoint import address_problem, split_address

if TYPE_CHECKING:  # imported inside functions at run time: `sidecar --help` stays light
    from multiprocessing.connection import Connection

    from sidecar.model.config import Config
    from sidecar.reload import Reloader
    from sidecar.runtime import Runtime

log = logging.getLogger("sidecar")

DEFAULT_RULES = "rules/"
DEFAULT_GRACE_S = 10.0
# Listen backlog: enough to absorb a burst of connects while the loop is busy (SOMAXCONN).
LISTEN_BACKLOG = 1024
# Idle keep-alive connections are closed after this long: above the 60 s idle timeout of
# common load balancers, so the balancer, not us, closes first (nginx uses 75 s too).
KEEP_ALIVE_TIMEOUT_S = 75.0
# Requests per client connection before it is closed (nginx: 1000); high, since a
# reconnect is pure overhead for a reverse proxy's few long-lived clients.
KEEP_ALIVE_MAX_REQUESTS = 10_000
# The admin listener's own shutdown grace: its requests are tiny.
ADMIN_GRACE_S = 1.0
# How long the parent of `--workers N` waits for a worker beyond --grace before killing it.
WORKER_EXIT_SLACK_S = 5.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The trigger name of `POST /-/reload` (in log lines, and the one passed on to other workers).
ADMIN_TRIGGER = "POST /-/reload"
# The collector's thresholds once serving (see tune_gc): young collections every 10,000
# net allocations; the older generations at their defaults.
GC_THRESHOLDS = (10_000, 10, 10)


class ServeError(Exception):
    """A start-up problem with a message for the operator (exit 1)."""

    exit_status = 1


class UsageError(ServeError):
    """A bad command line: a PATH that does not exist, an unparsable flag (exit 2, as `check`)."""

    exit_status = 2


@dataclass(frozen=True, slots=True, kw_only=True)
class Options:
    """What a worker needs to start: picklable for `--workers N`."""

    paths: tuple[str, ...]
    listen: str | None
    admin: str | None
    primary: str | None
    grace_s: float
    workers: int
    watch: bool = False


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help=f"rule files or directories forming one configuration (default {DEFAULT_RULES})",
    )
    parser.add_argument("--listen", metavar="ADDR", help="proxy address host:port (overrides)")
    parser.add_argument(
        "--admin", metavar="ADDR", help="admin address host:port (overrides, even `admin off`)"
    )
    parser.add_argument(
        "--primary", metavar="URL", help="primary URL (replaces only the URL of `primary`)"
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE_S,
        metavar="SECONDS",
        help=f"on SIGTERM/SIGINT, time for in-flight requests (default {DEFAULT_GRACE_S:g})",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="processes sharing the listen address (default 1)",
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="reload when a rule file changes (polled twice a second); SIGHUP and "
        "POST /-/reload on the admin address always reload",
    )


def run(args: argparse.Namespace) -> int:
    _setup_logging()
    import prometheus_client

    # `*_created` timestamps double the /metrics output for no operational value; the
    # process is ours, so this global switch touches no library user's metrics.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    _hold_sighup()
    if args.workers < 1:
        print("sidecar serve: --workers must be at least 1", file=sys.stderr)
        return 2
    if args.grace < 0:
        print("sidecar serve: --grace must be >= 0", file=sys.stderr)
        return 2
    opts = Options(
        paths=tuple(args.paths) or (DEFAULT_RULES,),
        listen=args.listen,
        admin=args.admin,
        primary=args.primary,
        grace_s=args.grace,
        workers=args.workers,
        watch=args.watch,
    )
    try:
        loaded = load_config(opts)
    except ServeError as exc:
        print(f"sidecar serve: {exc}", file=sys.stderr)
        return exc.exit_status
    if loaded is None:
        return 1
    config, files = loaded
    try:
        if opts.workers == 1:
            proxy_sock = bind(config.listen, reuse_port=False)
            admin_sock = bind(config.admin, reuse_port=False) if config.admin else None
            return run_worker(opts, config, files, proxy_sock, admin_sock)
        return _supervise(opts, config)
    except ServeError as exc:
        print(f"sidecar serve: {exc}", file=sys.stderr)
        return 1


def _setup_logging() -> None:
    root = logging.getLogger("sidecar")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False


def _hold_sighup() -> None:
    """Block SIGHUP until the event loop handles it (`_reloading`); one sent meanwhile stays
    pending and is handled then, once. Threads started meanwhile inherit the block, so the
    signal can only reach the main thread's handler."""
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})


# --- configuration --------------------------------------------------------------------------


def load_config(opts: Options, *, quiet: bool = False) -> tuple[Config, int] | None:
    """Load, validate and apply the flags; print diagnostics as `check` does.

    None: the rules have errors (already printed). Raises ServeError for a usage problem.
    """
    from sidecar import diagnostics
    from sidecar.dsl import load

    result = load(list(opts.paths))
    if result.usage_error:
        raise UsageError(result.usage_error)
    if result.diagnostics and not quiet:
        rendered = diagnostics.render_all(result.diagnostics, result.sources, result.files)
        print(rendered, file=sys.stderr)
        print(diagnostics.summary(result.diagnostics, len(result.files)), file=sys.stderr)
    if result.config is None:
        return None
    return apply_overrides(result.config, opts), len(result.files)


def apply_overrides(config: Config, opts: Options) -> Config:
    """Flags win over files: `--listen`, `--admin` (even over `admin off`), `--primary` URL."""
    from sidecar.model.config import PrimarySpec
    from sidecar.model.endpoint import Endpoint

    changes: dict[str, Any] = {}
    if opts.listen is not None:
        _check_flag_address("--listen", opts.listen)
        changes["listen"] = opts.listen
    if opts.admin is not None:
        _check_flag_address("--admin", opts.admin)
        changes["admin"] = opts.admin
    if opts.primary is not None:
        try:
            endpoint = Endpoint.parse(opts.primary)
        except ValueError as exc:
            raise UsageError(f"--primary {opts.primary}: {exc}") from None
        base = config.primary or PrimarySpec(endpoint=endpoint)
        changes["primary"] = replace(base, endpoint=endpoint)
    config = replace(config, **changes) if changes else config
    if config.primary is None:
        raise ServeError(
            "no primary: add a `primary http://host:port { ... }` block or pass --primary URL"
        )
    return config


def _check_flag_address(flag: str, addr: str) -> None:
    """The same check as a `listen`/`admin` statement's; raises UsageError."""
    problem = address_problem(addr)
    if problem:
        raise UsageError(f"{flag} {addr}: {problem}")


def parse_address(addr: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); raises ServeError."""
    try:
        return split_address(addr)
    except ValueError as exc:
        raise ServeError(f"invalid address {addr!r}: {exc}") from None


def bind(addr: str, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket on `addr` (SO_REUSEADDR; SO_REUSEPORT for worker groups)."""
    host, port = parse_address(addr)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot resolve {addr}: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(sockaddr)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {addr}: {exc.strerror or exc}") from None
    return sock


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# --- one process ----------------------------------------------------------------------------


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
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        loop_factory = None
    else:
        loop_factory = uvloop.new_event_loop
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        return runner.run(main)


def hypercorn_config(*, grace_s: float, proxy: bool) -> Any:
    """hypercorn's settings for one of sidecar's listeners (served by sidecar.listener)."""
    from hypercorn.config import Config as HyperConfig

    from sidecar.http.framing import MAX_HEADER_SECTION_BYTES

    hc = HyperConfig()
    hc.graceful_timeout = grace_s
    hc.keep_alive_timeout = KEEP_ALIVE_TIMEOUT_S
    hc.keep_alive_max_requests = KEEP_ALIVE_MAX_REQUESTS
    hc.backlog = LISTEN_BACKLOG
    hc.h11_max_incomplete_size = MAX_HEADER_SECTION_BYTES
    hc.loglevel = "WARNING"
    hc.accesslog = None
    if proxy:
        # The primary's Date and Server reach the client as they are.
        hc.include_date_header = False
        hc.include_server_header = False
    # Our connection layer for sidecar's own listeners only (prompt close on EOF, lingering
    # close, strict parsing, draining): see sidecar/host_protocol.py.
    from sidecar.host_protocol import mark

    mark(hc, proxy=proxy)
    return hc


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
    from sidecar.admin import AdminApp
    from sidecar.listener import Listener
    from sidecar.proxy import ProxyApp
    from sidecar.runtime import Runtime

    loop = asyncio.get_running_loop()
    loop.set_exception_handler(_quiet_cancellation)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    listen_addr = address_of(proxy_sock)
    admin_addr = address_of(admin_sock) if admin_sock is not None else None
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
        proxy_cfg = hypercorn_config(grace_s=opts.grace_s, proxy=True)
        proxy_task = asyncio.create_task(
            Listener(ProxyApp(runtime), proxy_cfg, proxy_sock).serve(stop.wait)
        )
        # The sockets were listening before serve() began: connections made now wait in
        # the backlog, so the proxy is reachable and /readyz may say so.
        runtime.ready = True
        _log_start(runtime, listen_addr, admin_addr)
        tune_gc()
        await stop.wait()
        runtime.ready = False
        log.info("shutting down: finishing in-flight requests (grace %gs)", opts.grace_s)
        await proxy_task
        cut = proxy_cfg.sidecar_host.cut
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
    from sidecar.dsl import load

    config = load(list(opts.paths)).config
    return None if config is None else (config.listen, config.admin)


def _reloading(
    opts: Options, runtime: Runtime, stop: asyncio.Event, notify: Connection | None
) -> tuple[Reloader, set[asyncio.Task[Any]]]:
    """The process's reload coordinator, its SIGHUP handler and (--watch) its watcher."""
    from sidecar.reload import Reloader, ReloadResult

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


def _log_start(runtime: Runtime, listen: str, admin: str | None) -> None:
    config = runtime.config
    assert config.primary is not None
    log.info(
        "serving http://%s -> primary %s; admin %s; %d rules, %d canaries from %d files "
        "(sha256 %s); pid %d",
        listen,
        config.primary.endpoint.url,
        f"http://{admin}" if admin else "off",
        len(config.rules),
        len(config.canaries),
        runtime.files,
        config.sha256[:12],
        os.getpid(),
    )


# --- --workers N ----------------------------------------------------------------------------


def _worker_main(
    opts: Options,
    proxy_sock: socket.socket,
    admin_sock: socket.socket | None,
    notify: Connection | None = None,
) -> None:
    """A worker process: reload the configuration (quietly: the parent printed it) and serve."""
    _setup_logging()
    for sig in (signal.SIGTERM, signal.SIGINT):  # until the loop installs its handlers
        signal.signal(sig, signal.SIG_IGN)
    _hold_sighup()  # already blocked by the parent, inherited; kept until the loop handles it
    try:
        loaded = load_config(opts, quiet=True)
    except ServeError as exc:
        print(f"sidecar serve: {exc}", file=sys.stderr)
        sys.exit(1)
    if loaded is None:
        sys.exit(1)
    config, files = loaded
    sys.exit(run_worker(opts, config, files, proxy_sock, admin_sock, notify))


def _supervise(opts: Options, config: Config) -> int:
    import multiprocessing

    tmp = tempfile.mkdtemp(prefix="sidecar-metrics-")
    os.environ[MULTIPROC_ENV] = tmp
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    first = bind(config.listen, reuse_port=True)
    # Later sockets bind the port the first one got (matters for port 0).
    listen_addr = address_of(first)
    socks = [first] + [bind(listen_addr, reuse_port=True) for _ in range(opts.workers - 1)]
    admin_sock = bind(config.admin, reuse_port=False) if config.admin else None
    stopping = False

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for p in procs:
            if p.pid is not None and p.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p.pid, signum)

    def forward_sighup(_signum: int, _frame: object) -> None:
        if not stopping:
            _signal_workers(procs, signal.SIGHUP)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # SIGHUP is blocked since run(): the workers inherit the block and lift it once their
    # loop handles SIGHUP; the parent lifts it once they are started.
    signal.signal(signal.SIGHUP, forward_sighup)
    # Workers write their pid here after a POST /-/reload; the parent tells the others.
    reloads, notify = ctx.Pipe(duplex=False)
    try:
        for sock in socks:
            p = ctx.Process(
                target=_worker_main, args=(opts, sock, admin_sock, notify), daemon=False
            )
            p.start()
            procs.append(p)
        for sock in socks:
            sock.close()
        if admin_sock is not None:
            admin_sock.close()
        notify.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        status = 0
        from multiprocessing.connection import wait

        pending = list(procs)
        listening: list[Any] = [reloads]
        while pending:
            ready = wait([p.sentinel for p in pending] + listening)
            if reloads in ready:
                try:
                    sender = int(reloads.recv_bytes())
                except (EOFError, OSError, ValueError):
                    listening = []  # every worker is gone
                else:
                    if not stopping:
                        _signal_workers(procs, signal.SIGHUP, skip=sender)
            for p in [p for p in pending if p.sentinel in ready]:
                p.join()
                pending.remove(p)
                _mark_dead(p.pid)
                if p.exitcode != 0:
                    status = 1
                    if not stopping:  # one worker failing brings the group down
                        log.error("worker %d exited with %s; stopping", p.pid, p.exitcode)
                        forward(signal.SIGTERM, None)
        return status
    finally:
        reloads.close()
        for p in procs:
            if p.is_alive():
                p.join(opts.grace_s + WORKER_EXIT_SLACK_S)
                if p.is_alive():
                    p.kill()
                    p.join()
        shutil.rmtree(tmp, ignore_errors=True)


def _signal_workers(procs: Sequence[Any], signum: int, *, skip: int | None = None) -> None:
    for p in procs:
        if p.pid is not None and p.pid != skip and p.exitcode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signum)


def _mark_dead(pid: int | None) -> None:
    if pid is None:
        return
    with contextlib.suppress(Exception):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m sidecar.server` (handy before cli.py registers `serve`)."""
    parser = argparse.ArgumentParser(prog="sidecar serve")
    configure(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
