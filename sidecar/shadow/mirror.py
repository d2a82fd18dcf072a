"""The library API: request shadowing as an ASGI middleware.

    mirror = Mirror(match=lambda r: r.method == "GET", sample_rate=0.1, observe=prom.observe)
    mirror.use(Upstream("http://canary:8080"))
    app = mirror.wrap(app)

Each distinct `Upstream` name (default: its URL) is one canary with its own `CanaryPool`;
several `Upstream`s given the same name are that canary's servers (smooth weighted
round-robin by `weight`). `use()` also takes an async callable `chain(ShadowRequest) ->
status`, a custom destination run by the pool's workers under the job's deadline.

The wrapped app's request body streams through untouched: `receive` is wrapped so every
chunk the app reads is also fed to the request's `RequestTees` (kept by reference, capped at
`max_body_bytes`); a disconnect before the body was whole is `dropped_aborted`.

When the app returns without reading the whole body, the rest is read (up to the cap) for
the mirror, as hypercorn delivers it. uvicorn does not: once the response is complete its
`receive` only returns `http.disconnect` and the unread body is discarded. A disconnect
after the app's response was complete is therefore not an abort: the tees are admitted if
what was received is the whole declared `Content-Length`, else they end as `dropped_unread`.
The middleware never holds the app's response back to read the body first: that would make
the client's answer wait for its own upload (unbounded in time for a slow client, and with
`Expect: 100-continue` it would make the server send `100 Continue` the app chose not to).
"""

from __future__ import annotations

import logging
import math
import random as _random_module
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sidecar.asgi import ASGIApp, Message, Receive, Scope, Send
from sidecar.http.syntax import is_token
from sidecar.model.config import (
    DEFAULT_MARK,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_QUEUE,
    DEFAULT_TIMEOUT_S,
    DEFAULT_WORKERS,
    MAX_WORKERS,
    CanarySpec,
    PauseSpec,
    ServerSpec,
)
from sidecar.model.endpoint import Endpoint
from sidecar.routing.request import RequestView
from sidecar.shadow.compare.library import Compare, LibraryResults, OnDiff
from sidecar.shadow.compare.primary import PrimaryCapture
from sidecar.shadow.pool import CanaryPool
from sidecar.shadow.tees import RequestTees
from sidecar.shadow.types import Chain, MirrorInfo, Observe, Outcome, ShadowRequest, Stats

__all__ = ["Compare", "Mirror", "MirrorInfo", "Outcome", "ShadowRequest", "Stats", "Upstream"]

log = logging.getLogger("sidecar.mirror")

# Stands in for the server of a canary whose destination is a custom chain (never contacted).
_CHAIN_ENDPOINT = Endpoint(scheme="http", host="chain.invalid", port=80)
DEFAULT_DRAIN_S = 5.0
# `pause_after` without `pause_for`: long enough for a restarting canary to come back.
DEFAULT_PAUSE_FOR_S = 30.0


@dataclass(frozen=True, slots=True)
class Upstream:
    """A canary server: an http(s) origin URL; `name` groups servers into one canary."""

    url: str
    name: str | None = None
    weight: int = 1

    def __post_init__(self) -> None:
        try:
            Endpoint.parse(self.url)
        except ValueError as exc:
            raise ValueError(f"url: {exc}") from None
        if self.weight < 1:
            raise ValueError("weight must be at least 1")
        if self.name is None:
            object.__setattr__(self, "name", self.url)  # the name defaults to the URL

    @property
    def canary(self) -> str:
        return self.name if self.name is not None else self.url


