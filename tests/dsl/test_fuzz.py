"""Fuzzing parse + validate: random text and mutations of valid files never raise,
and every diagnostic points inside the file it names.

The default suite runs a modest number of examples; the `slow` variants run
10,000 each (CI). Derandomized so that a run is reproducible.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.diagnostics import Diagnostic
from sidecar.dsl.parser import parse
from sidecar.dsl.validate import CODES, validate

ROOT = Path(__file__).resolve().parents[2]
VALID = [p.read_text() for p in sorted((ROOT / "rules").glob("*.mirror"))] + [
    p.read_text()
    for p in sorted((Path(__file__).parent / "cases").glob("*.mirror"))
    if p.stem != "invalid-utf8"
]
TOKENS = [
    "listen",
    "admin",
    "off",
    "primary",
    "canary",
    "mirror",
    "exclude",
    "when",
    "sample",
    "to",
    "by",
    "header",
    "cookie",
    "query",
    "client",
    "method",
    "path",
    "host",
    "server",
    "weight",
    "workers",
    "queue",
    "timeout",
    "max_body",
    "body",
    "on",
    "mark",
    "rate",
    "preserve",
    "set",
    "drop",
    "rewrite",
    "compare",
    "status",
    "bytes",
    "json",
    "ignore",
    "baseline",
    '"$.a[*].id"',
    '"$.a["',
    "diff_log",
    "stderr",
    '"d.jsonl"',
    "pause",
    "after",
    "failures",
    "for",
    "request_id",
    '"X-Request-Id"',
    "and",
    "or",
    "not",
    "in",
    "exists",
    "{",
    "}",
    "(",
    ")",
    ",",
    "==",
    "!=",
    "^=",
    "$=",
    "*=",
    "~",
    "!~",
    "GET",
    "v2",
    "x",
    '"X-A"',
    '"/api/"',
    '"("',
    '""',
    '"\\""',
    "10%",
    "0.5",
    "0",
    "8",
    "1024",
    "1025",
    "10s",
    "0ms",
    "1MiB",
    "1.5MB",
    "200/s",
    "5/m",
    "127.0.0.1:8080",
    "[::1]:1",
    "http://127.0.0.1:1",
    "http://a/b",
    "# c\n",
    "\n",
    '"10.0.0.0/8"',
]

FAST = settings(
    max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
SLOW = settings(
    max_examples=10_000, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck)
)


def check_never_raises(text: str) -> None:
    file, diags = parse(text, "f.mirror")
    if file is not None:
        _, more = validate([file], complete=True)
        diags = diags + more
        _, partial = validate([file], complete=False)
        diags = diags + partial
    lines = text.split("\n")
    for d in diags:
        assert_inside(d, lines)


def assert_inside(d: Diagnostic, lines: list[str]) -> None:
    assert d.code in CODES, d.code
    assert d.span.file == "f.mirror"
    assert 1 <= d.span.line <= len(lines), (d, len(lines))
    assert 1 <= d.span.column <= len(lines[d.span.line - 1]) + 1, d
    assert d.message


token_soup = st.lists(st.sampled_from(TOKENS), max_size=40).map(" ".join)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    text = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, min(len(text), i + 20)))
        insert = draw(st.one_of(st.sampled_from(TOKENS), st.text(max_size=5)))
        text = text[:i] + draw(st.sampled_from(["", insert, " " + insert + " "])) + text[j:]
    return text


@FAST
@given(st.text(max_size=200))
def test_random_text(text: str) -> None:
    check_never_raises(text)


@FAST
@given(token_soup)
def test_token_soup(text: str) -> None:
    check_never_raises(text)


@FAST
@given(mutated())
def test_mutations_of_valid_files(text: str) -> None:
    check_never_raises(text)


@pytest.mark.slow
@SLOW
@given(st.one_of(st.text(max_size=300), token_soup, mutated()))
def test_fuzz_10k(text: str) -> None:
    check_never_raises(text)
