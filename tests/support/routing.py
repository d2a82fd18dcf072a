"""Small constructors for routing tests: requests, predicate ASTs and configurations.

Tests that can say it in rule text use `sidecar.dsl.loads` instead; these build
the same structures directly, for the parts the rule text cannot reach.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from sidecar.diagnostics import Span
from sidecar.dsl import ast
from sidecar.model.config import CanarySpec, Config, ExcludeSpec, RuleSpec, SampleSpec, ServerSpec
from sidecar.model.endpoint import Endpoint
from sidecar.routing.request import RequestView

SPAN = Span(file="test.mirror", line=1, column=1, end_line=1, end_column=2)


def req(
    method: str = "GET",
    path: str = "/",
    query: str = "",
    headers: Iterable[tuple[str, str]] = (),
    client: str = "",
) -> RequestView:
    """A view as the proxy would build it (header names lower-cased as ASGI servers do)."""
    return RequestView(
        method=method,
        path=path,
        query_string=query.encode("utf-8"),
        headers=[(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers],
        client=client,
    )


def _quote(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def t(subject: ast.Subject, op: ast.Op, *args: str, key: str | None = None) -> ast.Test:
    """One test; method operands become names, all others strings."""
    if subject == "method":
        operands: tuple[ast.Str | ast.Name, ...] = tuple(ast.Name(value=a, span=SPAN) for a in args)
        shown = list(args)
    else:
        operands = tuple(ast.Str(value=a, span=SPAN) for a in args)
        shown = [_quote(a) for a in args]
    text = subject if key is None else f"{subject} {_quote(key)}"
    if op == "in":
        text += f" in ({', '.join(shown)})"
    elif op == "exists":
        text += " exists"
    else:
        text += f" {op} {shown[0]}"
    return ast.Test(
        subject=subject,
        key=None if key is None else ast.Str(value=key, span=SPAN),
        op=op,
        args=operands,
        text=text,
        span=SPAN,
    )


def not_(e: ast.Expr) -> ast.Not:
    return ast.Not(operand=e, span=SPAN)


def and_(*es: ast.Expr) -> ast.And:
    return ast.And(operands=es, span=SPAN)


def or_(*es: ast.Expr) -> ast.Or:
    return ast.Or(operands=es, span=SPAN)


def group(e: ast.Expr) -> ast.Group:
    return ast.Group(inner=e, span=SPAN)


def canary(name: str, mark: tuple[str, str] | None = ("X-Mirror", "1")) -> CanarySpec:
    return CanarySpec(
        name=name,
        servers=(ServerSpec(endpoint=Endpoint.parse("http://127.0.0.1:9000")),),
        mark=mark,
    )


def rule(
    name: str,
    to: Sequence[str],
    when: ast.Expr | None = None,
    rate: float | None = None,
    by: ast.SampleKey | None = None,
    key: str | None = None,
    line: int = 1,
) -> RuleSpec:
    sample = None if rate is None else SampleSpec(rate=rate, by=by, key=key)
    span = Span(file="test.mirror", line=line, column=1, end_line=line, end_column=2)
    return RuleSpec(name=name, when=when, sample=sample, to=tuple(to), span=span)


def config(
    rules: Sequence[RuleSpec],
    *,
    canaries: Sequence[CanarySpec] | None = None,
    excludes: Sequence[ast.Expr] = (),
) -> Config:
    if canaries is None:
        names = dict.fromkeys(c for r in rules for c in r.to)
        canaries = [canary(n) for n in names]
    return Config(
        canaries=tuple(canaries),
        rules=tuple(rules),
        excludes=tuple(ExcludeSpec(when=e, span=SPAN) for e in excludes),
    )


def load_text(text: str) -> Config:
    """A configuration from rule text; fails the test on any error diagnostic."""
    from sidecar.dsl import loads

    result = loads(text, "test.mirror")
    errors = [d for d in result.diagnostics if d.severity == "error"]
    assert result.config is not None and not errors, errors
    return result.config


CANARIES = "".join(
    f"canary {n} {{ server http://127.0.0.1:9000 }}\n" for n in ("a", "b", "c", "d", "v2", "v3")
)


def when(expr: str) -> ast.Expr:
    """The parsed predicate of `when <expr>`."""
    cfg = load_text(CANARIES + f"mirror m {{ when {expr} to a }}\n")
    parsed = cfg.rules[0].when
    assert parsed is not None
    return parsed
