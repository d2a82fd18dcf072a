"""`sidecar diffs SOURCE...`: a report over diff records from files, stdin and admin URLs.

One job, kept in one module past 400 lines: read the sources, group the records, render
the report (text or JSON); each part is small and only this command uses them.

A SOURCE is a JSON-lines file (a `diff_log`), `-` (standard input, JSON lines) or an
admin URL (`http://127.0.0.1:9901`, read at `/diffs`, a JSON list; a URL with a path
is read as given). Records are aggregated as they are read (memory grows with the
number of distinct canaries, rules, wheres and routes, not with the records): per
canary and rule, the differences by kind and `where`, and by route (the path with
numeric, long hex and UUID segments written `{id}`), each with its count, its share
of the group's records, first and last time and one example request (the earliest);
the noise apart, with how often each `where` was noise when it differed at all (always
noise: a candidate for `ignore`).

Output: rich tables, or with `--format json` one document (see `report_json`). A bad
line is reported as `file:line` on stderr, skipped and counted. Exit 0; 1 when a
source could not be read; 2 on usage errors (a file that does not exist, a URL
scheme other than http/https).

The library side: `read_source(spec)` yields parsed records, `Report.add(record)`
aggregates, `report_json(report)` makes the JSON document and `render(doc, console)`
prints it as tables; `collect(specs)` does all of it for the command.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

if TYPE_CHECKING:
    from rich.console import Console

# --- errors -----------------------------------------------------------------------------------


class DiffsError(Exception):
    """Base of this command's errors; the message names the source."""


class UsageError(DiffsError):
    """A SOURCE that cannot mean anything (exit 2)."""


class SourceError(DiffsError):
    """A SOURCE that could not be read (exit 1; the others are still reported)."""


# --- constants --------------------------------------------------------------------------------

# One GET /diffs; an admin address that does not answer within this is reported as failed
# rather than holding the whole report up.
FETCH_TIMEOUT_S: Final = 10.0
# /diffs keeps at most 1,000 records of at most ~12 KiB each: 32 MiB is twice that, and
# bounds what a wrong URL (a huge download) can cost.
MAX_FETCH_BYTES: Final = 32 << 20
# A diff_log line is one record (~12 KiB at most); a longer line is not one of ours, and
# is skipped without being held in memory.
MAX_LINE_CHARS: Final = 1 << 20
# Bad lines are each reported up to this many per run, then only counted.
MAX_BAD_LINES_SHOWN: Final = 20
# Rows per table on a terminal; `--format json` has them all.
MAX_ROWS_SHOWN: Final = 25
# rich wraps to 80 columns when stdout is not a terminal; a report in a file or a pipe
# reads better wide.
PIPE_WIDTH_COLS: Final = 200
ADMIN_DIFFS_PATH: Final = "/diffs"

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2

_ID_SEGMENT = re.compile(
    r"^(?:\d+|[0-9a-fA-F]{8,}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})$"
)
_KIND_ORDER: Final = {"status": 0, "header": 1, "body": 2}


def route_of(path: str) -> str:
    """`/users/42/orders/0f3a9c2e1b` -> `/users/{id}/orders/{id}` (numeric, hex >= 8, UUID)."""
    return "/".join("{id}" if _ID_SEGMENT.match(seg) else seg for seg in path.split("/"))


# --- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Record:
    """What the report needs of one diff record (the rest of it is not read)."""

    time: str
    rule: str
    canary: str
    request: dict[str, Any]
    differences: tuple[tuple[str, str], ...]  # (kind, where), each once
    noise: tuple[tuple[str, str], ...]


def parse_record(obj: object) -> Record | str:
    """A `Record`, or why `obj` is not a diff record."""
    if not isinstance(obj, dict):
        return "not a JSON object"
    canary = obj.get("canary")
    request = obj.get("request")
    checks = (
        (isinstance(obj.get("time"), str), "'time' is not a string"),
        (isinstance(obj.get("rule"), str), "'rule' is not a string"),
        (isinstance(canary, dict) and isinstance(canary.get("name"), str), "no 'canary.name'"),
        (isinstance(request, dict) and isinstance(request.get("path"), str), "no 'request.path'"),
        (isinstance(obj.get("differences"), list), "'differences' is not a list"),
        (isinstance(obj.get("noise", []), list), "'noise' is not a list"),
    )
    for ok, problem in checks:
        if not ok:
            return problem
    assert isinstance(canary, dict) and isinstance(request, dict)
    wheres: list[tuple[tuple[str, str], ...]] = []
    for key in ("differences", "noise"):
        seen: dict[tuple[str, str], None] = {}
        for item in obj.get(key, []):
            if not (
                isinstance(item, dict)
                and isinstance(item.get("kind"), str)
                and isinstance(item.get("where"), str)
            ):
                return f"an entry of '{key}' has no kind and where"
            seen[(item["kind"], item["where"])] = None
        wheres.append(tuple(seen))
    example = {
        "method": str(request.get("method", "")),
        "path": request["path"],
        "query": str(request.get("query") or ""),
        "id": request.get("id") if isinstance(request.get("id"), str) else None,
    }
    return Record(
        time=obj["time"],
        rule=obj["rule"],
        canary=canary["name"],
        request=example,
        differences=wheres[0],
        noise=wheres[1],
    )


