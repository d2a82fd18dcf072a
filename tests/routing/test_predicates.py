"""Predicate semantics, table-driven from rule text: every subject with every operator."""

from __future__ import annotations

import pytest

from sidecar.dsl import ast
from sidecar.routing.predicates import compile_expr
from sidecar.routing.request import RequestView
from tests.support.routing import and_, group, not_, or_, req, t, when

R = req(
    method="POST",
    path="/api/v1/users",
    query="id=42&tag=a&tag=b&debug",
    headers=[
        ("Host", "Api.Example.com:8443"),
        ("X-Tag", "alpha"),
        ("x-tag", "beta"),
        ("Cookie", "session=abc123; theme=dark"),
        ("Cookie", "theme=light"),
    ],
    client="10.1.2.3",
)
EMPTY = req()

# (predicate as written after `when`, request, expected)
CASES: list[tuple[str, RequestView, bool]] = [
    # --- method
    ("method == POST", R, True),
    ("method == GET", R, False),
    ("method != GET", R, True),
    ("method != POST", R, False),
    ("method in (GET, POST)", R, True),
    ("method in (GET, HEAD)", R, False),
    # --- path
    ('path == "/api/v1/users"', R, True),
    ('path == "/api/v1/users?id=42"', R, False),
    ('path != "/api/v1/users"', R, False),
    ('path != "/"', R, True),
    ('path ^= "/api/"', R, True),
    ('path ^= "/admin"', R, False),
    ('path $= "/users"', R, True),
    ('path $= "/user"', R, False),
    ('path *= "/v1/"', R, True),
    ('path *= "/v2/"', R, False),
    ('path ~ "v\\\\d+/"', R, True),
    ('path ~ "^/users"', R, False),
    ('path !~ "^/users"', R, True),
    ('path !~ "v\\\\d+/"', R, False),
    ('path in ("/a", "/api/v1/users")', R, True),
    ('path in ("/a", "/b")', R, False),
    # --- host
    ('host == "api.example.com"', R, True),
    ('host == "Api.Example.com"', R, True),  # the DSL lower-cases host operands
    ('host != "api.example.com"', R, False),
    ('host ^= "api."', R, True),
    ('host $= ".example.com"', R, True),
    ('host $= ":8443"', R, False),
    ('host *= "example"', R, True),
    ('host ~ "\\\\.com$"', R, True),
    ('host !~ "\\\\.com$"', R, False),
    ('host in ("api.example.com", "x")', R, True),
    ('host == ""', EMPTY, True),
    # --- header
    ('header "X-TAG" exists', R, True),
    ('header "x-missing" exists', R, False),
    ('header "x-tag" == "beta"', R, True),
    ('header "X-Tag" == "gamma"', R, False),
    ('header "X-Tag" != "beta"', R, False),
    ('header "X-Tag" != "gamma"', R, True),
    ('header "X-Missing" != "x"', R, True),
    ('header "X-Missing" == "x"', R, False),
    ('header "x-tag" ^= "be"', R, True),
    ('header "x-tag" ^= "ga"', R, False),
    ('header "x-missing" ^= ""', R, False),
    ('header "x-tag" $= "pha"', R, True),
    ('header "x-tag" $= "zzz"', R, False),
    ('header "x-tag" *= "et"', R, True),
    ('header "x-tag" *= "zz"', R, False),
    ('header "x-tag" ~ "^b"', R, True),
    ('header "x-tag" ~ "^g"', R, False),
    ('header "x-tag" !~ "^b"', R, False),
    ('header "x-tag" !~ "^g"', R, True),
    ('header "x-missing" !~ "."', R, True),
    ('header "x-missing" ~ ""', R, False),
    ('header "X-Tag" in ("gamma", "alpha")', R, True),
    ('header "X-Tag" in ("gamma", "delta")', R, False),
    ('header "x-missing" in ("x")', R, False),
    # --- query
    ('query "debug" exists', R, True),
    ('query "debug" == ""', R, True),
    ('query "DEBUG" exists', R, False),
    ('query "tag" == "b"', R, True),
    ('query "tag" != "b"', R, False),
    ('query "tag" != "c"', R, True),
    ('query "id" ^= "4"', R, True),
    ('query "id" $= "2"', R, True),
    ('query "id" *= "x"', R, False),
    ('query "id" ~ "^\\\\d+$"', R, True),
    ('query "id" !~ "^\\\\d+$"', R, False),
    ('query "tag" in ("a", "z")', R, True),
    ('query "tag" in ("y", "z")', R, False),
    ('query "nope" != "1"', R, True),
    # --- cookie
    ('cookie "session" exists', R, True),
    ('cookie "Session" exists', R, False),
    ('cookie "theme" == "light"', R, True),
    ('cookie "theme" != "light"', R, False),
    ('cookie "theme" != "blue"', R, True),
    ('cookie "session" ^= "abc"', R, True),
    ('cookie "session" $= "123"', R, True),
    ('cookie "session" *= "c12"', R, True),
    ('cookie "session" ~ "^[a-z]+\\\\d+$"', R, True),
    ('cookie "theme" !~ "^d"', R, False),
    ('cookie "theme" in ("dark", "blue")', R, True),
    ('cookie "theme" in ("blue")', R, False),
    # --- client
    ('client in ("10.0.0.0/8")', R, True),
    ('client in ("192.168.0.0/16", "10.1.2.3")', R, True),
    ('client in ("10.1.3.0/24")', R, False),
    ('client in ("::1/128")', R, False),
    ('client in ("::1/128")', req(client="::1"), True),
    ('client in ("2001:db8::/32")', req(client="2001:db8::7"), True),
    ('client in ("10.0.0.0/8")', req(client="::ffff:10.9.9.9"), True),
    ('client in ("::ffff:10.0.0.0/104")', req(client="10.9.9.9"), True),
    ('client in ("0.0.0.0/0")', req(client=""), False),
    ('client in ("0.0.0.0/0", "::/0")', req(client="not-an-ip"), False),
]


