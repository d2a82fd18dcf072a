"""`sidecar explain`: how the routing table decides one request, step by step.

The core is pure: `request_view` turns the command-line description of a
request into a `RequestView` (raising `RequestTextError` with a message fit for the
user), `explain` runs `RoutingTable.trace` (the same decision code as `serve`)
and adds per-canary admission for a body size, and `to_json` / `to_text`
render the result. The table is compiled with a random source that always
samples in: random sampling is shown as "random draw, R%" and counted as in.
Only `run` does I/O.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sidecar.http.syntax import is_token
from sidecar.model.compare import CompareSpec
from sidecar.model.config import DEFAULT_RULES, PauseSpec
from sidecar.routing.request import RequestView
from sidecar.routing.table import RoutingTable, Trace

DEFAULT_CLIENT = "127.0.0.1"
# RFC 9110 token characters: what a method and a header name may be made of.
_HTTP_VERSION = re.compile(r"HTTP/\d(?:\.\d)?")


class RequestTextError(ValueError):
    """A request, header or client address given on the command line that is not valid."""


def always_in() -> float:
    """The random source of `explain` and `check --expect`: every random draw samples in."""
    return 0.0


def parse_request(line: str) -> tuple[str, str, bytes]:
    """`"GET /path?q=1"` -> (method, raw path, query string). Raises RequestTextError."""
    parts = line.split()
    if len(parts) == 3 and _HTTP_VERSION.fullmatch(parts[2]):
        parts = parts[:2]
    if len(parts) != 2:
        raise RequestTextError(f'request must look like "METHOD /path?query", got {line!r}')
    method, target = parts
    if not is_token(method) or method != method.upper():
        raise RequestTextError(f"invalid method {method!r}: an upper-case word such as GET")
    if not target.startswith("/") or not target.isprintable():
        raise RequestTextError(f"invalid request target {target!r}: it must start with '/'")
    raw = target.encode("utf-8")
    path, _, query = raw.partition(b"?")
    return method, path.decode("latin-1"), query


def parse_header(text: str) -> tuple[bytes, bytes]:
    """`"Name: value"` -> the ASGI pair (lower-case name). Raises RequestTextError."""
    name, sep, value = text.partition(":")
    if not sep or not is_token(name):
        raise RequestTextError(f'header must look like "Name: value", got {text!r}')
    value = value.strip(" \t")
    if any(c in value for c in "\r\n\0"):
        raise RequestTextError(f"header {name!r} has a line break or NUL in its value")
    try:
        raw = value.encode("latin-1")
    except UnicodeEncodeError:
        raw = value.encode("utf-8")
    return name.lower().encode("ascii"), raw


def parse_client(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        raise RequestTextError(f"client must be an IP address, got {text!r}") from None


def request_view(
    request: str, headers: Sequence[str] = (), client: str = DEFAULT_CLIENT
) -> RequestView:
    """The view `serve` would build for this request. Raises RequestTextError."""
    method, path, query = parse_request(request)
    return RequestView(
        method=method,
        path=path,
        query_string=query,
        headers=[parse_header(h) for h in headers],
        client=parse_client(client),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Admission:
    canary: str
    rule: str
    admission: str  # "dispatched" or "dropped_oversize"
    compare: CompareSpec | None = None  # the canary's `compare` block, if it has one
    pause: PauseSpec | None = None  # the canary's `pause`: while paused, `dropped_paused`


@dataclass(frozen=True, slots=True, kw_only=True)
class Explanation:
    table: RoutingTable
    trace: Trace
    canaries: tuple[Admission, ...]


def explain(table: RoutingTable, view: RequestView, body_size: int = 0) -> Explanation:
    """Trace `view` through `table` and say what admission would do with a body of `body_size`."""
    trace = table.trace(view)
    out = []
    for tee in trace.tees:
        spec = table.canaries[tee.canary]
        oversize = spec.body and body_size > spec.max_body_bytes
        admission = "dropped_oversize" if oversize else "dispatched"
        out.append(
            Admission(
                canary=tee.canary,
                rule=tee.rule,
                admission=admission,
                compare=spec.compare,
                pause=spec.pause,
            )
        )
    return Explanation(table=table, trace=trace, canaries=tuple(out))


def to_json(e: Explanation) -> dict[str, Any]:
    """The explain document (JSON)."""
    t = e.trace
    rules = []
    for r in t.rules:
        sampling = None
        if r.sample is not None:
            s = r.sample
            position = None if s.position is None else round(s.position, 6)
            sampling = {"rate": s.rate, "key": s.key, "position": position, "in": s.sampled_in}
        rules.append(
            {
                "name": r.rule,
                "matched": r.failing_clause is None,
                "failed_clause": r.failing_clause,
                "sampling": sampling,
            }
        )
    return {
        "loop_guard": t.loop_guard is not None,
        "excluded_by": None if t.excluded_by is None else t.excluded_by.span.where,
        "rules": rules,
        "canaries": [
            {
                "name": a.canary,
                "rule": a.rule,
                "admission": a.admission,
                "compare": None
                if a.compare is None
                else {"sample": a.compare.sample_rate, "baseline": a.compare.baseline},
            }
            for a in e.canaries
        ],
    }


def _percent(rate: float) -> str:
    return f"{rate * 100:.6g}%"


def _compared(a: Admission) -> str:
    """Whether the tee's response would be compared with the primary's, and how often."""
    c = a.compare
    if c is None:
        return "not compared"
    if a.admission != "dispatched":
        return "not compared (not dispatched)"
    how = (
        "compared (100%)"
        if c.sample_rate >= 1.0
        else f"compared {_percent(c.sample_rate)} of completed tees"
    )
    return how if c.baseline is None else f"{how}, noise baseline {c.baseline}"


def to_text(e: Explanation) -> list[str]:
    """The trace as lines, one step per line."""
    t, table = e.trace, e.table
    if t.loop_guard is not None:
        name, value = t.loop_guard
        return [f"loop guard: request carries mark {name}: {value}; nothing is mirrored"]
    lines = ["loop guard: no canary mark on the request"]
    for ex in table.excludes:
        if ex is t.excluded_by:
            lines.append(f"exclude {ex.span.where}: holds: {ex.when.text}")
            lines.append("excluded: nothing is mirrored")
            return lines
        lines.append(f"exclude {ex.span.where}: does not hold")
    for r, rule in zip(t.rules, table.rules, strict=True):
        head = f"rule {r.rule} ({rule.span.where}):"
        if r.failing_clause is not None:
            lines.append(f"{head} no match: {r.failing_clause}")
            continue
        parts = [f"{head} matched"]
        s = r.sample
        if s is not None:
            if s.key is None:
                how = f"random draw, {_percent(s.rate)}"
            else:
                how = f"sample {_percent(s.rate)} by key {json.dumps(s.key)} at {s.position:.4f}"
            verdict = {True: "in", False: "out", None: "not drawn"}[s.sampled_in]
            parts.append(f"{how}: {verdict}")
        if not r.evaluated:
            parts.append("not evaluated: every canary was already chosen")
        elif r.sampled:
            added = ", ".join(tee.canary for tee in r.tees)
            parts.append(f"-> {added}" if added else "its canaries were already chosen")
        lines.append("; ".join(parts))
    if not e.canaries:
        lines.append("canaries: none")
    for a in e.canaries:
        paused = ""
        if a.pause is not None and a.admission == "dispatched":
            paused = f" (dropped_paused while paused: after {a.pause.failures} failures for {a.pause.duration_s:g}s)"
        lines.append(f"canary {a.canary} (rule {a.rule}): {a.admission}{paused}; {_compared(a)}")
    return lines


# --- the command ----------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help=f"rule files or directories (default {DEFAULT_RULES})",
    )
    parser.add_argument(
        "--request", required=True, metavar='"METHOD /path?query"', help="the request line"
    )
    parser.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar='"Name: value"',
        help="a request header (repeatable)",
    )
    parser.add_argument(
        "--client", default=DEFAULT_CLIENT, metavar="ADDR", help="peer address (default 127.0.0.1)"
    )
    parser.add_argument(
        "--body-size", type=int, default=0, metavar="N", help="request body bytes (default 0)"
    )
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default text)"
    )


def run(args: argparse.Namespace) -> int:
    # lark and the routing table: not imported for `sidecar --help`.
    from sidecar import diagnostics
    from sidecar.dsl import load
    from sidecar.routing.table import compile_table

    if args.body_size < 0:
        print("sidecar explain: error: --body-size must be >= 0", file=sys.stderr)
        return 2
    try:
        view = request_view(args.request, args.header, args.client)
    except RequestTextError as exc:
        print(f"sidecar explain: error: {exc}", file=sys.stderr)
        return 2
    result = load(list(args.paths) or [DEFAULT_RULES])
    if result.usage_error is not None:
        print(f"sidecar explain: error: {result.usage_error}", file=sys.stderr)
        return 2
    if result.config is None:  # configuration errors: exactly what `check` prints
        if args.format == "json":
            print(diagnostics.to_json(result.diagnostics, result.files))
        else:
            print(result.report())
        return 1
    if result.diagnostics:  # warnings only: keep stdout for the trace
        print(result.report(), file=sys.stderr)
    e = explain(compile_table(result.config, random=always_in), view, args.body_size)
    if args.format == "json":
        print(json.dumps(to_json(e), indent=2))
    else:
        print("\n".join(to_text(e)))
    return 0
