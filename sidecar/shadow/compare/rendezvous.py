"""Where one request's primary response meets its canaries' responses to be judged.

How this works
--------------
A request with at least one compared tee gets one `Rendezvous` (built before its tees are
admitted). Each compared tee registers with `compared()`; a tee to a canary that another
compared canary of the request names as its `baseline` registers with `baseline()`. Then
three kinds of arrival, in any order and from different tasks of one event loop:

- the proxy, once the primary's response has gone to the client: `primary_done(captured)`
  (one `Captured` per distinct spec, see `primary_specs`), or `primary_failed()` when the
  proxy itself answered 502/504;
- each mirror worker (or admission, for a tee that was never sent): `canary_done(name,
  captured)` with the canary's capture when the tee `completed`, else None.

Whoever arrives last for a compared canary judges it (its baseline, when the request has
one, must have arrived too: a baseline that did not complete removes no noise). Nobody
ever waits: an arrival that is not last only stores its capture. A canary that did not
complete is not compared at all (only completed tees are). Once every registered tee has
arrived, the rendezvous drops every capture it holds, so memory lives as long as the
slowest tee of the request and no longer (each tee has its own deadline).

Not thread-safe: every call comes from the one event loop that serves the request.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sidecar.model.compare import PRIMARY_FAILED, CompareSpec
from sidecar.shadow.compare.capture import Captured
from sidecar.shadow.compare.judge import Verdict, judge
from sidecar.shadow.compare.record import RequestInfo, diff_record


@dataclass(frozen=True, slots=True)
class CompareResult:
    """The judgement of one compared tee: what metrics, `/diffs` and `on_diff` receive."""

    canary: str
    rule: str | None
    verdict: Verdict
    record: dict[str, Any] | None  # the diff record when `verdict.result == "diff"`


Report = Callable[[CompareResult], None]


class _Compared:
    __slots__ = ("baseline", "captured", "done", "rule", "spec")

    def __init__(self, rule: str | None, spec: CompareSpec, baseline: str | None) -> None:
        self.rule = rule
        self.spec = spec
        self.baseline = baseline  # the baseline canary's name, when it is one of our tees
        self.captured: Captured | None = None
        self.done = False


class Rendezvous:
    """One request's meeting point of the primary's and the canaries' responses."""

    __slots__ = (
        "_arrived",
        "_baseline_specs",
        "_baselines",
        "_compared",
        "_now",
        "_primary",
        "_primary_failed",
        "_primary_in",
        "_report",
        "_request",
    )

    def __init__(
        self, request: RequestInfo, report: Report, *, now: Callable[[], float] = time.time
    ) -> None:
        self._request = request
        self._report = report
        self._now = now
        self._compared: dict[str, _Compared] = {}
        self._baselines: dict[str, Captured | None] = {}
        self._baseline_specs: dict[str, CompareSpec] = {}
        self._arrived: set[str] = set()
        self._primary: Mapping[CompareSpec, Captured] | None = None
        self._primary_failed = False
        self._primary_in = False

    # --- registration (before any tee is admitted) -----------------------------------------

    def compared(
        self, canary: str, rule: str | None, spec: CompareSpec, baseline: str | None = None
    ) -> None:
        """A tee to `canary` whose completed response is judged with `spec`; `baseline` is
        its baseline canary's name when that canary is also a tee of this request."""
        self._compared[canary] = _Compared(rule, spec, baseline)

    def baseline(self, canary: str, spec: CompareSpec) -> None:
        """A tee to `canary` whose response only serves to remove noise (captured with the
        spec of the compared canary that names it)."""
        self._baseline_specs.setdefault(canary, spec)

    @property
    def primary_specs(self) -> tuple[CompareSpec, ...]:
        """The distinct specs the primary's response must be captured with (usually one)."""
        return tuple(dict.fromkeys(c.spec for c in self._compared.values()))

    def capture_spec(self, canary: str) -> CompareSpec | None:
        """The spec a worker captures `canary`'s response with (None: it is not captured)."""
        compared = self._compared.get(canary)
        if compared is not None:
            return compared.spec
        return self._baseline_specs.get(canary)

    @property
    def waiting(self) -> int:
        """Registered tees that have not arrived yet."""
        return len(self._compared.keys() | self._baseline_specs.keys()) - len(self._arrived)

    # --- arrivals ---------------------------------------------------------------------------

    def primary_done(self, captured: Mapping[CompareSpec, Captured]) -> None:
        """The primary's response went to the client (whole, or cut: `complete` says)."""
        self._primary = captured
        self._primary_in = True
        self._settle(self._compared)

    def primary_failed(self) -> None:
        """The proxy answered 502/504 itself: every completed compared tee is skipped."""
        self._primary_failed = True
        self._primary_in = True
        self._settle(self._compared)

    def canary_done(self, canary: str, captured: Captured | None) -> None:
        """A tee to `canary` ended; `captured` is its response when it `completed`."""
        if canary in self._arrived:
            return
        self._arrived.add(canary)
        if canary in self._baseline_specs:
            self._baselines[canary] = captured
            self._settle(n for n, c in self._compared.items() if c.baseline == canary)
        compared = self._compared.get(canary)
        if compared is not None:
            if captured is None:
                compared.done = True  # only completed tees are compared
            else:
                compared.captured = captured
                self._settle((canary,))
        self._release_when_all_in()

    # --- judging ----------------------------------------------------------------------------

    def _settle(self, names: Iterable[str]) -> None:
        if not self._primary_in:
            return
        for name in list(names):
            c = self._compared[name]
            if c.done or c.captured is None:
                continue
            if c.baseline is not None and c.baseline not in self._arrived:
                continue  # its baseline is still on its way: it judges on arrival
            c.done = True
            self._report(self._judge(name, c))
        self._release_when_all_in()

    def _judge(self, name: str, c: _Compared) -> CompareResult:
        assert c.captured is not None
        if self._primary_failed or self._primary is None:
            return CompareResult(name, c.rule, Verdict.skipped(PRIMARY_FAILED), None)
        primary = self._primary[c.spec]
        baseline = self._baselines.get(c.baseline) if c.baseline is not None else None
        verdict = judge(c.spec, primary, c.captured, baseline)
        record = None
        if verdict.result == "diff":
            record = diff_record(
                verdict,
                rule=c.rule or "",
                request=self._request,
                primary=primary,
                canary_name=name,
                canary=c.captured,
                now=self._now(),
            )
            if c.rule is None:
                record["rule"] = None  # the library's tees have no rule
        c.captured = None
        return CompareResult(name, c.rule, verdict, record)

    def _release_when_all_in(self) -> None:
        if self._primary_in and self.waiting == 0:
            self._primary = None
            self._baselines.clear()
