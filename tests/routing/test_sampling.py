"""Sampling: random draws, and keyed sampling with the unsalted stable hash."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from sidecar.dsl import ast
from sidecar.routing.sampling import key_position
from sidecar.routing.table import compile_table
from tests.support.routing import config, req, rule

KEYS = [f"user-{i}" for i in range(10_000)]


def test_random_sampling_rate() -> None:
    table = compile_table(config([rule("r", ["a"], rate=0.10)]), random=random.Random(7).random)
    view = req()
    n = 100_000
    hits = sum(1 for _ in range(n) if table.decide(view))
    assert abs(hits - n * 0.10) <= n * 0.10 * 0.05  # within ±5% relative


def test_no_sample_mirrors_every_request_without_drawing() -> None:
    def never() -> float:
        raise AssertionError("no draw expected")

    table = compile_table(config([rule("r", ["a"])]), random=never)
    assert table.decide(req())


def test_sample_100_percent_does_not_draw() -> None:
    def never() -> float:
        raise AssertionError("no draw expected")

    table = compile_table(config([rule("r", ["a"], rate=1.0, by="client")]), random=never)
    assert table.decide(req(client="10.0.0.1"))


def test_key_position_is_a_fraction() -> None:
    positions = [key_position(k) for k in KEYS]
    assert all(0.0 <= p < 1.0 for p in positions)
    assert key_position("") == key_position("")
    assert key_position("\udcff") >= 0.0  # a lone surrogate does not raise


def test_key_position_is_the_same_in_another_process() -> None:
    keys = [*KEYS[:200], "", "caf\u00e9", "\u2603", "10.0.0.1", "::1"]
    code = (
        "import json, sys\n"
        "from sidecar.routing.sampling import key_position\n"
        "print(json.dumps([key_position(k) for k in json.load(sys.stdin)]))\n"
    )
    # A different hash seed would change hash(); key_position must not depend on it.
    out = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(keys),
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345"},
        timeout=60,
    ).stdout
    assert json.loads(out) == [key_position(k) for k in keys]


@pytest.mark.parametrize(
    ("key", "position"),
    [("user-1", 0.6041924073669338), ("", 0.8931675160897388), ("10.0.0.1", 0.32640017729254467)],
)
def test_key_positions_are_pinned(key: str, position: float) -> None:
    # Changing the hash would reshuffle every sticky sample in production: pin it.
    assert key_position(key) == position


def _in(rate: float, by: ast.SampleKey, key: str | None) -> set[str]:
    table = compile_table(config([rule("r", ["a"], rate=rate, by=by, key=key)]), random=_no_draw)
    picked = set()
    for k in KEYS:
        if by == "header":
            view = req(headers=[("X-User", k)])
        elif by == "cookie":
            view = req(headers=[("Cookie", f"uid={k}")])
        else:
            view = req(query=f"uid={k}")
        if table.decide(view):
            picked.add(k)
    return picked


def _no_draw() -> float:
    raise AssertionError("a request with the key must not draw")


@pytest.mark.parametrize(("by", "key"), [("header", "X-User"), ("cookie", "uid"), ("query", "uid")])
def test_keyed_sampling_nests_and_is_near_the_rate(by: ast.SampleKey, key: str) -> None:
    ten, thirty = _in(0.10, by, key), _in(0.30, by, key)
    assert ten <= thirty
    assert abs(len(ten) - 1000) <= 100
    assert abs(len(thirty) - 3000) <= 150


def test_keyed_sampling_is_the_same_for_every_rule_and_every_table() -> None:
    # Unsalted: the rule's name plays no part.
    for name in ("r", "other"):
        table = compile_table(
            config([rule(name, ["a"], rate=0.2, by="header", key="x-user")]), random=_no_draw
        )
        got = {k for k in KEYS[:2000] if table.decide(req(headers=[("X-User", k)]))}
        assert got == {k for k in KEYS[:2000] if key_position(k) < 0.2}


def test_keyed_sampling_uses_the_first_value() -> None:
    inside = next(k for k in KEYS if key_position(k) < 0.1)
    outside = next(k for k in KEYS if key_position(k) >= 0.1)
    table = compile_table(config([rule("r", ["a"], rate=0.1, by="header", key="x-user")]))
    assert table.decide(req(headers=[("X-User", inside), ("X-User", outside)]))
    assert not table.decide(req(headers=[("X-User", outside), ("X-User", inside)]))


def test_sampling_by_client() -> None:
    table = compile_table(config([rule("r", ["a"], rate=0.3, by="client")]), random=_no_draw)
    clients = [f"10.0.{i // 256}.{i % 256}" for i in range(5000)]
    got = {c for c in clients if table.decide(req(client=c))}
    assert got == {c for c in clients if key_position(c) < 0.3}
    assert abs(len(got) - 1500) <= 150


@pytest.mark.parametrize(
    ("by", "key"),
    [("header", "X-User"), ("cookie", "uid"), ("query", "uid"), ("client", None)],
)
def test_missing_key_falls_back_to_a_random_draw(by: ast.SampleKey, key: str | None) -> None:
    draws = iter([0.05, 0.95])
    table = compile_table(
        config([rule("r", ["a"], rate=0.1, by=by, key=key)]), random=lambda: next(draws)
    )
    assert table.decide(req())  # drew 0.05 < 0.1
    assert not table.decide(req())  # drew 0.95


def test_missing_key_fallback_rate() -> None:
    table = compile_table(
        config([rule("r", ["a"], rate=0.25, by="header", key="x-user")]),
        random=random.Random(3).random,
    )
    n = 40_000
    hits = sum(1 for _ in range(n) if table.decide(req()))
    assert abs(hits - n * 0.25) <= n * 0.25 * 0.05
