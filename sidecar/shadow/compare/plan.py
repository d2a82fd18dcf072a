"""Which tees of one request are compared: the rendezvous built before any tee is admitted.

`plan()` runs inside `RequestTees.begin()` only when the loaded configuration compares at
all (the proxy passes no `report` otherwise, so a request to canaries without `compare`
pays nothing). For each chosen canary with a `compare` block it draws the block's
`sample_rate` (no draw at 1.0) and registers the sampled-in tee with the request's
`Rendezvous`; a `baseline` canary is registered only when it is itself one of this
request's tees (a request the baseline did not receive is compared without noise removal).
No compared tee, no rendezvous: None.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Sequence
from typing import Protocol

from sidecar.model.config import CanarySpec
from sidecar.shadow.compare.record import RequestInfo
from sidecar.shadow.compare.rendezvous import Rendezvous, Report

Random = Callable[[], float]


class Target(Protocol):
    """What a plan needs of a canary pool (a Protocol: this package sits below the pools)."""

    @property
    def name(self) -> str: ...

    @property
    def spec(self) -> CanarySpec: ...


def plan(
    targets: Sequence[tuple[Target, str | None]],
    method: str,
    raw_path: bytes,
    query_string: bytes,
    report: Report,
    random: Random = _random.random,
    request_id: bytes | None = None,
) -> Rendezvous | None:
    """The request's rendezvous with every compared (and baseline) tee registered, or None.
    `request_id`: the value of the request's `request_id` header, named in its records."""
    rv: Rendezvous | None = None
    for pool, rule in targets:
        spec = pool.spec.compare
        if spec is None or (spec.sample_rate < 1.0 and random() >= spec.sample_rate):
            continue
        if rv is None:
            request = RequestInfo(
                method=method,
                path=raw_path.decode("latin-1"),
                query=query_string.decode("latin-1"),
                id=None if request_id is None else request_id.decode("latin-1"),
            )
            rv = Rendezvous(request, report)
        baseline = spec.baseline
        if baseline is not None and not any(p.name == baseline for p, _ in targets):
            baseline = None  # not a tee of this request: compared without noise removal
        rv.compared(pool.name, rule, spec, baseline=baseline)
        if baseline is not None:
            rv.baseline(baseline, spec)
    return rv


def joins(rv: Rendezvous | None, canary: str) -> Rendezvous | None:
    """`rv` when the tee to `canary` is registered with it (its job carries it), else None."""
    if rv is None or rv.capture_spec(canary) is None:
        return None
    return rv
