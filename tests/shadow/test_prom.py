from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest

from sidecar import prom
from sidecar.model.config import CanarySpec, ServerSpec
from sidecar.model.endpoint import Endpoint
from sidecar.serve import metrics as serve_metrics
from sidecar.shadow.pool import CanaryPool
from sidecar.shadow.types import MirrorInfo, Outcome


def value(reg: CollectorRegistry, name: str, **labels: str) -> float:
    v = reg.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_each_outcome_counted_once_with_canary_and_rule() -> None:
    reg = CollectorRegistry()
    for outcome in Outcome:
        info = MirrorInfo(
            outcome,
            canary="v2",
            rule="api",
            status=503 if outcome is Outcome.COMPLETED else None,
            duration=0.02 if outcome is Outcome.COMPLETED else None,
        )
        prom.observe(info, registry=reg)
    for outcome in Outcome:
        assert (
            value(
                reg,
                "sidecar_mirror_requests_total",
                canary="v2",
                rule="api",
                outcome=outcome.value,
            )
            == 1
        )
    assert value(reg, "sidecar_mirror_duration_seconds_count", canary="v2") == 1
    assert value(reg, "sidecar_mirror_responses_total", canary="v2", code="5xx") == 1
    prom.observe(MirrorInfo(Outcome.DISPATCHED, canary="lib"), registry=reg)
    assert (
        value(reg, "sidecar_mirror_requests_total", canary="lib", rule="", outcome="dispatched")
        == 1
    )


async def test_queue_and_busy_gauges_follow_the_pool() -> None:
    reg = CollectorRegistry()
    m = prom.Metrics(reg)
    spec = CanarySpec(name="c", servers=(ServerSpec(endpoint=Endpoint.parse("http://x:1")),))
    pool = CanaryPool(spec)
    m.track_pool(pool)
    assert value(reg, "sidecar_mirror_queue_depth", canary="c") == 0
    assert value(reg, "sidecar_mirror_busy_workers", canary="c") == 0
    m.untrack_pool(pool)
    assert reg.get_sample_value("sidecar_mirror_queue_depth", {"canary": "c"}) is None


def test_primary_rules_and_reload_metrics() -> None:
    reg = CollectorRegistry()
    prom.Metrics(reg)
    m = serve_metrics.ProxyMetrics(reg)
    m.primary_requests("2xx").inc()
    m.primary_duration().observe(0.1)
    m.set_rules_info("abc", rules=2, canaries=1)
    m.set_rules_info("def", rules=3, canaries=1)
    m.record_reload(True)
    m.record_reload(False)
    assert value(reg, "sidecar_requests_total", code="2xx") == 1
    assert value(reg, "sidecar_request_duration_seconds_count") == 1
    assert value(reg, "sidecar_rules_info", hash="def", rules="3", canaries="1") == 1
    assert (
        reg.get_sample_value("sidecar_rules_info", {"hash": "abc", "rules": "2", "canaries": "1"})
        is None
    )
    assert value(reg, "sidecar_rules_reloads_total", result="ok") == 1
    assert value(reg, "sidecar_rules_reloads_total", result="error") == 1
    assert value(reg, "sidecar_rules_last_reload_success_timestamp_seconds") > 0
    text = generate_latest(reg).decode()
    for name in (
        "sidecar_mirror_requests_total",
        "sidecar_mirror_duration_seconds",
        "sidecar_mirror_responses_total",
        "sidecar_mirror_queue_depth",
        "sidecar_mirror_busy_workers",
        "sidecar_requests_total",
        "sidecar_request_duration_seconds",
        "sidecar_rules_info",
        "sidecar_rules_reloads_total",
        "sidecar_rules_last_reload_success_timestamp_seconds",
    ):
        assert f"# TYPE {name.removesuffix('_total')}" in text


def test_metrics_are_built_once_per_registry() -> None:
    reg = CollectorRegistry()
    assert prom.metrics(reg) is prom.metrics(reg)


def test_reload_counters_exist_at_zero_before_any_reload() -> None:
    reg = CollectorRegistry()
    serve_metrics.ProxyMetrics(reg)
    for result in ("ok", "error"):
        assert reg.get_sample_value("sidecar_rules_reloads_total", {"result": result}) == 0.0
