"""Counts kept as plain ints and folded into Prometheus at scrape time read exactly as the
same events pushed one by one (sidecar.shadow.folding, the pools, the primary's counts)."""

from __future__ import annotations

import sys
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from sidecar import prom
from sidecar.model.config import CanarySpec, ServerSpec
from sidecar.model.endpoint import Endpoint
from sidecar.serve import metrics as serve_metrics
from sidecar.shadow.folding import FoldedCounter, FoldedHistogram, HistogramFold
from sidecar.shadow.pool import CanaryPool
from sidecar.shadow.types import MirrorInfo, Outcome

BOUNDS = (0.005, 0.01, 0.1, 1.0, 10.0)
N_OBSERVED = 50_000


def samples(reg: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample but the `_created` timestamps (they differ between two registries)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for metric in reg.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    }


def value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    v = reg.get_sample_value(name, labels)
    return 0.0 if v is None else v


values = st.one_of(
    st.sampled_from([0.0, *BOUNDS]),  # exactly on a bound: that bound's bucket (le)
    st.floats(min_value=0.0, max_value=100.0, allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(batches=st.lists(st.lists(values, max_size=20), min_size=1, max_size=4))
def test_a_folded_histogram_reads_as_observe_per_sample(batches: list[list[float]]) -> None:
    eager_reg, folded_reg = CollectorRegistry(), CollectorRegistry()
    eager = Histogram("d_seconds", "d", buckets=BOUNDS, registry=eager_reg)
    target = FoldedHistogram("d_seconds", "d", buckets=BOUNDS, registry=folded_reg)
    assert HistogramFold.supported(target, BOUNDS)
    fold = HistogramFold(target, BOUNDS)
    target.before_collect(fold.fold)
    for batch in batches:  # a scrape between batches folds only what is new
        for v in batch:
            eager.observe(v)
            fold.observe(v)
        want, got = samples(eager_reg), samples(folded_reg)
        assert want.keys() == got.keys()
        for key, v in want.items():
            assert got[key] == pytest.approx(v, rel=1e-9, abs=1e-9), key


def test_a_folded_counter_runs_its_folds_on_every_collect_until_forgotten() -> None:
    reg = CollectorRegistry()
    counter = FoldedCounter("things", "t", ["kind"], registry=reg)
    counted = [0]
    folded = [0]

    def fold() -> None:
        counter.labels("a").inc(counted[0] - folded[0])
        folded[0] = counted[0]

    counter.before_collect(fold)
    counted[0] = 3
    assert value(reg, "things_total", kind="a") == 3
    assert value(reg, "things_total", kind="a") == 3  # nothing new: nothing added
    counted[0] = 5
    counter.labels("a").inc()  # an eager inc on the same child adds up with the folds
    assert value(reg, "things_total", kind="a") == 6
    counter.forget(fold)
    counted[0] = 9
    assert value(reg, "things_total", kind="a") == 6


def _spec(name: str = "c") -> CanarySpec:
    return CanarySpec(name=name, servers=(ServerSpec(endpoint=Endpoint.parse("http://x:1")),))


def test_a_pool_that_counts_its_outcomes_is_folded_once_and_observes_only_details() -> None:
    reg = CollectorRegistry()
    m = prom.Metrics(reg)
    seen: list[MirrorInfo] = []

    def observe(info: MirrorInfo) -> None:
        seen.append(info)
        m.observe_details(info)

    pool = CanaryPool(_spec(), observe=observe, observe_outcomes=False)
    m.track_pool(pool)
    for _ in range(3):
        pool.record(Outcome.DISPATCHED, "api")
    pool.record(Outcome.DROPPED_FULL, "api")
    pool.record(Outcome.DROPPED_FULL, None)
    pool.record(Outcome.FAILED, "api", error="connect")  # a back-off skip: no kind
    pool.record(Outcome.FAILED, "api", error="timeout", kind="timeout")
    pool.record(Outcome.COMPLETED, "api", status=200, duration=0.02)
    assert [(i.outcome, i.error_kind) for i in seen] == [
        (Outcome.FAILED, "timeout"),
        (Outcome.COMPLETED, None),
    ]

    def requests(outcome: Outcome, rule: str = "api") -> float:
        return value(
            reg, "sidecar_mirror_requests_total", canary="c", rule=rule, outcome=outcome.value
        )

    for _ in range(2):  # a second scrape adds nothing
        assert requests(Outcome.DISPATCHED) == 3
        assert requests(Outcome.DROPPED_FULL) == 1
        assert requests(Outcome.DROPPED_FULL, rule="") == 1
        assert requests(Outcome.FAILED) == 2
        assert requests(Outcome.COMPLETED) == 1
    assert value(reg, "sidecar_mirror_errors_total", canary="c", error="timeout") == 1
    assert value(reg, "sidecar_mirror_duration_seconds_count", canary="c") == 1
    assert value(reg, "sidecar_mirror_responses_total", canary="c", code="2xx") == 1
    stats = pool.stats()
    assert (stats.dispatched, stats.dropped_full, stats.failed, stats.completed) == (3, 2, 2, 1)

    pool.record(Outcome.DISPATCHED, "api")  # after the last scrape, before retirement
    m.untrack_pool(pool)
    assert requests(Outcome.DISPATCHED) == 4  # folded when untracked, kept by the counter
    successor = CanaryPool(_spec(), observe=m.observe_details, observe_outcomes=False)
    m.track_pool(successor)  # a reload's new pool of the same name adds to the same series
    successor.record(Outcome.DISPATCHED, "api")
    assert requests(Outcome.DISPATCHED) == 5


def test_a_tracked_pool_that_observes_its_outcomes_is_not_folded_as_well() -> None:
    reg = CollectorRegistry()
    m = prom.Metrics(reg)
    pool = CanaryPool(_spec(), observe=m.observe)  # the library's way
    m.track_pool(pool)  # for its gauges
    pool.record(Outcome.DISPATCHED, "api")
    pool.record(Outcome.DROPPED_RATE, "api")
    for outcome in (Outcome.DISPATCHED, Outcome.DROPPED_RATE):
        labels = {"canary": "c", "rule": "api", "outcome": outcome.value}
        assert reg.get_sample_value("sidecar_mirror_requests_total", labels) == 1


@pytest.mark.parametrize("multiprocess", [False, True], ids=["folded", "pushed"])
def test_the_primary_counts_read_the_same_folded_or_pushed(
    multiprocess: bool, monkeypatch: pytest.MonkeyPatch, tmp_path: object
) -> None:
    if multiprocess:  # prometheus-client's multiprocess mode: nothing may wait for a scrape
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    reg = CollectorRegistry()
    m = serve_metrics.ProxyMetrics(reg)
    recorder = m.primary()
    assert type(recorder).__name__ == ("_EagerPrimary" if multiprocess else "_FoldedPrimary")
    assert m.primary() is recorder
    now = time.perf_counter()
    for status in (200, 204, 302, 404, 503, 99, 700):
        recorder.record(status, now - 0.05)
    m.primary_requests("4xx").inc()  # a refusal, counted directly on the same series
    want = {"1xx": 1, "2xx": 2, "3xx": 1, "4xx": 2, "5xx": 2}
    for code, n in want.items():
        assert value(reg, "sidecar_requests_total", code=code) == n
    assert value(reg, "sidecar_request_duration_seconds_count") == 7
    assert value(reg, "sidecar_request_duration_seconds_bucket", le="0.025") == 0
    assert value(reg, "sidecar_request_duration_seconds_bucket", le="0.1") == 7
    assert 7 * 0.05 <= value(reg, "sidecar_request_duration_seconds_sum") < 7 * 1.0


def test_scrapes_on_two_threads_at_once_fold_each_count_once() -> None:
    """prometheus-client's HTTP server answers each scrape on its own thread: two folds at
    once used to add the same difference twice (a library's `observe` user; `serve`
    scrapes on its event loop)."""
    reg = CollectorRegistry()
    m = prom.Metrics(reg)
    info = MirrorInfo(Outcome.COMPLETED, status=200, duration=0.01, canary="c")
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            generate_latest(reg)

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # many thread switches, inside folds too
    scrapers = [threading.Thread(target=scrape) for _ in range(2)]
    try:
        for t in scrapers:
            t.start()
        for _ in range(N_OBSERVED):
            m.observe(info)
    finally:
        done.set()
        for t in scrapers:
            t.join()
        sys.setswitchinterval(switch)
    assert value(reg, "sidecar_mirror_responses_total", canary="c", code="2xx") == N_OBSERVED
    assert value(reg, "sidecar_mirror_duration_seconds_count", canary="c") == N_OBSERVED
    assert value(reg, "sidecar_mirror_duration_seconds_sum", canary="c") == pytest.approx(
        N_OBSERVED * 0.01
    )
