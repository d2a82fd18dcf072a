"""The rendezvous of a request's primary and canary responses, every arrival order."""

from __future__ import annotations

import itertools
import json

import pytest

from sidecar.model.compare import CompareSpec
from sidecar.shadow.compare.capture import Capture, Captured
from sidecar.shadow.compare.record import RequestInfo
from sidecar.shadow.compare.rendezvous import CompareResult, Rendezvous

SPEC = CompareSpec(status=True, body="json")
REQUEST = RequestInfo(method="GET", path="/api/items", query="page=2", id=None)
NOW = 1_765_000_000.0


def captured(body: dict[str, object], status: int = 200, *, complete: bool = True) -> Captured:
    cap = Capture(SPEC)
    cap.start(status, [(b"content-type", b"application/json")])
    cap.feed(json.dumps(body).encode())
    return cap.finish() if complete else cap.incomplete()


def rendezvous() -> tuple[Rendezvous, list[CompareResult]]:
    out: list[CompareResult] = []
    return Rendezvous(REQUEST, out.append, now=lambda: NOW), out


PRIMARY = {"price": 9.5, "ts": 1}
SAME = {"price": 9.5, "ts": 1}
DIFFERENT = {"price": 9.05, "ts": 1}


@pytest.mark.parametrize("primary_first", [True, False])
def test_whoever_arrives_last_judges(primary_first: bool) -> None:
    rv, out = rendezvous()
    rv.compared("v2", "api", SPEC)
    assert rv.primary_specs == (SPEC,)
    assert rv.capture_spec("v2") is SPEC
    arrivals = [
        lambda: rv.primary_done({SPEC: captured(PRIMARY)}),
        lambda: rv.canary_done("v2", captured(DIFFERENT)),
    ]
    if not primary_first:
        arrivals.reverse()
    arrivals[0]()
    assert out == []  # nobody waits: the first arrival only stores
    arrivals[1]()
    [result] = out
    assert (result.canary, result.rule, result.verdict.result) == ("v2", "api", "diff")
    assert result.record is not None
    assert result.record["canary"]["name"] == "v2"
    assert result.record["request"] == {
        "method": "GET",
        "path": "/api/items",
        "query": "page=2",
        "id": None,
    }
    assert [d["where"] for d in result.record["differences"]] == ["$['price']"]
    assert rv.waiting == 0


def test_a_match_has_no_record_and_each_canary_is_judged_once() -> None:
    rv, out = rendezvous()
    rv.compared("v2", "api", SPEC)
    rv.canary_done("v2", captured(SAME))
    rv.canary_done("v2", captured(DIFFERENT))  # a second report of the same tee is ignored
    rv.primary_done({SPEC: captured(PRIMARY)})
    assert [(r.verdict.result, r.record) for r in out] == [("match", None)]


def test_a_tee_that_did_not_complete_is_not_compared() -> None:
    rv, out = rendezvous()
    rv.compared("v2", "api", SPEC)
    rv.primary_done({SPEC: captured(PRIMARY)})
    rv.canary_done("v2", None)
    assert out == []
    assert rv.waiting == 0


def test_primary_failed_skips_completed_tees() -> None:
    rv, out = rendezvous()
    rv.compared("v2", "api", SPEC)
    rv.compared("v3", "api", SPEC)
    rv.canary_done("v2", captured(SAME))
    rv.primary_failed()
    rv.canary_done("v3", captured(SAME))
    assert [(r.canary, r.verdict.result, r.verdict.reason) for r in out] == [
        ("v2", "skipped", "primary_failed"),
        ("v3", "skipped", "primary_failed"),
    ]


def test_an_incomplete_primary_is_skipped() -> None:
    rv, out = rendezvous()
    rv.compared("v2", "api", SPEC)
    rv.primary_done({SPEC: captured(PRIMARY, complete=False)})
    rv.canary_done("v2", captured(SAME))
    assert [(r.verdict.result, r.verdict.reason) for r in out] == [
        ("skipped", "primary_incomplete")
    ]


NOISY_PRIMARY = {"price": 9.5, "ts": 1}
NOISY_CANARY = {"price": 9.05, "ts": 2}
NOISY_BASELINE = {"price": 9.5, "ts": 3}


@pytest.mark.parametrize("order", list(itertools.permutations(["primary", "v2", "v1"])))
def test_noise_from_the_baseline_in_every_arrival_order(order: tuple[str, ...]) -> None:
    rv, out = rendezvous()
    rv.compared("v2", "api", SPEC, baseline="v1")
    rv.baseline("v1", SPEC)
    assert rv.capture_spec("v1") is SPEC
    arrive = {
        "primary": lambda: rv.primary_done({SPEC: captured(NOISY_PRIMARY)}),
        "v2": lambda: rv.canary_done("v2", captured(NOISY_CANARY)),
        "v1": lambda: rv.canary_done("v1", captured(NOISY_BASELINE)),
    }
    for name in order[:-1]:
        arrive[name]()
        assert out == []  # the judgement waits for all three, without anyone waiting
    arrive[order[-1]]()
    [result] = out
    assert result.verdict.result == "diff"
    assert [d.where for d in result.verdict.differences] == ["$['price']"]
    assert [d.where for d in result.verdict.noise] == ["$['ts']"]
    assert result.record is not None
    assert [n["where"] for n in result.record["noise"]] == ["$['ts']"]


def test_a_baseline_that_failed_removes_no_noise() -> None:
    rv, out = rendezvous()
    rv.compared("v2", "api", SPEC, baseline="v1")
    rv.baseline("v1", SPEC)
    rv.primary_done({SPEC: captured(NOISY_PRIMARY)})
    rv.canary_done("v2", captured(NOISY_CANARY))
    assert out == []
    rv.canary_done("v1", None)
    [result] = out
    assert sorted(d.where for d in result.verdict.differences) == ["$['price']", "$['ts']"]
    assert result.verdict.noise == ()


def test_all_noise_is_a_match() -> None:
    rv, out = rendezvous()
    rv.compared("v2", "api", SPEC, baseline="v1")
    rv.baseline("v1", SPEC)
    rv.primary_done({SPEC: captured({"ts": 1})})
    rv.canary_done("v1", captured({"ts": 2}))
    rv.canary_done("v2", captured({"ts": 3}))
    [result] = out
    assert result.verdict.result == "match"
    assert [d.where for d in result.verdict.noise] == ["$['ts']"]


def test_two_specs_capture_the_primary_twice() -> None:
    other = CompareSpec(status=True)
    rv, out = rendezvous()
    rv.compared("v2", "a", SPEC)
    rv.compared("v3", "b", other)
    assert rv.primary_specs == (SPEC, other)
    cap_other = Capture(other)
    cap_other.start(500, [])
    rv.primary_done({SPEC: captured(PRIMARY), other: cap_other.finish()})
    rv.canary_done("v2", captured(SAME))
    cap = Capture(other)
    cap.start(200, [])
    rv.canary_done("v3", cap.finish())
    assert [(r.canary, r.verdict.result) for r in out] == [("v2", "match"), ("v3", "diff")]
