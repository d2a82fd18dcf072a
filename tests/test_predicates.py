"""Predicate semantics, table-driven: every subject with every operator."""

from __future__ import annotations

import pytest

from sidecar.dsl import ast
from sidecar.predicates import compile_expr, expr_text
from sidecar.request import RequestView
from tests.routing_helpers import and_, group, not_, or_, req, t

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

# (expr, request, expected)
Case = tuple[ast.Expr, RequestView, bool]

CASES: list[Case] = [
    # --- method
    (t("method", "==", "POST"), R, True),
    (t("method", "==", "GET"), R, False),
    (t("method", "!=", "GET"), R, True),
    (t("method", "!=", "POST"), R, False),
    (t("method", "in", "GET", "POST"), R, True),
    (t("method", "in", "GET", "HEAD"), R, False),
    # --- path
    (t("path", "==", "/api/v1/users"), R, True),
    (t("path", "==", "/api/v1/users?id=42"), R, False),  # the query is not part of the path
    (t("path", "!=", "/api/v1/users"), R, False),
    (t("path", "!=", "/"), R, True),
    (t("path", "^=", "/api/"), R, True),
    (t("path", "^=", "/admin"), R, False),
    (t("path", "$=", "/users"), R, True),
    (t("path", "$=", "/user"), R, False),
    (t("path", "*=", "/v1/"), R, True),
    (t("path", "*=", "/v2/"), R, False),
    (t("path", "~", r"v\d+/"), R, True),  # search: unanchored
    (t("path", "~", r"^/users"), R, False),
    (t("path", "!~", r"^/users"), R, True),
    (t("path", "!~", r"v\d+/"), R, False),
    (t("path", "in", "/a", "/api/v1/users"), R, True),
    (t("path", "in", "/a", "/b"), R, False),
    # --- host: port stripped, lower case
    (t("host", "==", "api.example.com"), R, True),
    (t("host", "==", "Api.Example.com"), R, False),
    (t("host", "!=", "api.example.com"), R, False),
    (t("host", "^=", "api."), R, True),
    (t("host", "$=", ".example.com"), R, True),
    (t("host", "$=", ":8443"), R, False),
    (t("host", "*=", "example"), R, True),
    (t("host", "~", r"\.com$"), R, True),
    (t("host", "!~", r"\.com$"), R, False),
    (t("host", "in", "api.example.com", "x"), R, True),
    (t("host", "==", ""), EMPTY, True),
    # --- header: any case, any value
    (t("header", "exists", key="X-TAG"), R, True),
    (t("header", "exists", key="x-missing"), R, False),
    (t("header", "==", "beta", key="x-tag"), R, True),  # the second line
    (t("header", "==", "gamma", key="X-Tag"), R, False),
    (t("header", "!=", "beta", key="X-Tag"), R, False),  # exactly not (==)
    (t("header", "!=", "gamma", key="X-Tag"), R, True),
    (t("header", "!=", "x", key="X-Missing"), R, True),  # a missing header is != anything
    (t("header", "==", "x", key="X-Missing"), R, False),
    (t("header", "^=", "be", key="x-tag"), R, True),
    (t("header", "^=", "ga", key="x-tag"), R, False),
    (t("header", "^=", "", key="x-missing"), R, False),
    (t("header", "$=", "pha", key="x-tag"), R, True),
    (t("header", "$=", "zzz", key="x-tag"), R, False),
    (t("header", "*=", "et", key="x-tag"), R, True),
    (t("header", "*=", "zz", key="x-tag"), R, False),
    (t("header", "~", "^b", key="x-tag"), R, True),
    (t("header", "~", "^g", key="x-tag"), R, False),
    (t("header", "!~", "^b", key="x-tag"), R, False),  # exactly not (~): one value matches
    (t("header", "!~", "^g", key="x-tag"), R, True),
    (t("header", "!~", ".", key="x-missing"), R, True),
    (t("header", "~", "", key="x-missing"), R, False),
    (t("header", "in", "gamma", "alpha", key="X-Tag"), R, True),
    (t("header", "in", "gamma", "delta", key="X-Tag"), R, False),
    (t("header", "in", "x", key="x-missing"), R, False),
    # --- query: several values, a bare name exists with an empty value
    (t("query", "exists", key="debug"), R, True),
    (t("query", "==", "", key="debug"), R, True),
    (t("query", "exists", key="DEBUG"), R, False),
    (t("query", "==", "b", key="tag"), R, True),
    (t("query", "!=", "b", key="tag"), R, False),
    (t("query", "!=", "c", key="tag"), R, True),
    (t("query", "^=", "4", key="id"), R, True),
    (t("query", "$=", "2", key="id"), R, True),
    (t("query", "*=", "x", key="id"), R, False),
    (t("query", "~", r"^\d+$", key="id"), R, True),
    (t("query", "!~", r"^\d+$", key="id"), R, False),
    (t("query", "in", "a", "z", key="tag"), R, True),
    (t("query", "in", "y", "z", key="tag"), R, False),
    (t("query", "!=", "1", key="nope"), R, True),
    # --- cookie: across Cookie lines
    (t("cookie", "exists", key="session"), R, True),
    (t("cookie", "exists", key="Session"), R, False),
    (t("cookie", "==", "light", key="theme"), R, True),
    (t("cookie", "!=", "light", key="theme"), R, False),
    (t("cookie", "!=", "blue", key="theme"), R, True),
    (t("cookie", "^=", "abc", key="session"), R, True),
    (t("cookie", "$=", "123", key="session"), R, True),
    (t("cookie", "*=", "c12", key="session"), R, True),
    (t("cookie", "~", "^[a-z]+\\d+$", key="session"), R, True),
    (t("cookie", "!~", "^d", key="theme"), R, False),
    (t("cookie", "in", "dark", "blue", key="theme"), R, True),
    (t("cookie", "in", "blue", key="theme"), R, False),
    # --- client in CIDR
    (t("client", "in", "10.0.0.0/8"), R, True),
    (t("client", "in", "192.168.0.0/16", "10.1.2.3"), R, True),  # a bare address is a /32
    (t("client", "in", "10.1.3.0/24"), R, False),
    (t("client", "in", "::1/128"), R, False),
    (t("client", "in", "::1/128"), req(client="::1"), True),
    (t("client", "in", "2001:db8::/32"), req(client="2001:db8::7"), True),
    (t("client", "in", "10.0.0.0/8"), req(client="::ffff:10.9.9.9"), True),  # IPv4-mapped
    (t("client", "in", "::ffff:10.0.0.0/104"), req(client="10.9.9.9"), True),
    (t("client", "in", "0.0.0.0/0"), req(client=""), False),  # no peer address
    (t("client", "in", "0.0.0.0/0", "::/0"), req(client="not-an-ip"), False),
]


