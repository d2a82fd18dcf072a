"""The proxy's own series (prometheus-client): primary requests and duration, refused
requests, WebSocket sessions, rules info and reloads.

They are registered on the first call of one of the functions below, which only `serve`
makes, so a library process never exports them (a
`sidecar_rules_last_reload_success_timestamp_seconds 0` there would say that rules failed
to load, in a process that has none). The mirror series are `sidecar.shadow.metrics`.

    primary()                          the primary's counts: .record(status, started)
    primary_requests("2xx"), primary_duration(), refused_request(reason),
    websocket_sessions(code)
                                       the proxy's children (resolve once, keep them)

The primary's request count and duration are counted on every request, so `primary()`
keeps them as plain ints folded into sidecar_requests_total and
sidecar_request_duration_seconds when scraped (`sidecar.shadow.folding`; ~5 us of CPU per
request less than two `inc()` and an `observe()`), except under multiprocess metrics
(--workers), where they are pushed as they happen.
    set_rules_info(sha256, rules=, canaries=), record_reload(ok)
"""

from __future__ import annotations

import os
import time
from typing import Any, Protocol

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge

from sidecar.shadow.folding import (
    CountFold,
    FoldedCounter,
    FoldedHistogram,
    HistogramFold,
    folding_supported,
)
from sidecar.shadow.metrics import MIRROR_DURATION_BUCKETS_S, fast_inc

# The primary's answers: the mirror buckets plus its 60 s default head clock.
PRIMARY_DURATION_BUCKETS_S = (*MIRROR_DURATION_BUCKETS_S, 60.0)


class PrimaryRecorder(Protocol):
    def record(self, status: int, started: float) -> None:
        """One answer to a client: its status and `time.perf_counter()` at its start."""