@pytest.mark.parametrize(
    ("text", "view", "expected"),
    CASES,
    ids=[
        f"{c[0]} -> {c[2]}" + ("" if c[1] is R else f" [{c[1].client or 'empty'}]") for c in CASES
    ],
)
def test_predicate(text: str, view: RequestView, expected: bool) -> None:
    assert compile_expr(when(text)).check(view) is expected


def test_every_subject_meets_every_operator() -> None:
    seen = set()
    for text, _, _ in CASES:
        e = when(text)
        assert isinstance(e, ast.Test)
        seen.add((e.subject, e.op))
    string_ops = {"==", "!=", "^=", "$=", "*=", "~", "!~", "in"}
    want = {("method", op) for op in ("==", "!=", "in")} | {("client", "in")}
    want |= {(s, op) for s in ("path", "host") for op in string_ops}
    want |= {(s, op) for s in ("header", "query", "cookie") for op in string_ops | {"exists"}}
    assert want <= seen


@pytest.mark.parametrize(
    ("positive", "negative"),
    [
        ('header "X-Tag" == "beta"', 'header "X-Tag" != "beta"'),
        ('header "X-Missing" == "x"', 'header "X-Missing" != "x"'),
        ('query "tag" ~ "^a"', 'query "tag" !~ "^a"'),
        ('query "nope" == ""', 'query "nope" != ""'),
        ('cookie "nope" ~ "zzz"', 'cookie "nope" !~ "zzz"'),
        ('cookie "theme" == "dark"', 'cookie "theme" != "dark"'),
        ('path ~ "v1"', 'path !~ "v1"'),
        ('host == "api.example.com"', 'host != "api.example.com"'),
        ("method == POST", "method != POST"),
    ],
)
def test_negations_are_exact(positive: str, negative: str) -> None:
    for view in (R, EMPTY):
        assert compile_expr(when(negative)).check(view) is (
            not compile_expr(when(positive)).check(view)
        )


# YES holds for R, NO does not.
YES, NO = 'path ^= "/api/"', "method == GET"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (f"not {YES}", False),
        (f"not {NO}", True),
        (f"not not {YES}", True),
        (f"{YES} and {NO}", False),
        (f"{YES} and {YES} and {YES} and {YES} and {NO}", False),
        (f"{YES} and {YES} and {YES} and {YES}", True),
        (f"{NO} or {YES}", True),
        (f"{NO} or {NO} or {NO} or {NO}", False),
        (f"{NO} or {NO} or {NO} or {NO} or {YES}", True),
        # and binds tighter than or: a and b or c == (a and b) or c
        (f"{YES} and {NO} or {YES}", True),
        (f"{YES} or {YES} and {NO}", True),  # a or (b and c)
        (f"({YES} or {YES}) and {NO}", False),  # parentheses group
        (f"{NO} and {NO} or {YES}", True),
        (f"{NO} and ({NO} or {YES})", False),
        # not binds tighter than and / or
        (f"not {NO} and {YES}", True),
        (f"not {YES} and {NO}", False),
        (f"not {YES} or {YES}", True),  # (not a) or b
        (f"not ({YES} or {YES})", False),
        (f"not ({YES} and {NO})", True),
        (f"{YES} and ({NO} or ({YES} and not {NO}))", True),
    ],
)
def test_precedence_and_parentheses(text: str, expected: bool) -> None:
    assert compile_expr(when(text)).check(R) is expected


@pytest.mark.parametrize(
    ("text", "failing"),
    [
        (YES, None),
        (NO, "method == GET"),
        (f'{YES} and {NO} and path == "/x"', "method == GET"),
        (f'{YES} and ({YES} and path == "/x")', 'path == "/x"'),
        (f'{NO} or path == "/x"', 'method == GET or path == "/x"'),
        (f"not {YES}", 'not path ^= "/api/"'),
        (f"({NO} or {NO})", "(method == GET or method == GET)"),
        (f'{YES} and (path == "/a" or path == "/b")', '(path == "/a" or path == "/b")'),
        (f"{YES} and ({NO})", "(method == GET)"),
        (f"{YES} and (({NO} or {NO}))", "((method == GET or method == GET))"),
        (f"{YES} and (not {YES})", '(not path ^= "/api/")'),
    ],
)
def test_failing_clause_names_the_first_clause_that_fails(text: str, failing: str | None) -> None:
    assert compile_expr(when(text)).failing_clause(R) == failing


def test_predicate_text_keeps_parentheses() -> None:
    text = 'not path ^= "/api/" and (method == GET or header "X-Debug" exists)'
    assert compile_expr(when(text)).text == text


# --- built from syntax nodes: what validation keeps rule text from saying -------------


def test_connectives_built_directly() -> None:
    yes, no = t("path", "^=", "/api/"), t("method", "==", "GET")
    assert compile_expr(and_(not_(no), group(or_(no, yes)))).check(R) is True
    assert compile_expr(and_(yes)).check(R) is True  # a one-operand and/or degenerates
    assert compile_expr(or_(no)).check(R) is False


def test_invalid_regex_fails_at_compile_time() -> None:
    with pytest.raises(ValueError, match="invalid regex"):
        compile_expr(t("path", "~", "("))
