"""Predicate nodes: the `when`/`exclude` expressions as the parser built them.

Frozen nodes with their source spans, shared by the rule language (which builds
them), the configuration (which holds them) and the routing table (which
compiles them). Pure data, no imports above `sidecar.diagnostics`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from sidecar.diagnostics import Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Str:
    """A double-quoted string, unescaped."""

    value: str
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Name:
    """A bare identifier (canary or rule name, or an HTTP method word)."""

    value: str
    span: Span


# --- predicates ------------------------------------------------------------------

Subject = Literal["method", "path", "host", "header", "query", "cookie", "client"]
# `==` `!=` `^=` `$=` `*=` `~` `!~` `in` `exists`
Op = Literal["==", "!=", "^=", "$=", "*=", "~", "!~", "in", "exists"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Test:
    """One comparison: `path ^= "/api/"`, `header "X-Debug" exists`, `method in (GET, HEAD)`.

    `key` is the header/query/cookie name (None for method, path, host, client).
    `args` are the operands: empty for `exists`, one for the binary operators,
    one or more for `in`. Method operands are `Name`s, all others `Str`s.
    `text` is the clause's source text, quoted by `explain`.
    """

    subject: Subject
    key: Str | None
    op: Op
    args: tuple[Str | Name, ...]
    text: str
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Not:
    operand: Expr
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class And:
    operands: tuple[Expr, ...]  # two or more, flattened
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Or:
    operands: tuple[Expr, ...]  # two or more, flattened
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class Group:
    """A parenthesised expression; kept so that `fmt` can print the user's parentheses."""

    inner: Expr
    span: Span


Expr = Test | Not | And | Or | Group


SampleKey = Literal["header", "cookie", "query", "client"]


def expr_text(expr: Expr, test_text: Callable[[Test], str] | None = None) -> str:
    """The expression as source text: each test as `test_text` gives it (default: as
    written), operators spelled out, parentheses where the user wrote them."""
    if isinstance(expr, Test):
        return expr.text if test_text is None else test_text(expr)
    if isinstance(expr, Not):
        return f"not {expr_text(expr.operand, test_text)}"
    if isinstance(expr, And):
        return " and ".join(expr_text(e, test_text) for e in expr.operands)
    if isinstance(expr, Or):
        return " or ".join(expr_text(e, test_text) for e in expr.operands)
    return f"({expr_text(expr.inner, test_text)})"
