"""`sidecar serve`'s flags and the configuration they override: `Options`, `load_config`.

Precedence: defaults, then the rule files, then explicit flags (`--listen`, `--admin`,
`--primary`). `Options` is picklable: it is all a `--workers N` worker needs to start.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, replace
from typing import Any

from sidecar.model.config import DEFAULT_RULES, SERVERS, Config, PrimarySpec
from sidecar.model.endpoint import Endpoint, address_problem

log = logging.getLogger("sidecar")

DEFAULT_GRACE_S = 10.0


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
    server: str | None = None  # `--server`: wins over the files' `server` statement


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help=f"rule files or directories forming one configuration (default {DEFAULT_RULES})",
    )
    parser.add_argument("--listen", metavar="ADDR", help="proxy address host:port (overrides)")
    parser.add_argument(
        "--admin",
        metavar="ADDR",
        help="admin address host:port, or `off` for none (overrides the files, even `admin off`)",
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
        help=(
            "processes sharing the listen address (default 1); each has its own canary pools,"
            " so workers/queue/rate apply per process (docs/cli.md)"
        ),
    )
    parser.add_argument(
        "--server",
        choices=SERVERS,
        help="the HTTP server hosting the proxy listener (overrides the files' `server`; "
        "default hypercorn): uvicorn for HTTP/1.1 throughput, hypercorn for HTTP/2 "
        "(docs/cli.md)",
    )
    parser.add_argument(
        "--watch",
        action="store_true",
        help="reload when a rule file changes (polled twice a second); SIGHUP and "
        "POST /-/reload on the admin address always reload",
    )


def load_config(opts: Options, *, quiet: bool = False) -> tuple[Config, int] | None:
    """Load, validate and apply the flags; print diagnostics as `check` does.

    None: the rules have errors (already printed). Raises ServeError for a usage problem.
    """
    from sidecar.dsl import load  # lark: `sidecar --help` does not pay for it

    result = load(list(opts.paths))
    if result.usage_error:
        raise UsageError(result.usage_error)
    if result.diagnostics and not quiet:
        print(result.report(), file=sys.stderr)
    if result.config is None:
        return None
    return apply_overrides(result.config, opts), len(result.files)


def apply_overrides(config: Config, opts: Options) -> Config:
    """Flags win over files: `--listen`, `--admin` (even over `admin off`), `--primary` URL,
    `--server`."""

    changes: dict[str, Any] = {}
    if opts.server is not None:
        changes["server"] = opts.server
    if opts.listen is not None:
        _check_flag_address("--listen", opts.listen)
        changes["listen"] = opts.listen
    if opts.admin == "off":  # the statement's spelling: no admin listener
        changes["admin"] = None
    elif opts.admin is not None:
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
