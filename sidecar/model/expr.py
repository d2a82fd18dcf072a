"""Predicate nodes: the `when`/`exclude` expressions as the parser built them.

Frozen nodes with their source spans, shared by the rule language (which builds
them), the configuration (which holds them) and the routing table (which
compiles them). Pure data, no imports above `sidecar.diagnostics`.
"""

from __future__ import annotations

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
