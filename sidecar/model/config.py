"""The validated configuration: what the rule files mean, free of syntax.

`sidecar.dsl.load()` produces a `Config` only when there are no errors; every
invariant below has already been reported as a diagnostic by then, so the
constructors here only guard against programming mistakes. The engine
(`pool`, `mirror`) needs nothing but `CanarySpec`; the library API builds one
from its keyword arguments. The routing table (`routing.compile`) is built from
`Config.rules` and `Config.excludes`, which still hold the predicate AST.
"""

from __future__ import annotations

from dataclasses import dataclass

from sidecar.diagnostics import Span
from sidecar.model.compare import CompareSpec
from sidecar.model.endpoint import Endpoint
from sidecar.model.expr import Expr, SampleKey
from sidecar.model.tls import ListenTlsSpec as ListenTlsSpec
from sidecar.model.tls import TlsSpec as TlsSpec

# The configuration `check`, `serve`, `explain`, `fmt` and the rest read when given no PATH.
DEFAULT_RULES = "rules/"
DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_ADMIN = "127.0.0.1:9901"
# The HTTP servers that can host the proxy listener (`server NAME`, `serve --server`).
SERVERS = ("hypercorn", "uvicorn")
DEFAULT_SERVER = "hypercorn"
# The primary's two clocks: until the response head arrives, and the longest pause in
# either body once it streams (nginx's proxy_read_timeout and send_timeout are 60 s too).
DEFAULT_PRIMARY_TIMEOUT_S = 60.0
DEFAULT_PRIMARY_IDLE_TIMEOUT_S = 60.0

# Canary defaults , shared with the library API.
DEFAULT_WORKERS = 8
DEFAULT_QUEUE = 256
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_MAX_BODY_BYTES = 1 << 20  # 1 MiB: big enough for API payloads, small enough to hold many
DEFAULT_MARK = ("X-Mirror", "1")
MAX_WORKERS = 1024


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
class PauseSpec:
    """`pause after N failures for DURATION`: N consecutive `failed` tees pause the canary."""

    failures: int
    duration_s: float

    def __post_init__(self) -> None:
        if self.failures < 1:
            raise ValueError("pause needs at least one failure")
        if self.duration_s <= 0:
            raise ValueError("pause duration must be > 0")


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
    # Part of the spec's equality: a reload that changes the `compare` block gives the
    # canary a new pool, like any other change to its block.
    compare: CompareSpec | None = None  # None: responses are not compared
    pause: PauseSpec | None = None  # None: never paused (the connect back-off still applies)
    tls: TlsSpec | None = None  # None: https servers verified against the system trust store

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
    tls: TlsSpec | None = None  # None: an https primary is verified against the system store

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.idle_timeout_s <= 0:
            raise ValueError("timeouts must be > 0")


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleSpec:
    rate: float  # (0, 1]
    by: SampleKey | None  # None: random draw
    key: str | None  # header/cookie/query name (header names lower-cased)


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleSpec:
    name: str
    when: Expr | None
    sample: SampleSpec | None
    to: tuple[str, ...]  # canary names, in written order, no duplicates
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class ExcludeSpec:
    when: Expr
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class SourceFile:
    path: str
    sha256: str  # hex digest of the file's bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    listen: str = DEFAULT_LISTEN  # host:port ([v6]:port)
    listen_tls: ListenTlsSpec | None = None  # None: plain HTTP (and h2c) for clients
    admin: str | None = DEFAULT_ADMIN  # None: `admin off`
    primary: PrimarySpec | None = None
    canaries: tuple[CanarySpec, ...] = ()  # in configuration order
    rules: tuple[RuleSpec, ...] = ()  # in configuration order
    excludes: tuple[ExcludeSpec, ...] = ()
    sources: tuple[SourceFile, ...] = ()
    sha256: str = ""  # over all sources, in order: sidecar_rules_info{hash}
    diff_log: str | None = None  # "stderr", or an absolute path; None: records stay in /diffs
    request_id: str | None = None  # the request id header, lower-case; None: no request ids
    server: str = DEFAULT_SERVER  # one of SERVERS: the proxy listener's HTTP server
