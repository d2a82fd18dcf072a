"""`RequestTees.begin()` with comparison: sampling, registration, and what a dropped tee owes.

Plain function tests over stand-in pools (admission is synchronous; no loop needed).
"""

from __future__ import annotations

import random
from typing import Any, cast

import pytest

from sidecar.model.compare import CompareSpec
from sidecar.model.config import CanarySpec, ServerSpec
from sidecar.model.endpoint import Endpoint
from sidecar.shadow.compare.capture import Capture
from sidecar.shadow.compare.rendezvous import CompareResult, Rendezvous
from sidecar.shadow.pool import CanaryPool
from sidecar.shadow.tees import RequestTees
from sidecar.shadow.types import Job, Outcome

SERVER = (ServerSpec(endpoint=Endpoint.parse("http://127.0.0.1:9")),)


class FakePool:
    """What `RequestTees` uses of a `CanaryPool`: spec, name, refusal, ended_at_once,
    dispatch, record."""

    def __init__(self, name: str, compare: CompareSpec | None = None, **spec: Any) -> None:
        self.spec = CanarySpec(name=name, servers=SERVER, compare=compare, **spec)
        self.name = name
        self.refuse: Outcome | None = None
        self.jobs: list[Job] = []
        self.recorded: list[Outcome] = []

    def refusal(self) -> Outcome | None:
        return self.refuse

    def ended_at_once(self, rule: str | None) -> bool:
        if self.refuse is None:
            return False  # never in a connect back-off
        self.record(self.refuse, rule)
        return True

    def dispatch(self, job: Job) -> Outcome:
        self.jobs.append(job)
        return Outcome.DISPATCHED

    def record(self, outcome: Outcome, rule: str | None, **_: Any) -> Outcome:
        self.recorded.append(outcome)
        return outcome


def begin(
    pools: list[FakePool],
    *,
    content_length: int | None = 0,
    rand: random.Random | None = None,
    results: list[CompareResult] | None = None,
    query: bytes = b"",
) -> RequestTees | None:
    sink = results if results is not None else []
    targets = [(cast(CanaryPool, p), f"rule_{p.name}") for p in pools]
    return RequestTees.begin(
        targets,
        "GET",
        b"/p",
        query,
        [],
        "10.0.0.1",
        "http",
        content_length,
        report=sink.append,
        random=(rand or random.Random(0)).random,
    )


def never() -> float:
    raise AssertionError("no draw expected")


def ignore(result: CompareResult) -> None:
    raise AssertionError(f"nothing is judged here: {result}")


SPEC = CompareSpec(status=True)


def test_no_compared_canary_no_rendezvous_and_no_draw() -> None:
    pool = FakePool("plain")
    targets = [(cast(CanaryPool, pool), "r")]
    args: tuple[str, bytes, bytes, list[tuple[bytes, bytes]], None, str, int] = (
        "GET",
        b"/",
        b"",
        [],
        None,
        "http",
        0,
    )
    assert RequestTees.begin(targets, *args, report=ignore, random=never) is None
    assert RequestTees.begin(targets, *args) is None  # no report: nothing is compared at all
    assert [j.rendezvous for j in pool.jobs] == [None, None]


def test_full_sample_rate_draws_nothing_and_registers() -> None:
    pool = FakePool("c", SPEC)
    targets = [(cast(CanaryPool, pool), "r")]
    tees = RequestTees.begin(
        targets, "GET", b"/a%20b", b"x=1&y", [], None, "http", 0, report=ignore, random=never
    )
    assert tees is not None  # returned for its rendezvous although nothing is pending
    assert not tees.pending
    rv = tees.rendezvous
    assert rv is not None
    assert pool.jobs[0].rendezvous is rv
    assert rv.capture_spec("c") == SPEC
    assert rv.primary_specs == (SPEC,)
    assert rv.waiting == 1