class _FoldedPrimary:
    """The primary's counts as plain ints, folded in when the series are collected."""

    __slots__ = ("by_class", "duration")

    def __init__(self, m: ProxyMetrics) -> None:
        # Index: status // 100, clamped to 1..5 (h11 never hands us another status).
        children = [CountFold(m.requests.labels(f"{n}xx")) for n in range(1, 6)]
        self.by_class = (children[0], *children)
        self.duration = HistogramFold(m.request_duration, PRIMARY_DURATION_BUCKETS_S)
        for child in children:
            m.requests.before_collect(child.fold)
        m.request_duration.before_collect(self.duration.fold)

    def record(self, status: int, started: float) -> None:
        self.by_class[max(1, min(status // 100, 5))].n += 1
        self.duration.observe(time.perf_counter() - started)


class _EagerPrimary:
    """The primary's counts pushed per request (multiprocess metrics)."""

    __slots__ = ("by_class", "duration")

    def __init__(self, m: ProxyMetrics) -> None:
        children = [fast_inc(m.requests.labels(f"{n}xx")) for n in range(1, 6)]
        self.by_class = (children[0], *children)
        self.duration = m.request_duration

    def record(self, status: int, started: float) -> None:
        self.by_class[max(1, min(status // 100, 5))](1)
        self.duration.observe(time.perf_counter() - started)


class ProxyMetrics:
    """The proxy's own series (primary, refusals, rules, reloads), on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        registry = REGISTRY if registry is None else registry
        self.registry = registry
        self.multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        r = registry
        self.requests = FoldedCounter(
            "sidecar_requests", "Primary requests by status class.", ["code"], registry=r
        )
        self.refused = Counter(
            "sidecar_refused_requests",
            "Client requests refused before forwarding (malformed or ambiguous HTTP), by reason.",
            ["reason"],
            registry=r,
        )
        self.request_duration = FoldedHistogram(
            "sidecar_request_duration_seconds",
            "Primary request duration.",
            buckets=PRIMARY_DURATION_BUCKETS_S,
            registry=r,
        )
        self.rules_info = Gauge(
            "sidecar_rules_info",
            "The loaded configuration (value 1).",
            ["hash", "rules", "canaries"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.reloads = Counter(
            "sidecar_rules_reloads", "Configuration reloads by result.", ["result"], registry=r
        )
        for result in ("ok", "error"):  # both series exist (at 0) before the first reload
            self.reloads.labels(result)
        self.last_reload_success = Gauge(
            "sidecar_rules_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
            registry=r,
            multiprocess_mode="max",
        )
        self.diff_log_dropped = Counter(
            "sidecar_diff_log_dropped",
            "Diff records not written to diff_log because the writer fell behind (they stay"
            " in /diffs).",
            registry=r,
        )
        self.websockets = Counter(
            "sidecar_websockets",
            "WebSocket sessions relayed to the primary, by the code of the close frame the"
            " client received (1006: none).",
            ["code"],
            registry=r,
        )
        self._rules_labels: tuple[str, str, str] | None = None
        self._primary: PrimaryRecorder | None = None

    # --- primary and rules ---------------------------------------------------------------

    def primary(self) -> PrimaryRecorder:
        """The primary's request count and duration (one recorder per registry)."""
        if self._primary is None:
            folded = folding_supported() and HistogramFold.supported(
                self.request_duration, PRIMARY_DURATION_BUCKETS_S
            )
            self._primary = _FoldedPrimary(self) if folded else _EagerPrimary(self)
        return self._primary

    def primary_requests(self, code: str) -> Any:
        return self.requests.labels(code)

    def primary_duration(self) -> Any:
        return self.request_duration

    def refused_request(self, reason: str) -> Any:
        """The counter child of one refusal reason (resolve once per reason, keep it)."""
        return self.refused.labels(reason)

    def websocket_sessions(self, code: str) -> Any:
        """The counter child of one close code (resolve once per code, keep it)."""
        return self.websockets.labels(code)

    def set_rules_info(self, sha256: str, *, rules: int, canaries: int) -> None:
        labels = (sha256, str(rules), str(canaries))
        old = self._rules_labels
        if old is not None and old != labels:
            if self.multiprocess:
                self.rules_info.labels(*old).set(0)
            else:
                self.rules_info.remove(*old)
        self.rules_info.labels(*labels).set(1)
        self._rules_labels = labels
        self.last_reload_success.set(time.time())

    def record_reload(self, ok: bool) -> None:
        """Count one reload; a success also stamps the last-success gauge."""
        self.reloads.labels("ok" if ok else "error").inc()
        if ok:
            self.last_reload_success.set(time.time())


_proxy_by_registry: dict[int, ProxyMetrics] = {}


def proxy_metrics(registry: CollectorRegistry | None = None) -> ProxyMetrics:
    """The `ProxyMetrics` of `registry` (default: REGISTRY), built (registered) on first use."""
    reg = REGISTRY if registry is None else registry
    m = _proxy_by_registry.get(id(reg))
    if m is None or m.registry is not reg:
        m = _proxy_by_registry[id(reg)] = ProxyMetrics(reg)
    return m


# The proxy's entry points (proxy.py, runtime.py, reload.py): the first call registers the
# proxy's series on the default registry; a library process never makes one.


def primary() -> PrimaryRecorder:
    return proxy_metrics().primary()


def primary_requests(code: str) -> Any:
    return proxy_metrics().primary_requests(code)


def primary_duration() -> Any:
    return proxy_metrics().primary_duration()


def refused_request(reason: str) -> Any:
    return proxy_metrics().refused_request(reason)


def websocket_sessions(code: str) -> Any:
    return proxy_metrics().websocket_sessions(code)


def set_rules_info(sha256: str, *, rules: int, canaries: int) -> None:
    proxy_metrics().set_rules_info(sha256, rules=rules, canaries=canaries)


def record_reload(ok: bool) -> None:
    proxy_metrics().record_reload(ok)


def diff_log_dropped() -> Any:
    return proxy_metrics().diff_log_dropped
