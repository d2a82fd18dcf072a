"""Spreading one canary's tees over its servers: smooth weighted round-robin, connection
shares, and the connect back-off that skips a server whose connect just failed."""

from __future__ import annotations

import asyncio
import contextlib
import math
import ssl
from collections.abc import Callable, Sequence

from sidecar.http.client import ConnectError, ConnectionPool
from sidecar.http.tls import client_context
from sidecar.model.endpoint import Endpoint
from sidecar.model.tls import TlsSpec
from sidecar.shadow.compare.capture import Capture
from sidecar.shadow.types import ShadowRequest

# A server whose connect failed is not tried again for a short window, during which its
# tees end at once as `failed` ("connect"): a dead canary then costs an admission and a
# counter per tee instead of a connect attempt each (nginx: max_fails / fail_timeout). The
# window doubles while connects keep failing, up to the maximum; a success resets it. When
# the window ends, ONE tee tries the server (a circuit breaker's half-open state): until
# that trial ends the server stays skipped, so a dead canary under load costs one connect
# attempt per window, not one per tee that arrives before the first attempt fails.
CONNECT_BACKOFF_S = 0.05
CONNECT_BACKOFF_MAX_S = 1.0


class SmoothWeightedRoundRobin:
    """nginx's smooth weighted round-robin: deterministic, spreads picks evenly."""

    __slots__ = ("_current", "_total", "_weights")

    def __init__(self, weights: Sequence[int]) -> None:
        self._weights = list(weights)
        self._current = [0] * len(weights)
        self._total = sum(weights)

    def pick(self) -> int:
        best = 0
        current = self._current
        for i, w in enumerate(self._weights):
            current[i] += w
            if current[i] > current[best]:
                best = i
        current[best] -= self._total
        return best


def connection_shares(weights: Sequence[int], workers: int) -> list[int] | None:
    """Per-server connection caps summing to `workers` (largest remainder by weight, each
    at least 1); None when there are more servers than workers."""
    n = len(weights)
    if n > workers:
        return None
    shares = [1] * n
    spare = workers - n
    total = sum(weights)
    exact = [spare * w / total for w in weights]
    floors = [math.floor(x) for x in exact]
    rest = spare - sum(floors)
    order = sorted(range(n), key=lambda i: (floors[i] - exact[i], i))
    for i in range(n):
        shares[i] += floors[i] + (1 if i in order[:rest] else 0)
    return shares


def tls_context(spec: TlsSpec | None) -> ssl.SSLContext:
    """The client context of a primary's or canary's https servers (`tls` block or defaults);
    built once per primary or canary: loading the trust store costs milliseconds."""
    if spec is None:
        return client_context()
    return client_context(ca=spec.ca, verify=spec.verify, cert=spec.cert, key=spec.key)


class Server:
    """One server of a canary: its connection pool (made on first use) and back-off."""

    __slots__ = (
        "_on_window",
        "backoff",
        "down_until",
        "endpoint",
        "ephemeral_open",
        "host",
        "max_connections",
        "on_trial",
        "pool",
        "server_name",
        "ssl_context",
    )

    def __init__(
        self,
        endpoint: Endpoint,
        max_connections: int | None,
        *,
        ssl_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
        on_window: Callable[[], None] | None = None,
    ) -> None:
        """`ssl_context`/`server_name`: for an https endpoint (see ConnectionPool);
        `on_window`: called whenever `down_until` changes (the pool's aggregate)."""
        self.endpoint = endpoint
        self.ssl_context = ssl_context
        self.server_name = server_name
        self.host = endpoint.authority.encode("ascii")
        self.max_connections = max_connections  # None: a throw-away pool per request
        self.pool: ConnectionPool | None = None
        self.down_until = 0.0  # loop time until which this server is not tried (refused)
        self.backoff = 0.0  # the current window; 0: the last connect succeeded
        self.on_trial = False  # a send is trying the server after its window (down_until inf)
        self._on_window = on_window
        self.ephemeral_open = 0  # throw-away pools' connections (more servers than workers)

    @property
    def open_connections(self) -> int:
        pooled = self.pool.open_connections if self.pool is not None else 0
        return pooled + self.ephemeral_open

    async def send(self, request: ShadowRequest, capture: Capture | None = None) -> int | None:
        """Send with this server's pool (or a throw-away one) and read the response to the
        end (into `capture` when given); a refused connect starts or extends the back-off,
        any answer resets it. The first send after a window is the trial (see
        CONNECT_BACKOFF_S): the server is skipped until it ends."""
        trial = self.backoff > 0.0 and not self.on_trial
        if trial:
            self.on_trial = True
            self._window(math.inf)
        try:
            if self.max_connections is None:
                pool = self._new_pool(1)
                self.ephemeral_open += 1
                try:
                    status = await _exchange(pool, request, capture)
                finally:
                    self.ephemeral_open -= 1
                    await pool.aclose()
            else:
                if self.pool is None:
                    self.pool = self._new_pool(self.max_connections)
                status = await _exchange(self.pool, request, capture)
        except ConnectError:
            if trial and self.on_trial:
                self.on_trial = False
                self.down_until = 0.0  # the trial's window is over: a new, longer one
            self.refused(asyncio.get_running_loop().time())
            raise
        except BaseException:
            if trial and self.on_trial:  # cut before it connected (its deadline): try again
                self.on_trial = False
                self._window(0.0)
            raise
        self._connected()
        return status

    def _connected(self) -> None:
        """The server took a connection (or answered on one): no back-off, no trial."""
        self.backoff = 0.0
        if self.on_trial:
            self.on_trial = False
            self._window(0.0)

    def _window(self, until: float) -> None:
        self.down_until = until
        if self._on_window is not None:
            self._on_window()

    def _new_pool(self, max_connections: int) -> ConnectionPool:
        return ConnectionPool(
            self.endpoint,
            max_connections=max_connections,
            ssl_context=self.ssl_context,
            server_name=self.server_name,
            on_connect=self._connected,
        )

    async def aclose(self) -> None:
        pool, self.pool = self.pool, None
        if pool is not None:
            with contextlib.suppress(Exception):
                await pool.aclose()

    def refused(self, now: float) -> None:
        """A connect failed: skip this server for a window that grows while they fail."""
        if now < self.down_until:
            return  # one of several concurrent attempts: the window is already set
        self.backoff = min(self.backoff * 2, CONNECT_BACKOFF_MAX_S) or CONNECT_BACKOFF_S
        self._window(now + self.backoff)


async def _exchange(
    pool: ConnectionPool, request: ShadowRequest, capture: Capture | None = None
) -> int:
    """One round trip; the response is read to the end, into `capture` when given (which
    keeps at most its spec's `max_body`), else discarded."""
    resp = await pool.request(request.method, request.target, request.headers, request.body)
    try:
        if capture is None:
            await resp.drain()
        else:
            capture.start(resp.status, resp.headers)
            async for chunk in resp.aiter_bytes():
                capture.feed(chunk)
    except BaseException:
        await resp.aclose()
        raise
    return int(resp.status)