def test_sample_rate_half_with_a_seeded_random() -> None:
    spec = CompareSpec(status=True, sample_rate=0.5)
    requests = 2000
    expected = random.Random(7)
    draws = [expected.random() < 0.5 for _ in range(requests)]
    rand = random.Random(7)
    chosen = []
    for _ in range(requests):
        pool = FakePool("c", spec)
        tees = begin([pool], rand=rand)
        rv = None if tees is None else tees.rendezvous
        chosen.append(rv is not None)
        assert pool.jobs[0].rendezvous is rv  # the tee is mirrored either way
    assert chosen == draws  # one draw per compared tee, in order
    assert 900 < sum(chosen) < 1100


def test_baseline_registered_only_when_it_is_a_tee_too() -> None:
    spec = CompareSpec(status=True, baseline="base")
    can, base, other = FakePool("can", spec), FakePool("base"), FakePool("other")
    tees = begin([base, can, other])  # the baseline before the canary that names it
    assert tees is not None and tees.rendezvous is not None
    rv = tees.rendezvous
    assert rv.capture_spec("base") == spec
    assert rv.capture_spec("other") is None
    assert (can.jobs[0].rendezvous, base.jobs[0].rendezvous) == (rv, rv)
    assert other.jobs[0].rendezvous is None  # not compared: its worker owes nothing
    assert rv.waiting == 2

    can2 = FakePool("can", spec)
    tees = begin([can2])  # the baseline not chosen for this request
    assert tees is not None and tees.rendezvous is not None
    assert tees.rendezvous.capture_spec("base") is None
    assert tees.rendezvous.waiting == 1


def test_baseline_not_registered_when_the_canary_is_sampled_out() -> None:
    spec = CompareSpec(status=True, baseline="base", sample_rate=0.5)
    base = FakePool("base")
    assert begin([FakePool("can", spec), base], rand=_Fixed(0.9)) is None
    assert base.jobs[0].rendezvous is None


class _Fixed(random.Random):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def random(self) -> float:
        return self.value


def _complete(spec: CompareSpec) -> Any:
    cap = Capture(spec)
    cap.start(200, [])
    return cap.finish()


@pytest.mark.parametrize("how", ["refused", "oversize_declared", "oversize_fed", "abort", "unread"])
def test_a_dropped_compared_tee_arrives_with_nothing(how: str) -> None:
    results: list[CompareResult] = []
    pool = FakePool("c", SPEC, max_body_bytes=10)
    if how == "refused":
        pool.refuse = Outcome.DROPPED_FULL
    declared = {"oversize_declared": 11, "unread": 10}.get(how)
    tees = begin([pool], content_length=declared, results=results)
    assert tees is not None
    rv = tees.rendezvous
    assert rv is not None
    if how == "oversize_fed":
        tees.feed(b"x" * 11)
    elif how == "abort":
        tees.feed(b"x")
        tees.abort()
    elif how == "unread":
        tees.feed(b"x" * 5)
        tees.unread()
    elif how == "refused":
        tees.finish()
    assert pool.jobs == []
    assert rv.waiting == 0  # nobody else will report it
    rv.primary_done({SPEC: _complete(SPEC)})
    assert results == []  # a tee that did not complete is not compared


def test_admitted_after_the_body_carries_the_rendezvous_and_is_judged() -> None:
    results: list[CompareResult] = []
    pool = FakePool("c", SPEC)
    tees = begin([pool], content_length=None, results=results, query=b"q=1")
    assert tees is not None and tees.pending
    tees.feed(b"body")
    tees.finish()
    (job,) = pool.jobs
    rv = job.rendezvous
    assert isinstance(rv, Rendezvous) and rv is tees.rendezvous
    rv.canary_done("c", _complete(SPEC))
    rv.primary_done({SPEC: _complete(SPEC)})
    assert [(r.canary, r.rule, r.verdict.result) for r in results] == [("c", "rule_c", "match")]
