"""Counts kept as plain ints where they happen, folded into Prometheus series at scrape time.

A `Counter.inc()` from prometheus-client is a lock, an attribute chain and a call or three;
on the request path of a busy proxy that costs more than the rest of a refused tee (issue
20 measured ~9 us of CPU per request for the two counts of a dead canary's tee, and ~5 us
for the primary's count and latency, of ~210 us in all: cache-cold Python, several times
its cost in a tight loop). So the request path bumps ints in a list it already holds, and
the series pull them in when they are collected:

    counter = FoldedCounter("sidecar_requests", "...", ["code"], registry=r)
    counter.before_collect(fold)      # fold() adds what changed since its last call

`FoldedCounter` / `FoldedHistogram` are prometheus-client's own classes with one change:
`collect()` first runs the folds registered on the metric, so a scrape (or
`registry.get_sample_value`) sees every count made before it, exactly as with `inc()`. The
exposition is prometheus-client's, untouched.

A fold adds deltas through the public `inc()` of a counter's children; a histogram's are
added to its buckets and sum (`HistogramFold`, which reads prometheus-client's private
`_buckets` and `_sum`: `HistogramFold.supported()` says whether they are there, and callers
fall back to `observe()` per sample when they are not). Under prometheus-client's
multiprocess mode a scrape reads the other processes' files, not their live objects, so
nothing is folded there: callers count eagerly instead (`folding_supported()`).
"""

from __future__ import annotations

import os
import threading
from bisect import bisect_left
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import Counter, Histogram
from prometheus_client.metrics_core import Metric

Fold = Callable[[], None]

# Held while folds run: a fold reads its last folded value, adds the difference and stores
# the new value, so two collections at once (prometheus-client's HTTP server answers each
# scrape on its own thread) would add the same difference twice. The counting itself takes
# no lock: a fold only reads the counts, which only grow.
FOLD_LOCK = threading.Lock()


def folding_supported() -> bool:
    """False under prometheus-client's multiprocess mode (a scrape reads files, not this
    process's objects): count eagerly there."""
    return not os.environ.get("PROMETHEUS_MULTIPROC_DIR")


class _Folds:
    """The `before_collect` hooks of one metric (kept on the parent, not on its children)."""

    _folds: list[Fold]

    def before_collect(self, fold: Fold) -> None:
        """Run `fold` at the start of every `collect()` of this metric."""
        folds = self.__dict__.setdefault("_folds", [])
        folds.append(fold)

    def forget(self, fold: Fold) -> None:
        """Stop running `fold` (run it once more first if its counts must not be lost)."""
        folds = self.__dict__.get("_folds", [])
        if fold in folds:
            folds.remove(fold)

    def _run_folds(self) -> None:
        with FOLD_LOCK:
            for fold in list(self.__dict__.get("_folds", ())):
                fold()


class FoldedCounter(_Folds, Counter):
    """A prometheus-client `Counter` whose `collect()` first runs its folds."""

    def collect(self) -> Iterable[Metric]:
        self._run_folds()
        return super().collect()


class FoldedHistogram(_Folds, Histogram):
    """A prometheus-client `Histogram` whose `collect()` first runs its folds."""

    def collect(self) -> Iterable[Metric]:
        self._run_folds()
        return super().collect()


class CountFold:
    """One counter child's count, bumped on the hot path (`inc()`: an addition, no lock);
    `fold()` adds what changed since the last fold to the child."""

    __slots__ = ("_child", "_folded", "n")

    def __init__(self, child: Any) -> None:
        self._child = child
        self.n = 0
        self._folded = 0

    def inc(self, amount: int = 1) -> None:
        self.n += amount

    def fold(self) -> None:  # call under FOLD_LOCK
        n = self.n
        if n != self._folded:
            self._child.inc(n - self._folded)
            self._folded = n


class HistogramFold:
    """Samples of one (unlabelled or child) histogram counted per bucket on the hot path:
    `observe(v)` is a bisect and two additions; `fold()` adds what changed since the last
    fold to the prometheus-client histogram."""

    __slots__ = ("_bounds", "_folded", "_folded_sum", "_target", "counts", "sum")

    def __init__(self, target: Any, bounds: tuple[float, ...]) -> None:
        self._target = target
        self._bounds = bounds  # finite upper bounds, ascending; +Inf is the last slot
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self._folded = [0] * (len(bounds) + 1)
        self._folded_sum = 0.0

    @staticmethod
    def supported(target: Any, bounds: tuple[float, ...]) -> bool:
        """True when `target` has the bucket and sum values this fold adds to (one bucket per
        bound plus +Inf)."""
        buckets = getattr(target, "_buckets", None)
        total = getattr(target, "_sum", None)
        return (
            isinstance(buckets, list)
            and len(buckets) == len(bounds) + 1
            and all(callable(getattr(b, "inc", None)) for b in buckets)
            and callable(getattr(total, "inc", None))
        )

    def observe(self, value: float) -> None:
        """One sample (a value equal to a bound falls in that bound's bucket, as `le` says)."""
        self.counts[bisect_left(self._bounds, value)] += 1
        self.sum += value

    def fold(self) -> None:
        # The sum first: `observe` adds to it after the count, so a sample counted here has
        # its value in the sum by the next fold at the latest (call under FOLD_LOCK).
        total = self.sum
        counts, folded = self.counts, self._folded
        buckets = self._target._buckets
        for i, n in enumerate(counts):
            delta = n - folded[i]
            if delta:
                buckets[i].inc(delta)
                folded[i] = n
        if total != self._folded_sum:
            self._target._sum.inc(total - self._folded_sum)
            self._folded_sum = total