class Mirror:
    """Request shadowing for any ASGI app (see the module docstring)."""

    def __init__(
        self,
        *,
        match: Callable[[RequestView], bool] | None = None,
        sample_rate: float = 1.0,
        observe: Observe | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        workers: int = DEFAULT_WORKERS,
        queue_size: int = DEFAULT_QUEUE,
        disable_body: bool = False,
        mark_header: str = DEFAULT_MARK[0],
        mark_value: str = DEFAULT_MARK[1],
        disable_mark: bool = False,
        compare: Compare | None = None,
        on_diff: OnDiff | None = None,
        pause_after: int | None = None,
        pause_for: float = DEFAULT_PAUSE_FOR_S,
        _random: Callable[[], float] | None = None,
    ) -> None:
        if match is not None and not callable(match):
            raise ValueError("match must be callable or None")
        if not (isinstance(sample_rate, int | float) and 0 < sample_rate <= 1):
            raise ValueError("sample_rate must be in (0, 1]")
        if observe is not None and not callable(observe):
            raise ValueError("observe must be callable or None")
        if not (isinstance(timeout, int | float) and math.isfinite(timeout) and timeout > 0):
            raise ValueError("timeout must be a finite number of seconds > 0")
        if not (isinstance(max_body_bytes, int) and max_body_bytes >= 0):
            raise ValueError("max_body_bytes must be an int >= 0")
        if not (isinstance(workers, int) and 1 <= workers <= MAX_WORKERS):
            raise ValueError(f"workers must be an int in 1..{MAX_WORKERS}")
        if not (isinstance(queue_size, int) and queue_size >= 0):
            raise ValueError("queue_size must be an int >= 0")
        if compare is not None and not isinstance(compare, Compare):
            raise ValueError("compare must be a Compare(...) or None")
        if on_diff is not None and not callable(on_diff):
            raise ValueError("on_diff must be callable or None")
        pause = None
        if pause_after is not None:
            if not (isinstance(pause_after, int) and pause_after >= 1):
                raise ValueError("pause_after must be an int >= 1 or None")
            if not (
                isinstance(pause_for, int | float) and math.isfinite(pause_for) and pause_for > 0
            ):
                raise ValueError("pause_for must be a finite number of seconds > 0")
            pause = PauseSpec(failures=pause_after, duration_s=float(pause_for))
        compare_spec = compare.spec() if compare is not None else None
        if not disable_mark:
            if not is_token(mark_header):
                raise ValueError("mark_header must be a valid header name")
            if not mark_value or any(c in mark_value for c in "\r\n\0"):
                raise ValueError("mark_value must be a non-empty header value")
        self._match = match
        self._sample_rate = float(sample_rate)
        self._observe = observe
        self._random = _random or _random_module.random
        self._settings: dict[str, Any] = {
            "workers": workers,
            "queue": queue_size,
            "timeout_s": float(timeout),
            "max_body_bytes": max_body_bytes,
            "body": not disable_body,
            "mark": None if disable_mark else (mark_header, mark_value),
            "compare": compare_spec,
            "pause": pause,
        }
        # Comparison results: counted for stats(), diff records to `on_diff`.
        self._results = LibraryResults(on_diff) if compare_spec is not None else None
        self._mark = (
            None
            if disable_mark
            else (mark_header.lower().encode("latin-1"), mark_value.encode("latin-1"))
        )
        self._upstreams: dict[str, list[Upstream]] = {}
        self._chains: list[tuple[str, Chain]] = []
        self._pools: list[CanaryPool] = []
        self._frozen = False
        self._started = False

    # --- configuration -------------------------------------------------------------------

    def use(self, destination: Upstream | Chain, *, name: str | None = None) -> Mirror:
        """Add a destination: an `Upstream`, or an async `chain(ShadowRequest) -> status`
        (canary name: `name`, default the callable's qualified name). Before `wrap()` only."""
        if self._frozen:
            raise RuntimeError("Mirror.use() after wrap(): the configuration is frozen")
        if isinstance(destination, Upstream):
            self._upstreams.setdefault(destination.canary, []).append(destination)
        elif callable(destination):
            label = name or getattr(destination, "__qualname__", None) or repr(destination)
            self._chains.append((label, destination))
        else:
            raise TypeError("use() takes an Upstream or an async callable")
        return self

    def wrap(self, app: ASGIApp) -> ASGIApp:
        """The ASGI middleware around `app`; freezes the configuration. Once per Mirror,
        after at least one `use()`."""
        if self._frozen:
            raise RuntimeError(
                "Mirror.wrap() called twice: a Mirror wraps one app (its pools, stats and "
                "aclose() belong to that app); create another Mirror for another app"
            )
        if not self._upstreams and not self._chains:
            # A state error like use() after wrap(): the arguments are fine, the order is not.
            raise RuntimeError(
                "Mirror.wrap() without a destination: call mirror.use(Upstream(url)) (or "
                "use(chain)) before wrap()"
            )
        self._frozen = True
        for canary, ups in self._upstreams.items():
            servers = tuple(
                ServerSpec(endpoint=Endpoint.parse(u.url), weight=u.weight) for u in ups
            )
            spec = CanarySpec(name=canary, servers=servers, **self._settings)
            self._pools.append(CanaryPool(spec, observe=self._observe))
        for label, chain in self._chains:
            spec = CanarySpec(
                name=label, servers=(ServerSpec(endpoint=_CHAIN_ENDPOINT),), **self._settings
            )
            self._pools.append(CanaryPool(spec, observe=self._observe, chain=chain))
        return _Middleware(self, app)

    # --- running -------------------------------------------------------------------------

    def _start(self) -> None:
        self._started = True
        for pool in self._pools:
            pool.start()

    def stats(self) -> Stats:
        """Outcome counts summed over every canary, and the comparison results."""
        totals = [0] * len(Stats._fields)
        for pool in self._pools:
            for i, n in enumerate(pool.stats()):
                totals[i] += n
        stats = Stats(*totals)
        if self._results is not None:
            stats = stats._replace(**self._results.counts)
        return stats

    @property
    def pools(self) -> tuple[CanaryPool, ...]:
        return tuple(self._pools)

    async def aclose(self, drain: float | None = DEFAULT_DRAIN_S) -> None:
        """Finish queued mirrors for up to `drain` seconds, abandon the rest, close."""
        for pool in self._pools:
            await pool.aclose(drain=drain)

    def _tees(self, scope: Scope) -> RequestTees | None:
        headers = scope.get("headers") or ()
        mark = self._mark
        content_length: int | None = None
        chunked = False
        for name, value in headers:
            if name == b"content-length":
                try:
                    content_length = int(value)
                except ValueError:
                    content_length = None
            elif name == b"transfer-encoding":
                chunked = True
            elif mark is not None and name == mark[0] and value == mark[1]:
                return None  # a shadow request is not shadowed again
        if self._match is not None:
            try:
                matched = self._match(RequestView.from_asgi(scope))
            except Exception:  # a bug in `match` must never reach the primary request
                log.exception("Mirror match raised; request not mirrored")
                return None
            if not matched:
                return None
        if self._sample_rate < 1.0 and not self._random() < self._sample_rate:
            return None
        if content_length is None and not chunked:
            content_length = 0
        raw_path: bytes = scope.get("raw_path") or scope.get("path", "/").encode("utf-8")
        q = raw_path.find(b"?")
        if q >= 0:
            raw_path = raw_path[:q]
        peer = scope.get("client")
        return RequestTees.begin(
            [(pool, None) for pool in self._pools],
            scope["method"],
            raw_path,
            scope.get("query_string", b""),
            headers,
            peer[0] if peer else None,
            scope.get("scheme", "http"),
            content_length,
            report=self._results,
            random=self._random,
        )


