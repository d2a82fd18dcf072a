"""The engine's values: what a tee carries in and what comes out of it.

`ClientRequest` and its `Body` copy (shared by all tees of a request), the admitted
`Job`, the `ShadowRequest` a custom chain receives, and the `Outcome` / `MirrorInfo` /
`Stats` the pool reports. Shared by the pool, the tees, the metrics and the library
middleware; no behaviour here.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from sidecar.http.headers import Headers
from sidecar.shadow.errors import ErrorKind

if TYPE_CHECKING:
    from sidecar.shadow.compare.capture import Capture
    from sidecar.shadow.compare.rendezvous import Rendezvous


class Outcome(enum.Enum):
    DISPATCHED = "dispatched"
    COMPLETED = "completed"
    FAILED = "failed"
    PANICKED = "panicked"
    DROPPED_FULL = "dropped_full"
    DROPPED_OVERSIZE = "dropped_oversize"
    DROPPED_RATE = "dropped_rate"
    DROPPED_ABORTED = "dropped_aborted"
    # Library only: the app answered without reading the whole body and the server would not
    # deliver the rest afterwards (uvicorn discards it), so the body to mirror is unknown.
    DROPPED_UNREAD = "dropped_unread"
    # The canary is paused (`pause after N failures for D`): refused at admission.
    DROPPED_PAUSED = "dropped_paused"

    # Members are singletons: hash by identity in C (Enum.__hash__ is a Python call, and
    # every tee bumps several dicts keyed by its outcome).
    __hash__ = object.__hash__


@dataclass(frozen=True, slots=True)
class MirrorInfo:
    """One outcome of one tee. `status`/`duration` when completed; `error` when failed/panicked;
    `error_kind` (connect, timeout, tls, reset, protocol) when a failed tee tried the canary."""

    # Field order as the library API lists them (positional construction follows it); the
    # kind came later, so it is last.
    outcome: Outcome
    status: int | None = None
    duration: float | None = None
    canary: str = ""
    rule: str | None = None
    error: str | None = None
    error_kind: ErrorKind | None = None


class Stats(NamedTuple):
    dispatched: int = 0
    completed: int = 0
    failed: int = 0
    panicked: int = 0
    dropped_full: int = 0
    dropped_oversize: int = 0
    dropped_rate: int = 0
    dropped_aborted: int = 0
    dropped_unread: int = 0
    dropped_paused: int = 0
    # Comparison results (Mirror.stats() with `compare`; 0 otherwise and per pool).
    match: int = 0
    diff: int = 0
    skipped: int = 0


Observe = Callable[[MirrorInfo], None]

# Failure reasons (MirrorInfo.error for `failed`).
ERR_EXPIRED = "deadline expired in queue"
ERR_TIMEOUT = "timeout"
ERR_CONNECT = "connect"
ERR_RESET = "reset"
ERR_PROTOCOL = "protocol"
ERR_ABANDONED = "abandoned at shutdown"


class Body:
    """A request body copy shared by all tees of one request: chunk objects, joined once."""

    __slots__ = ("_joined", "chunks", "length")

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.length = 0
        self._joined: bytes | None = None

    def bytes(self) -> bytes:
        if self._joined is None:
            self._joined = b"".join(self.chunks)
            self.chunks = [self._joined]
        return self._joined


@dataclass(frozen=True, slots=True)
class ClientRequest:
    """The client's request as the tees need it; shared by all tees, never mutated."""

    method: str
    raw_path: bytes
    query_string: bytes
    headers: Sequence[tuple[bytes, bytes]]
    client: str | None
    scheme: str


class Job:
    """One admitted tee: the request, its body copy (None: no body), rule and deadline."""

    __slots__ = ("body", "deadline", "rendezvous", "request", "rule")

    def __init__(
        self,
        request: ClientRequest,
        body: Body | None,
        rule: str | None,
        rendezvous: Rendezvous | None = None,
    ) -> None:
        self.request = request
        self.body = body
        self.rule = rule
        self.deadline = 0.0  # loop time; set by dispatch()
        # Set when this tee's response is compared (or is a baseline): whoever settles the
        # job calls `rendezvous.canary_done(canary, captured_or_None)` exactly once.
        self.rendezvous = rendezvous


@dataclass(frozen=True, slots=True)
class ShadowRequest:
    """What a chain receives: the shadow request as it goes on the wire."""

    method: bytes
    target: bytes
    headers: Headers
    body: bytes
    canary: str
    rule: str | None


# A custom destination (library `Mirror.use(callable)`): returns the response status.
Chain = Callable[[ShadowRequest], Awaitable[int | None]]


class Transport(Protocol):
    """Where a worker sends a shadow request: one server of the canary (`balance.Server`)
    or a library chain (`pool.ChainTransport`). The pool picks one and calls `send`."""

    @property
    def host(self) -> bytes | None:
        """The Host a shadow request gets when the client's is not kept (None: the client's)."""
        ...

    @property
    def down_until(self) -> float:
        """Loop time until which this transport is in its connect back-off (0: never was)."""
        ...

    @property
    def open_connections(self) -> int: ...

    async def send(self, request: ShadowRequest, capture: Capture | None = None) -> int | None:
        """The response status (None when there is none), the response read into `capture`
        when given; raises what the send raised."""
        ...

    async def aclose(self) -> None: ...
