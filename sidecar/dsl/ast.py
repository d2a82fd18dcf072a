"""The syntax tree of `.mirror` files: frozen nodes that keep their source span.

The statement nodes live here; the predicate nodes (`Test`, `Not`, `And`, `Or`,
`Group`, `Expr`) and the `Str`/`Name` leaves they hold are the model's
(`sidecar.model.expr`), re-exported so the parser and `fmt` see one tree.

The transformer builds these and nothing else; it never raises. Values keep the
text the user wrote (`raw`) next to their meaning so that `fmt` can print
`1MiB` as `1MiB`, and so that diagnostics can quote them. Validation and
compilation read these nodes; they never re-read the source text.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sidecar.diagnostics import Span
from sidecar.model.expr import And as And
from sidecar.model.expr import Expr as Expr
from sidecar.model.expr import Group as Group
from sidecar.model.expr import Name as Name
from sidecar.model.expr import Not as Not
from sidecar.model.expr import Op as Op
from sidecar.model.expr import Or as Or
from sidecar.model.expr import SampleKey as SampleKey
from sidecar.model.expr import Str as Str
from sidecar.model.expr import Subject as Subject
from sidecar.model.expr import Test as Test

# --- values -------------------------------------------------------------------


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


# --- TLS: the `tls { ... }` block of a primary or canary, and `listen`'s certificate ---


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsCa:
    """`ca "ca.pem"`: trust these CAs (a PEM bundle) instead of the system's store."""

    path: Str  # as written; relative to the rule file's directory
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsVerify:
    """`verify on` / `verify off`: check the server's certificate and name (default on)."""

    on: bool
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsCert:
    """`cert "x.pem"`: a certificate chain (PEM); a client certificate, or `listen`'s."""

    path: Str
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsKey:
    """`key "x.key"`: the private key (PEM) of the `cert` beside it."""

    path: Str
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsServerName:
    """`server_name "api.internal"`: the SNI sent and the name checked."""

    name: Str
    span: Span


TlsStatement = TlsCa | TlsVerify | TlsCert | TlsKey | TlsServerName


@dataclass(frozen=True, slots=True, kw_only=True)
class Tls:
    """`tls { ... }` inside a primary or canary."""

    statements: tuple[TlsStatement, ...]
    span: Span


# --- top level statements -------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Listen:
    address_raw: str  # as written: `0.0.0.0:8080`, `[::1]:8080`, `localhost:8080`
    span: Span
    # `listen ADDR { cert "..." key "..." }`: TLS for clients. `braces`: written with a block.
    statements: tuple[TlsCert | TlsKey, ...] = ()
    braces: bool = False
    # The ADDRESS token (None: the statement's last token); not part of equality.
    address_span: Span | None = field(default=None, compare=False)


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


PrimaryStatement = PrimaryTimeout | PrimaryIdleTimeout | Tls


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


@dataclass(frozen=True, slots=True, kw_only=True)
class Pause:
    """`pause after N failures for DURATION`."""

    failures: Number
    duration: Duration
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
    | Pause
    | Tls
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Canary:
    name: Name
    statements: tuple[CanaryStatement, ...]
    span: Span


# --- rules ------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestId:
    """`request_id "X-Request-Id"`: the header name as written."""

    header: Str
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class HostServer:
    """`server uvicorn`: the HTTP server that hosts the proxy listener (the name as written)."""

    name: Name
    span: Span


TopLevel = (
    Listen | Admin | Primary | Canary | MirrorRule | Exclude | DiffLog | RequestId | HostServer
)


@dataclass(frozen=True, slots=True, kw_only=True)
class File:
    """One parsed `.mirror` file."""

    path: str  # as displayed in diagnostics
    statements: tuple[TopLevel, ...]
    comments: tuple[Comment, ...]
