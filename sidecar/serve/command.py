"""`sidecar serve PATH...`: the command. One process, or a supervisor and `--workers N`."""

from __future__ import annotations

import argparse
import sys

from sidecar.model.config import DEFAULT_RULES
from sidecar.serve.options import Options, ServeError, load_config
from sidecar.serve.options import configure as configure
from sidecar.serve.process import hold_sighup, run_worker, setup_logging
from sidecar.serve.sockets import bind
from sidecar.serve.supervisor import supervise


def run(args: argparse.Namespace) -> int:
    setup_logging()
    import prometheus_client  # not for `sidecar --help`: only when serving

    # `*_created` timestamps double the /metrics output for no operational value; the
    # process is ours, so this global switch touches no library user's metrics.
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    hold_sighup()
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
        server=args.server,
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
        return supervise(opts, config)
    except ServeError as exc:
        print(f"sidecar serve: {exc}", file=sys.stderr)
        return 1