@dataclass(frozen=True, slots=True)
class BadLine:
    where: str  # `file:line`, or `URL: record N`
    problem: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceSpec:
    text: str  # as given on the command line
    kind: str  # "file", "stdin" or "url"
    target: str  # the path, "-" or the URL to GET


def classify(text: str) -> SourceSpec:
    """Decide what a SOURCE is; `UsageError` when it cannot be one."""
    if text == "-":
        return SourceSpec(text=text, kind="stdin", target="-")
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise UsageError(f"{text}: not an http:// or https:// admin URL")
        path = parts.path if parts.path not in ("", "/") else ADMIN_DIFFS_PATH
        url = urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))
        return SourceSpec(text=text, kind="url", target=url)
    if not Path(text).exists():
        raise UsageError(f"{text}: no such file")
    return SourceSpec(text=text, kind="file", target=text)


def read_source(spec: SourceSpec, stdin: IO[str] | None = None) -> Iterator[Record | BadLine]:
    """The records of one source, in order, with a `BadLine` for each unusable one.

    Raises `SourceError` when the source cannot be read at all.
    """
    if spec.kind == "url":
        for n, obj in enumerate(_fetch(spec.target), start=1):
            parsed = parse_record(obj)
            yield (
                BadLine(f"{spec.target}: record {n}", parsed) if isinstance(parsed, str) else parsed
            )
        return
    if spec.kind == "stdin":
        yield from _lines("<stdin>", stdin if stdin is not None else sys.stdin)
        return
    try:
        with open(spec.target, encoding="utf-8", errors="replace") as handle:
            yield from _lines(spec.target, handle)
    except OSError as exc:
        raise SourceError(f"{spec.text}: {exc.strerror or exc}") from None


def _lines(name: str, handle: IO[str]) -> Iterator[Record | BadLine]:
    number = 0
    while True:
        line = handle.readline(MAX_LINE_CHARS + 1)
        if not line:
            return
        number += 1
        if len(line) > MAX_LINE_CHARS:
            while line and not line.endswith("\n"):  # skip the rest without holding it
                line = handle.readline(MAX_LINE_CHARS)
            yield BadLine(f"{name}:{number}", "line too long for a diff record")
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError as exc:
            problem = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            yield BadLine(f"{name}:{number}", f"not JSON ({problem})")
            continue
        parsed = parse_record(obj)
        yield BadLine(f"{name}:{number}", parsed) if isinstance(parsed, str) else parsed


