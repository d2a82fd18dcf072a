"""The syntax tree of `.mirror` files: frozen nodes that keep their source span.

The transformer builds these and nothing else; it never raises. Values keep the
text the user wrote (`raw`) next to their meaning so that `fmt` can print
`1MiB` as `1MiB`, and so that diagnostics can quote them. Validation and
compilation read these nodes; they never re-read the source text.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sidecar.diagnostics import Span

# --- values -------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Str:
    """A double-quoted string, unescaped."""

    value: str
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Name:
    """A bare identifier (canary or rule name, or an HTTP method word)."""

    value: str
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Number:
    """A bare number as written (`8`, `0.125`); `value` is None if it does not parse."""

    raw: str
    value: float | None
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Duration:
    raw: str  # as written: "250ms", "1.5s"
    seconds: float | None  # None when invalid (validation reports it)
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Size:
    raw: str  # as written: "1MiB"
    bytes: int | None  # None when invalid
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Ratio:
    """A rate as a percentage (`12.5%`) or a fraction (`0.125`)."""

    raw: str
    value: float | None  # the fraction in [0, 1] ... or outside, validation decides
    span: Span


# --- top level statements -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Listen:
    address_raw: str  # as written: `0.0.0.0:8080`, `[::1]:8080`, `localhost:8080`
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Admin:
    address_raw: str | None  # None means `admin off`
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryTimeout:
    """`timeout`: from the request sent until the response head arrives."""

    duration: Duration
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimaryIdleTimeout:
    """`idle_timeout`: the longest pause in either body (upload or response)."""

    duration: Duration
    span: Span


PrimaryStatement = PrimaryTimeout | PrimaryIdleTimeout


@dataclass(frozen=True, slots=True, kw_only=True)
class Primary:
    url: str
    url_span: Span
    statements: tuple[PrimaryStatement, ...]
    span: Span


# --- canary statements ------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Server:
    url: str
    url_span: Span
    weight: Number | None
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Workers:
    count: Number
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Queue:
    size: Number
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Timeout:
    duration: Duration
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class MaxBody:
    size: Size
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Body:
    on: bool
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Mark:
    header: Str | None  # None with value None means `mark off`
    value: Str | None
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class RateLimit:
    """`rate 200/s` or `rate 50/m`."""

    count: Number
    per: Literal["s", "m"]
    raw: str
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Host:
    value: Str | None  # None means `host preserve`
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class SetHeader:
    name: Str
    value: Str
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class DropHeader:
    names: tuple[Str, ...]
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class RewritePath:
    pattern: Str
    replacement: Str
    span: Span


# --- the `compare` block inside a canary ---------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareStatus:
    """`status`: the status codes must be equal."""

    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareHeader:
    """`header "A", "B"`: these headers' values must be equal."""

    names: tuple[Str, ...]
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareBody:
    mode: Literal["bytes", "json"]
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareIgnore:
    """`ignore "$.a", "$.b[*].id"`: RFC 9535 JSONPath queries, as written (not yet checked)."""

    paths: tuple[Str, ...]
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareSample:
    rate: Ratio
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareBaseline:
    """`baseline NAME`: the canary running the primary's version (noise removal)."""

    name: Name
    span: Span


# `max_body` is the canary statement's node (the same syntax), here meaning the json body limit.
CompareStatement = (
    CompareStatus
    | CompareHeader
    | CompareBody
    | CompareIgnore
    | MaxBody
    | CompareSample
    | CompareBaseline
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Compare:
    """`compare { ... }` inside a canary."""

    statements: tuple[CompareStatement, ...]
    span: Span


CanaryStatement = (
    Server
    | Workers
    | Queue
    | Timeout
    | MaxBody
    | Body
    | Mark
    | RateLimit
    | Host
    | SetHeader
    | DropHeader
    | RewritePath
    | Compare
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Canary:
    name: Name
    statements: tuple[CanaryStatement, ...]
    span: Span


# --- predicates ------------------------------------------------------------------

Subject = Literal["method", "path", "host", "header", "query", "cookie", "client"]
# `==` `!=` `^=` `$=` `*=` `~` `!~` `in` `exists`
Op = Literal["==", "!=", "^=", "$=", "*=", "~", "!~", "in", "exists"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Test:
    """One comparison: `path ^= "/api/"`, `header "X-Debug" exists`, `method in (GET, HEAD)`.

    `key` is the header/query/cookie name (None for method, path, host, client).
    `args` are the operands: empty for `exists`, one for the binary operators,
    one or more for `in`. Method operands are `Name`s, all others `Str`s.
    `text` is the clause's source text, quoted by `explain`.
    """

    subject: Subject
    key: Str | None
    op: Op
    args: tuple[Str | Name, ...]
    text: str
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Not:
    operand: Expr
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class And:
    operands: tuple[Expr, ...]  # two or more, flattened
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Or:
    operands: tuple[Expr, ...]  # two or more, flattened
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Group:
    """A parenthesised expression; kept so that `fmt` can print the user's parentheses."""

    inner: Expr
    span: Span


Expr = Test | Not | And | Or | Group


# --- rules ------------------------------------------------------------------------

SampleKey = Literal["header", "cookie", "query", "client"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Sample:
    rate: Ratio
    by: SampleKey | None  # None: a fresh random draw per request
    key: Str | None  # the header/cookie/query name; None for `by client` or random
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class When:
    expr: Expr
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class To:
    canaries: tuple[Name, ...]
    span: Span


MirrorStatement = When | Sample | To


@dataclass(frozen=True, slots=True, kw_only=True)
class MirrorRule:
    name: Name
    statements: tuple[MirrorStatement, ...]
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Exclude:
    expr: Expr
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Comment:
    """A `#` comment; `trailing` when code precedes it on its line. Used by `fmt`."""

    text: str  # including the leading '#'
    trailing: bool
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class DiffLog:
    """`diff_log "path.jsonl"` (the path as written) or `diff_log stderr` (path None)."""

    path: Str | None
    span: Span


TopLevel = Listen | Admin | Primary | Canary | MirrorRule | Exclude | DiffLog


@dataclass(frozen=True, slots=True, kw_only=True)
class File:
    """One parsed `.mirror` file."""

    path: str  # as displayed in diagnostics
    statements: tuple[TopLevel, ...]
    comments: tuple[Comment, ...]
