"""The pieces between a rendezvous and the outside: the primary's capture, the sink (metrics
and diff store) and the `/diffs` query string. Plain function tests."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry

from sidecar.model.compare import PRIMARY_FAILED, CompareSpec
from sidecar.serve.compare_sink import CompareSink
from sidecar.serve.diff_store import DiffStore
from sidecar.serve.diffs_query import DiffsQueryError, parse_diffs_query
from sidecar.shadow.compare.capture import Capture, Captured
from sidecar.shadow.compare.judge import Difference, Verdict
from sidecar.shadow.compare.primary import PrimaryCapture
from sidecar.shadow.compare.record import RequestInfo
from sidecar.shadow.compare.rendezvous import CompareResult, Rendezvous
from sidecar.shadow.metrics import Metrics

SPEC_A = CompareSpec(status=True, headers=("X-A",), body="bytes")
SPEC_B = CompareSpec(body="json", headers=("x-b",))


def _sample(reg: CollectorRegistry, name: str, **labels: str) -> float:
    return reg.get_sample_value(name, labels) or 0.0


def _diff(*kinds: str, noise: tuple[str, ...] = ()) -> Verdict:
    def d(kind: str) -> Difference:
        return Difference(kind=kind, where=kind, primary="1", canary="2")  # type: ignore[arg-type]

    return Verdict(
        result="diff" if kinds else "match",
        differences=tuple(d(k) for k in kinds),
        noise=tuple(d(k) for k in noise),
    )


# --- metrics and the sink -------------------------------------------------------------------------


def test_metrics_count_results_kinds_once_and_reasons() -> None:
    reg = CollectorRegistry()
    m = Metrics(reg)
    m.compare(CompareResult("v2", "r", _diff("body", "body", "status", noise=("header",)), None))
    m.compare(CompareResult("v2", "r", _diff(noise=("body",)), None))
    m.compare(CompareResult("v2", None, Verdict.skipped(PRIMARY_FAILED), None))
    labels = {"canary": "v2", "rule": "r"}
    assert _sample(reg, "sidecar_compare_total", result="diff", **labels) == 1
    assert _sample(reg, "sidecar_compare_total", result="match", **labels) == 1
    assert _sample(reg, "sidecar_compare_differences_total", kind="body", **labels) == 1
    assert _sample(reg, "sidecar_compare_differences_total", kind="status", **labels) == 1
    assert _sample(reg, "sidecar_compare_noise_total", kind="header", **labels) == 1
    assert _sample(reg, "sidecar_compare_noise_total", kind="body", **labels) == 1
    no_rule = {"canary": "v2", "rule": ""}  # the library's tees have no rule
    assert _sample(reg, "sidecar_compare_total", result="skipped", **no_rule) == 1
    assert _sample(reg, "sidecar_compare_skipped_total", reason="primary_failed", **no_rule) == 1


def test_sink_keeps_only_diff_records() -> None:
    store = DiffStore()
    sink = CompareSink(store, Metrics(CollectorRegistry()))
    record = {"rule": "r", "canary": {"name": "v2"}}
    sink(CompareResult("v2", "r", _diff("status"), record))
    sink(CompareResult("v2", "r", _diff(), None))
    assert store.query() == [record]


# --- the primary's capture ----------------------------------------------------------------------


class _Recorder:
    def __init__(self, *specs: CompareSpec) -> None:
        self.results: list[CompareResult] = []
        self.rv = Rendezvous(RequestInfo(method="GET", path="/"), self.results.append)
        for i, spec in enumerate(specs):
            self.rv.compared(f"c{i}", "r", spec)


def _canary(
    spec: CompareSpec, status: int, headers: list[tuple[bytes, bytes]], body: bytes
) -> Captured:
    cap = Capture(spec)
    cap.start(status, headers)
    cap.feed(body)
    return cap.finish()


def test_one_capture_per_spec_from_a_one_shot_header_iterable() -> None:
    rec = _Recorder(SPEC_A, SPEC_B, SPEC_A)
    pc = PrimaryCapture(rec.rv)
    headers = [(b"x-a", b"1"), (b"X-B", b"2")]
    pc.start(200, iter(headers))  # read once, used by both specs
    for chunk in (b'{"a":', b"1}"):
        pc.feed(chunk)
    pc.finish()
    pc.end()
    pc.end()  # once only
    body = b'{"a":1}'
    rec.rv.canary_done("c0", _canary(SPEC_A, 200, headers, body))
    rec.rv.canary_done("c1", _canary(SPEC_B, 200, headers, b'{"a": 1.0}'))
    rec.rv.canary_done("c2", _canary(SPEC_A, 200, [(b"x-a", b"9")], body))
    assert [(r.canary, r.verdict.result) for r in rec.results] == [
        ("c0", "match"),
        ("c1", "match"),
        ("c2", "diff"),
    ]
    record = rec.results[2].record
    assert record is not None
    assert record["primary"]["sha256"] == hashlib.sha256(body).hexdigest()


@pytest.mark.parametrize("how", ["cut", "no_head"])
def test_an_unfinished_response_is_primary_incomplete(how: str) -> None:
    rec = _Recorder(SPEC_A)
    pc = PrimaryCapture(rec.rv)
    if how == "cut":
        pc.start(200, [])
        pc.feed(b"part")
    pc.end()
    rec.rv.canary_done("c0", _canary(SPEC_A, 200, [], b"part"))
    assert [r.verdict.reason for r in rec.results] == ["primary_incomplete"]


def test_failed_reports_once_and_end_adds_nothing() -> None:
    rec = _Recorder(SPEC_A)
    pc = PrimaryCapture(rec.rv)
    pc.failed()
    pc.end()
    rec.rv.canary_done("c0", _canary(SPEC_A, 200, [], b""))
    assert [r.verdict.reason for r in rec.results] == ["primary_failed"]


@pytest.fixture
def broken_report() -> Iterator[Rendezvous]:
    def report(result: CompareResult) -> None:
        raise RuntimeError("bug in a sink")

    rv = Rendezvous(RequestInfo(method="GET", path="/"), report)
    rv.compared("c0", "r", SPEC_A)
    rv.canary_done("c0", _canary(SPEC_A, 200, [], b""))
    yield rv


def test_a_failing_comparison_never_reaches_the_request(
    broken_report: Rendezvous, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sidecar.shadow.compare.primary._last_error_log", float("-inf"))
    pc = PrimaryCapture(broken_report)
    with caplog.at_level(logging.ERROR, logger="sidecar.compare"):
        pc.failed()  # must not raise: the 502 still goes out
    assert "bug in a sink" in caplog.text


# --- the /diffs query string --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        (b"", {"canary": None, "rule": None, "limit": None}),
        (b"canary=v2&rule=api%20reads", {"canary": "v2", "rule": "api reads", "limit": None}),
        (b"limit=0", {"canary": None, "rule": None, "limit": 0}),
        (b"limit=5&limit=7&other=1", {"canary": None, "rule": None, "limit": 7}),
    ],
)
def test_diffs_query(query: bytes, expected: dict[str, object]) -> None:
    assert parse_diffs_query(query) == expected


@pytest.mark.parametrize("limit", [b"-1", b"x", b"", b"1.0", b"%EF%BC%91", b"9" * 20])
def test_diffs_query_bad_limit(limit: bytes) -> None:
    with pytest.raises(DiffsQueryError, match="non-negative integer"):
        parse_diffs_query(b"limit=" + limit)