def _id(case: Case) -> str:
    expr, view, expected = case
    return f"{expr_text(expr)} -> {expected}" + ("" if view is R else f" [{view!r}]")


@pytest.mark.parametrize(("expr", "view", "expected"), CASES, ids=[_id(c) for c in CASES])
def test_predicate(expr: ast.Expr, view: RequestView, expected: bool) -> None:
    assert compile_expr(expr).check(view) is expected


def test_every_subject_meets_every_operator() -> None:
    seen = {(e.subject, e.op) for e, _, _ in CASES if isinstance(e, ast.Test)}
    string_ops = {"==", "!=", "^=", "$=", "*=", "~", "!~", "in"}
    want = {("method", op) for op in ("==", "!=", "in")} | {("client", "in")}
    want |= {(s, op) for s in ("path", "host") for op in string_ops}
    want |= {(s, op) for s in ("header", "query", "cookie") for op in string_ops | {"exists"}}
    assert want <= seen


@pytest.mark.parametrize(
    "base",
    [
        t("header", "==", "beta", key="x-tag"),
        t("header", "==", "x", key="x-missing"),
        t("query", "~", "^a", key="tag"),
        t("cookie", "~", "zzz", key="nope"),
        t("path", "~", "v1"),
    ],
)
def test_negations_are_exact(base: ast.Test) -> None:
    neg_op: ast.Op = "!=" if base.op == "==" else "!~"
    neg = ast.Test(
        subject=base.subject, key=base.key, op=neg_op, args=base.args, text="neg", span=base.span
    )
    for view in (R, EMPTY):
        assert compile_expr(neg).check(view) is (not compile_expr(base).check(view))


YES = t("path", "^=", "/api/")
NO = t("method", "==", "GET")


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (not_(YES), False),
        (not_(NO), True),
        (not_(not_(YES)), True),
        (and_(YES, YES), True),
        (and_(YES, NO), False),
        (and_(YES, YES, YES, YES, NO), False),
        (and_(YES, YES, YES, YES), True),
        (or_(NO, YES), True),
        (or_(NO, NO), False),
        (or_(NO, NO, NO, NO, YES), True),
        (or_(NO, NO, NO, NO), False),
        (or_(and_(YES, NO), YES), True),  # a and b or c == (a and b) or c
        (and_(group(or_(NO, YES)), NO), False),  # (a or b) and c
        (and_(not_(NO), YES), True),  # not binds tighter than and
        (not_(group(and_(YES, NO))), True),
        (and_(YES, or_(NO, and_(YES, not_(NO)))), True),
    ],
)
def test_connectives(expr: ast.Expr, expected: bool) -> None:
    assert compile_expr(expr).check(R) is expected


@pytest.mark.parametrize(
    ("expr", "failing"),
    [
        (YES, None),
        (NO, "method == GET"),
        (and_(YES, NO, t("path", "==", "/x")), "method == GET"),
        (and_(YES, group(and_(YES, t("path", "==", "/x")))), 'path == "/x"'),
        (or_(NO, t("path", "==", "/x")), 'method == GET or path == "/x"'),
        (not_(YES), 'not path ^= "/api/"'),
        (group(or_(NO, NO)), "method == GET or method == GET"),
    ],
)
def test_failing_clause_names_the_first_clause_that_fails(
    expr: ast.Expr, failing: str | None
) -> None:
    assert compile_expr(expr).failing_clause(R) == failing


def test_expr_text_keeps_parentheses() -> None:
    e = and_(not_(YES), group(or_(NO, t("header", "exists", key="X-Debug"))))
    assert expr_text(e) == 'not path ^= "/api/" and (method == GET or header "X-Debug" exists)'


def test_invalid_regex_fails_at_compile_time() -> None:
    with pytest.raises(ValueError):
        compile_expr(t("path", "~", "("))
