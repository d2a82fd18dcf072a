"""`sidecar serve --workers N`: one supervisor process and N workers.

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

"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from multiprocessing.connection import Connection

    from sidecar.model.config import Config

from sidecar.serve.options import Options, ServeError, load_config
from sidecar.serve.process import hold_sighup, run_worker, setup_logging
from sidecar.serve.sockets import address_of, bind

log = logging.getLogger("sidecar")

# How long the parent of `--workers N` waits for a worker beyond --grace before killing it.
WORKER_EXIT_SLACK_S = 5.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def _worker_main(
    opts: Options,
    proxy_sock: socket.socket,
    admin_sock: socket.socket | None,
    notify: Connection | None = None,
) -> None:
    """A worker process: reload the configuration (quietly: the parent printed it) and serve."""
    setup_logging()
    for sig in (signal.SIGTERM, signal.SIGINT):  # until the loop installs its handlers
        signal.signal(sig, signal.SIG_IGN)
    hold_sighup()  # already blocked by the parent, inherited; kept until the loop handles it
    try:
        loaded = load_config(opts, quiet=True)
    except ServeError as exc:
        print(f"sidecar serve: {exc}", file=sys.stderr)
        sys.exit(1)
    if loaded is None:
        sys.exit(1)
    config, files = loaded
    sys.exit(run_worker(opts, config, files, proxy_sock, admin_sock, notify))


def supervise(opts: Options, config: Config) -> int:
    import multiprocessing  # only for --workers N

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
        from multiprocessing.connection import wait  # only for --workers N

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
        from prometheus_client import multiprocess  # not for `sidecar --help`

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]