def _fetch(url: str) -> list[Any]:
    """GET an admin /diffs; httpx's exceptions become `SourceError` here and only here."""
    import httpx  # only for admin URLs: `sidecar --help` does not pay for it

    try:
        with (
            httpx.Client(timeout=FETCH_TIMEOUT_S, follow_redirects=False) as client,
            client.stream("GET", url, headers={"Accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise SourceError(f"{url}: HTTP {response.status_code} (expected 200)")
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_FETCH_BYTES:
                    raise SourceError(f"{url}: answer larger than {MAX_FETCH_BYTES >> 20} MiB")
    except httpx.TimeoutException:
        raise SourceError(f"{url}: no answer within {FETCH_TIMEOUT_S:g} s") from None
    except httpx.ConnectError as exc:
        raise SourceError(f"{url}: cannot connect ({_reason(exc)})") from None
    except httpx.HTTPError as exc:
        raise SourceError(f"{url}: {type(exc).__name__}: {_reason(exc)}") from None
    try:
        data = json.loads(body)
    except ValueError:
        raise SourceError(f"{url}: the answer is not JSON (is this an admin address?)") from None
    if not isinstance(data, list):
        raise SourceError(f"{url}: the answer is not a JSON list of diff records")
    return data


def _reason(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    match = re.search(r"\[Errno -?\d+\] (.*)$", text)
    return match.group(1) if match else text


# --- aggregation ------------------------------------------------------------------------------


@dataclass(slots=True)
class Stat:
    count: int = 0
    first: str = ""
    last: str = ""
    example: dict[str, Any] = field(default_factory=dict)

    def add(self, record: Record) -> None:
        self.count += 1
        if not self.first or record.time < self.first:
            self.first = record.time
            self.example = record.request
        self.last = max(self.last, record.time)


@dataclass(slots=True)
class Group:
    """One canary and rule."""

    records: Stat = field(default_factory=Stat)
    differences: dict[tuple[str, str], Stat] = field(default_factory=dict)
    noise: dict[tuple[str, str], Stat] = field(default_factory=dict)
    routes: dict[str, Stat] = field(default_factory=dict)
    route_wheres: dict[str, dict[tuple[str, str], int]] = field(default_factory=dict)


@dataclass(slots=True)
class SourceResult:
    source: str
    records: int = 0
    bad_lines: int = 0
    error: str | None = None


@dataclass(slots=True)
class Report:
    groups: dict[tuple[str, str], Group] = field(default_factory=dict)
    sources: list[SourceResult] = field(default_factory=list)

    def add(self, record: Record) -> None:
        group = self.groups.setdefault((record.canary, record.rule), Group())
        group.records.add(record)
        for key in record.differences:
            group.differences.setdefault(key, Stat()).add(record)
        for key in record.noise:
            group.noise.setdefault(key, Stat()).add(record)
        if record.differences:
            route = route_of(str(record.request["path"]))
            group.routes.setdefault(route, Stat()).add(record)
            counts = group.route_wheres.setdefault(route, {})
            for key in record.differences:
                counts[key] = counts.get(key, 0) + 1

    @property
    def records(self) -> int:
        return sum(s.records for s in self.sources)

    @property
    def bad_lines(self) -> int:
        return sum(s.bad_lines for s in self.sources)


def _stat_json(stat: Stat, total: int) -> dict[str, Any]:
    return {
        "count": stat.count,
        "share": round(stat.count / total, 4) if total else 0.0,
        "first": stat.first,
        "last": stat.last,
        "example": stat.example,
    }


def _by_count(items: Iterable[tuple[Any, Stat]]) -> list[tuple[Any, Stat]]:
    def key(item: tuple[Any, Stat]) -> tuple[int, int, str]:
        name, stat = item
        if isinstance(name, tuple):
            return (-stat.count, _KIND_ORDER.get(name[0], 9), name[1])
        return (-stat.count, 0, str(name))

    return sorted(items, key=key)


def suggestion(kind: str, where: str) -> str:
    if kind == "body":
        return f"ignore {json.dumps(where)}"
    if kind == "header":
        return f"drop {json.dumps(where)} from header"
    return "drop status"


def report_json(report: Report) -> dict[str, Any]:
    """The `--format json` document."""
    groups: list[dict[str, Any]] = []
    for (canary, rule), group in sorted(report.groups.items()):
        total = group.records.count
        differences = [
            {"kind": kind, "where": where, **_stat_json(stat, total)}
            for (kind, where), stat in _by_count(group.differences.items())
        ]
        routes = []
        for route, stat in _by_count(group.routes.items()):
            counts = group.route_wheres[route]
            (kind, where), top = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            routes.append(
                {
                    "route": route,
                    **_stat_json(stat, total),
                    "top": {"kind": kind, "where": where, "count": top},
                }
            )
        noise = []
        for (kind, where), stat in _by_count(group.noise.items()):
            as_diff = group.differences.get((kind, where))
            seen = stat.count + (as_diff.count if as_diff else 0)
            ratio = stat.count / seen
            noise.append(
                {
                    "kind": kind,
                    "where": where,
                    **_stat_json(stat, total),
                    "noise_ratio": round(ratio, 4),
                    "candidate": ratio == 1.0,
                    "suggestion": suggestion(kind, where) if ratio == 1.0 else None,
                }
            )
        groups.append(
            {
                "canary": canary,
                "rule": rule,
                "records": total,
                "first": group.records.first,
                "last": group.records.last,
                "differences": differences,
                "routes": routes,
                "noise": noise,
            }
        )
    return {
        "records": report.records,
        "bad_lines": report.bad_lines,
        "sources": [
            {"source": s.source, "records": s.records, "bad_lines": s.bad_lines, "error": s.error}
            for s in report.sources
        ],
        "groups": groups,
    }


# --- rendering --------------------------------------------------------------------------------


def _example(request: dict[str, Any]) -> str:
    text = f"{request.get('method', '')} {request.get('path', '')}".strip()
    if request.get("query"):
        text += f"?{request['query']}"
    if request.get("id"):
        text += f" (id {request['id']})"
    return text


def _pct(share: float) -> str:
    return f"{share * 100:.1f}%"


def render(doc: dict[str, Any], console: Console) -> None:
    """Tables per canary and rule, from the `report_json` document."""
    from rich.table import Table  # rich: only when printing a table

    for group in doc["groups"]:
        console.print(
            f"[bold]canary {group['canary']} · rule {group['rule']}[/bold]: "
            f"{group['records']} records, {group['first']} .. {group['last']}",
            highlight=False,
        )
        table = Table(title="differences by where", title_justify="left")
        for col in ("kind", "where", "count", "share", "first", "last", "example"):
            table.add_column(col, justify="right" if col in ("count", "share") else "left")
        for row in group["differences"][:MAX_ROWS_SHOWN]:
            table.add_row(
                row["kind"], row["where"], str(row["count"]), _pct(row["share"]),
                row["first"], row["last"], _example(row["example"]),
            )  # fmt: skip
        _print_table(console, table, len(group["differences"]))
        table = Table(title="differences by route", title_justify="left")
        for col in ("route", "count", "share", "most frequent", "first", "last", "example"):
            table.add_column(col, justify="right" if col in ("count", "share") else "left")
        for row in group["routes"][:MAX_ROWS_SHOWN]:
            top = row["top"]
            table.add_row(
                row["route"], str(row["count"]), _pct(row["share"]),
                f"{top['kind']} {top['where']} ({top['count']})",
                row["first"], row["last"], _example(row["example"]),
            )  # fmt: skip
        _print_table(console, table, len(group["routes"]))
        if group["noise"]:
            table = Table(title="noise (baseline differs too)", title_justify="left")
            for col in ("kind", "where", "count", "noise share", "hint"):
                table.add_column(
                    col, justify="right" if col in ("count", "noise share") else "left"
                )
            for row in group["noise"][:MAX_ROWS_SHOWN]:
                hint = (
                    f"always noise: candidate for {row['suggestion']}" if row["candidate"] else ""
                )
                table.add_row(
                    row["kind"], row["where"], str(row["count"]), _pct(row["noise_ratio"]), hint
                )
            _print_table(console, table, len(group["noise"]))
    sources = len(doc["sources"])
    failed = sum(1 for s in doc["sources"] if s["error"])
    summary = f"{doc['records']} records from {sources} source{'s' if sources != 1 else ''}"
    if doc["bad_lines"]:
        summary += f", {doc['bad_lines']} bad line{'s' if doc['bad_lines'] != 1 else ''} skipped"
    if failed:
        summary += f", {failed} source{'s' if failed != 1 else ''} failed"
    console.print(summary, highlight=False)


def _print_table(console: Console, table: Any, total: int) -> None:
    console.print(table)
    if total > MAX_ROWS_SHOWN:
        console.print(f"  ... and {total - MAX_ROWS_SHOWN} more (--format json has all)")


# --- the command ------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "sources",
        nargs="+",
        metavar="SOURCE",
        help="a JSON-lines file of diff records, - for standard input, or an admin URL",
    )
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default text)"
    )


def run(args: argparse.Namespace) -> int:
    try:
        specs = [classify(text) for text in args.sources]
        if sum(1 for s in specs if s.kind == "stdin") > 1:
            raise UsageError("-: standard input can be read only once")
    except UsageError as exc:
        print(f"sidecar diffs: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    report = collect(specs)
    doc = report_json(report)
    if args.format == "json":
        print(json.dumps(doc, indent=2, ensure_ascii=False))
    else:
        from rich.console import Console  # rich: only when printing a table

        width = None if sys.stdout.isatty() else PIPE_WIDTH_COLS
        render(doc, Console(width=width, soft_wrap=False))
    return EXIT_FAILURE if any(s.error for s in report.sources) else EXIT_OK


def collect(specs: Iterable[SourceSpec], stdin: IO[str] | None = None) -> Report:
    """Read every source into one report; failures and bad lines go to stderr as they come."""
    report = Report()
    shown = 0
    for spec in specs:
        result = SourceResult(source=spec.text)
        report.sources.append(result)
        try:
            for item in read_source(spec, stdin):
                if isinstance(item, BadLine):
                    result.bad_lines += 1
                    if shown < MAX_BAD_LINES_SHOWN:
                        print(f"{item.where}: warning: skipped: {item.problem}", file=sys.stderr)
                    shown += 1
                    continue
                result.records += 1
                report.add(item)
        except SourceError as exc:
            result.error = str(exc)
            print(f"sidecar diffs: error: {exc}", file=sys.stderr)
    if shown > MAX_BAD_LINES_SHOWN:
        print(f"... and {shown - MAX_BAD_LINES_SHOWN} more bad lines", file=sys.stderr)
    return report
