"""One request's tees: the shared body copy and admission to the canary pools.

How this works
--------------
`RequestTees.begin()` runs once per request that has tees (after routing chose them). For
each (pool, rule) it decides at once what it can: `body off` is admitted immediately with no
body; a known `Content-Length` above that canary's `max_body` is `dropped_oversize`
immediately; a request known to have no body (`content_length == 0`) is admitted
immediately. The rest are *pending* and share ONE `Body`: the list of the very chunk objects
the primary receives (no copies), kept only up to the largest pending `max_body`.

`feed(chunk)` appends the chunk and drops, as `dropped_oversize`, every pending tee whose
`max_body` the body has now outgrown (the pending list is sorted by `max_body`, so this is
a pop from the front); past the largest cap nothing more is kept. `finish()` admits every
remaining tee (a body of exactly `max_body` bytes is mirrored) through the pools'
synchronous `ended_at_once`/`dispatch` (`refusal`/`dispatch` for a compared tee); a tee the
pool refuses (full, rate) builds no `Job`, nor does one to a canary whose every server is in
its connect back-off (`ended_at_once`), and
a bodiless request whose every tee is refused builds no `ClientRequest` either. `abort()`
ends them as `dropped_aborted`; `unread()` (library: the app answered without reading the
whole body and the server will not hand over the rest) admits them when what was received
is the whole declared `Content-Length`, else ends them as `dropped_unread`. Nothing here awaits: the primary request never waits for
a canary. Headers and body bytes of each shadow request are
built later by the pool's worker (the body joined once, shared by all its canaries).

Callers pass `content_length=0` when the request has neither `Content-Length` nor
`Transfer-Encoding` (HTTP/1.1: no body), so that bodiless requests need no `finish()`.

Comparison: given a `report` (the configuration compares at all), `begin()` first builds the
request's `Rendezvous` (sidecar/compare_tees.py) and then returns a `RequestTees` even when
no tee waits for the body, so the caller can reach `rendezvous` to capture the primary.
Each registered tee's `Job` carries the rendezvous; a registered tee dropped here (refused,
oversize, aborted, unread) never reaches a worker, so it arrives as `canary_done(name, None)`
right where it is dropped.
"""

from __future__ import annotations

import random as _random
from collections.abc import Sequence

from sidecar.shadow.compare.plan import Random, joins, plan
from sidecar.shadow.compare.rendezvous import Rendezvous, Report
from sidecar.shadow.pool import CanaryPool
from sidecar.shadow.types import Body, ClientRequest, Job, Outcome


class RequestTees:
    """The pending tees of one request (see the module docstring)."""

    __slots__ = ("_body", "_cap", "_declared", "_pending", "_request", "rendezvous")

    def __init__(
        self,
        pending: list[tuple[int, CanaryPool, str | None]],
        request: ClientRequest,
        declared: int | None = None,
        rendezvous: Rendezvous | None = None,
    ) -> None:
        self._pending = pending  # (max_body, pool, rule), ascending max_body
        self._cap = pending[-1][0] if pending else 0
        self._body = Body()
        self._request = request
        self._declared = declared  # the request's Content-Length (None: chunked)
        self.rendezvous = rendezvous  # None: no tee of this request is compared

    @classmethod
    def begin(
        cls,
        targets: Sequence[tuple[CanaryPool, str | None]],
        method: str,
        raw_path: bytes,
        query_string: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        client: str | None,
        scheme: str,
        content_length: int | None,
        *,
        report: Report | None = None,
        random: Random = _random.random,
        request_id: bytes | None = None,
    ) -> RequestTees | None:
        """Decide what can be decided now; None when no tee waits for the body and none is
        compared. `report`: where the compared tees' results go (None: nothing compared);
        `random`: the draw for `compare`'s sample rate; `request_id`: the request's id, for
        its diff records (the copies carry it in `headers` already)."""
        rv = None
        if report is not None:
            rv = plan(targets, method, raw_path, query_string, report, random, request_id)
        request: ClientRequest | None = None  # built once a pool admits (drops build none)
        pending: list[tuple[int, CanaryPool, str | None]] = []
        for pool, rule in targets:
            spec = pool.spec
            if not spec.body or content_length == 0:
                if rv is None:
                    if pool.ended_at_once(rule):
                        continue  # refused, or a dead canary in its back-off: counted
                else:
                    refused = pool.refusal()
                    if refused is not None:
                        _drop(pool, refused, rule, rv)
                        continue
                if request is None:
                    request = ClientRequest(method, raw_path, query_string, headers, client, scheme)
                job = Job(request, None, rule)
                if rv is not None:
                    job.rendezvous = joins(rv, pool.name)
                pool.dispatch(job)
            elif content_length is not None and content_length > spec.max_body_bytes:
                _drop(pool, Outcome.DROPPED_OVERSIZE, rule, rv)
            else:
                pending.append((spec.max_body_bytes, pool, rule))
        if not pending and rv is None:
            return None
        pending.sort(key=lambda p: p[0])
        if request is None:
            request = ClientRequest(method, raw_path, query_string, headers, client, scheme)
        return cls(pending, request, content_length, rv)

    @property
    def pending(self) -> bool:
        """True while some tee still waits for the body."""
        return bool(self._pending)

    def feed(self, chunk: bytes) -> None:
        """One body chunk, as the primary receives it (kept by reference, not copied)."""
        if not chunk or not self._pending:
            return
        body = self._body
        body.length += len(chunk)
        pending = self._pending
        while pending and pending[0][0] < body.length:
            _, pool, rule = pending.pop(0)
            _drop(pool, Outcome.DROPPED_OVERSIZE, rule, self.rendezvous)
        if pending:
            body.chunks.append(chunk)
        else:
            body.chunks.clear()

    def finish(self) -> None:
        """The body is whole: admit every pending tee (never awaits)."""
        pending, self._pending = self._pending, []
        request = self._request
        body = self._body if self._body.length else None
        rv = self.rendezvous
        for _, pool, rule in pending:
            if rv is None:
                if pool.ended_at_once(rule):
                    continue
            else:
                refused = pool.refusal()
                if refused is not None:
                    _drop(pool, refused, rule, rv)
                    continue
            job = Job(request, body, rule)
            if rv is not None:
                job.rendezvous = joins(rv, pool.name)
            pool.dispatch(job)

    def unread(self) -> None:
        """The body will not be read to its end (see the module docstring): admit the tees
        when the whole declared body was received after all, else `dropped_unread`."""
        if self._declared is not None and self._body.length == self._declared:
            self.finish()
            return
        pending, self._pending = self._pending, []
        self._body.chunks.clear()
        for _, pool, rule in pending:
            _drop(pool, Outcome.DROPPED_UNREAD, rule, self.rendezvous)

    def abort(self) -> None:
        """The client's upload broke off: every pending tee ends as `dropped_aborted`."""
        pending, self._pending = self._pending, []
        self._body.chunks.clear()
        for _, pool, rule in pending:
            _drop(pool, Outcome.DROPPED_ABORTED, rule, self.rendezvous)


def _drop(pool: CanaryPool, outcome: Outcome, rule: str | None, rv: Rendezvous | None) -> None:
    """A tee that never reaches a worker: counted, and (when compared) arrived with nothing."""
    pool.record(outcome, rule)
    if rv is not None and rv.capture_spec(pool.name) is not None:
        rv.canary_done(pool.name, None)