class _Middleware:
    __slots__ = ("app", "mirror")

    def __init__(self, mirror: Mirror, app: ASGIApp) -> None:
        self.mirror = mirror
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        mirror = self.mirror
        if scope["type"] != "http" or not mirror._pools:
            if scope["type"] == "lifespan" and not mirror._started:
                mirror._start()
            await self.app(scope, receive, send)
            return
        if not mirror._started:
            mirror._start()
        tees = mirror._tees(scope)
        if tees is None:
            await self.app(scope, receive, send)
            return
        answered = False  # the app's response is complete (see the module docstring)
        rv = tees.rendezvous
        primary = PrimaryCapture(rv) if rv is not None else None

        async def tee_receive() -> Message:
            message = await receive()
            if tees.pending:
                kind = message["type"]
                if kind == "http.request":
                    tees.feed(message.get("body", b""))
                    if not message.get("more_body", False):
                        tees.finish()
                elif kind == "http.disconnect":
                    if answered:
                        tees.unread()  # the server's doing (uvicorn), or a client done
                    else:
                        tees.abort()
            return message

        async def tee_send(message: Message) -> None:
            nonlocal answered
            kind = message["type"]
            if kind == "http.response.body":
                final = not message.get("more_body", False)
                if final and tees.pending:
                    answered = True
                await send(message)
                if primary is not None:  # after the send: capturing never delays it
                    primary.feed(message.get("body", b""))
                    if final:
                        primary.finish()
                return
            if kind == "http.response.start" and primary is not None:
                primary.start(message["status"], message.get("headers", ()))
            await send(message)

        try:
            await self.app(scope, tee_receive, tee_send)
        except BaseException:
            tees.abort()
            raise
        finally:
            if primary is not None:
                primary.end()
        # The app did not read the whole body: read the rest (bounded by the cap) for the
        # mirror (hypercorn hands it over; uvicorn answers http.disconnect, see above).
        while tees.pending:
            await tee_receive()
