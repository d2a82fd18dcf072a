"""The validated configuration: what the rule files mean, free of syntax.

`sidecar.dsl.load()` produces a `Config` only when there are no errors; every
invariant below has already been reported as a diagnostic by then, so the
constructors here only guard against programming mistakes. The engine
(`pool`, `mirror`) needs nothing but `CanarySpec`; the library API builds one
from its keyword arguments. The routing table (`routing.compile`) is built from
`Config.rules` and `Config.excludes`, which still hold the predicate AST.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import urlsplit

from sidecar.compare import CompareSpec
from sidecar.diagnostics import Span
from sidecar.dsl import ast

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_ADMIN = "127.0.0.1:9901"
# The primary's two clocks: until the response head arrives, and the longest pause in
# either body once it streams (nginx's proxy_read_timeout and send_timeout are 60 s too).
DEFAULT_PRIMARY_TIMEOUT_S = 60.0
DEFAULT_PRIMARY_IDLE_TIMEOUT_S = 60.0

# Canary defaults (SPEC section 3), shared with the library API.
DEFAULT_WORKERS = 8
DEFAULT_QUEUE = 256
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: big enough for API payloads, small enough to hold many
DEFAULT_MARK = ("X-Mirror", "1")
MAX_WORKERS = 1024

# RFC 1035/1123 host names: labels of letters, digits and hyphens, not starting or
# ending with a hyphen, 1..63 characters each, at most 253 in all. Underscores are
# allowed inside a label too: Docker Compose service names and SRV-style names use them,
# and resolvers accept them.
_DNS_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
MAX_HOSTNAME_CHARS = 253


def host_problem(host: str) -> str | None:
    """None when `host` is a valid host for an address or URL, else what is wrong.

    The one host check of the configuration (addresses, URLs, `--listen`...):
    `[v6]` (bracketed IPv6), dotted-decimal IPv4 (anything all-numeric must be a
    valid IPv4 address: `999.1.1.1` and `1.2.3` are not), or a DNS name.
    """
    if not host:
        return "the host is missing"
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            return f'"{host}" is missing a "[" or "]"'
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f'"{host[1:-1]}" is not an IPv6 address'
        return None
    labels = host.removesuffix(".").split(".")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f'"{host}" is not an IPv4 address'
        return None
    if len(host) > MAX_HOSTNAME_CHARS or not all(_DNS_LABEL.match(label) for label in labels):
        return f'"{host}" is not a valid host name (letters, digits, underscores and inner hyphens per label)'
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """An http(s) origin: scheme, host and port, no path."""

    scheme: Literal["http", "https"]
    host: str  # without brackets for IPv6
    port: int

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Parse an origin URL; raises ValueError saying what is wrong."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"URL scheme must be http or https, not {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError("URL has no host")
        problem = host_problem(f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname)
        if problem:
            raise ValueError(problem)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("URL must not have a path, query or fragment")
        if parts.username or parts.password:
            raise ValueError("URL must not carry credentials")
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"invalid port: {exc}") from None
        if port is None:
            port = 443 if parts.scheme == "https" else 80
        if port == 0:
            raise ValueError("invalid port 0")
        scheme: Literal["http", "https"] = "https" if parts.scheme == "https" else "http"
        return cls(scheme=scheme, host=parts.hostname, port=port)

    @property
    def authority(self) -> str:
        """`host:port` as a Host header would carry it (IPv6 bracketed, default port omitted)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}"


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerSpec:
    endpoint: Endpoint
    weight: int = 1

    def __post_init__(self) -> None:
        if self.weight < 1:
            raise ValueError("weight must be at least 1")


@dataclass(frozen=True, slots=True, kw_only=True)
class SetHeader:
    name: str
    value: str


@dataclass(frozen=True, slots=True, kw_only=True)
class DropHeader:
    names: tuple[str, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class RewritePath:
    pattern: str  # a Python regex, already known to compile
    replacement: str


Transform = SetHeader | DropHeader | RewritePath


@dataclass(frozen=True, slots=True, kw_only=True)
class RateSpec:
    """A token bucket: holds at most `burst` tokens, refilled at `per_second`."""

    burst: float
    per_second: float


@dataclass(frozen=True, slots=True, kw_only=True)
class CanarySpec:
    """Everything one canary's pool needs. Equal specs mean an unchanged canary (reload)."""

    name: str
    servers: tuple[ServerSpec, ...]
    workers: int = DEFAULT_WORKERS
    queue: int = DEFAULT_QUEUE
    timeout_s: float = DEFAULT_TIMEOUT_S
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body: bool = True
    mark: tuple[str, str] | None = DEFAULT_MARK  # (header, value); None: `mark off`
    rate: RateSpec | None = None
    host: str | None = None  # None: preserve the client's Host
    transforms: tuple[Transform, ...] = ()
    compare: CompareSpec | None = None  # None: its responses are not compared

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("a canary needs at least one server")
        if not 1 <= self.workers <= MAX_WORKERS:
            raise ValueError(f"workers must be in 1..{MAX_WORKERS}")
        if self.queue < 0:
            raise ValueError("queue must be >= 0")
        if self.timeout_s <= 0:
            raise ValueError("timeout must be > 0")
        if self.max_body_bytes < 0:
            raise ValueError("max_body must be >= 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class PrimarySpec:
    endpoint: Endpoint
    timeout_s: float = DEFAULT_PRIMARY_TIMEOUT_S  # until the response head arrives
    idle_timeout_s: float = DEFAULT_PRIMARY_IDLE_TIMEOUT_S  # longest pause in either body

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.idle_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleSpec:
    rate: float  # (0, 1]
    by: ast.SampleKey | None  # None: random draw
    key: str | None  # header/cookie/query name (header names lower-cased)


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleSpec:
    name: str
    when: ast.Expr | None
    sample: SampleSpec | None
    to: tuple[str, ...]  # canary names, in written order, no duplicates
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class ExcludeSpec:
    when: ast.Expr
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceFile:
    path: str
    sha256: str  # hex digest of the file's bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    listen: str = DEFAULT_LISTEN  # host:port ([v6]:port)
    admin: str | None = DEFAULT_ADMIN  # None: `admin off`
    primary: PrimarySpec | None = None
    canaries: tuple[CanarySpec, ...] = ()  # in configuration order
    rules: tuple[RuleSpec, ...] = ()  # in configuration order
    excludes: tuple[ExcludeSpec, ...] = ()
    sources: tuple[SourceFile, ...] = ()
    sha256: str = ""  # over all sources, in order: sidecar_rules_info{hash}
    diff_log: str | None = None  # "stderr" or an absolute path; None: records kept in memory only
    canary_index: dict[str, CanarySpec] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.canary_index and self.canaries:
            object.__setattr__(self, "canary_index", {c.name: c for c in self.canaries})
