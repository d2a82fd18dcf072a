"""The lark Transformer: parse tree -> frozen `ast` nodes carrying spans.

It only builds nodes; it never raises and never judges. A literal that does
not mean anything (`10x` as a duration, `1.5MB` as a size) is stored with its
value None and the raw text kept, for validation to report precisely.
"""

from __future__ import annotations

import re
from typing import Any

from lark import Token, Transformer, v_args
from lark.tree import Meta

from sidecar.diagnostics import Span
from sidecar.dsl import ast, units

_ESCAPE = re.compile(r'\\(["\\])')


@v_args(meta=True)
class ToAst(Transformer[Token, Any]):
    """One instance per file: it knows the file name and the text (for `Test.text`)."""

    def __init__(self, text: str, filename: str) -> None:
        super().__init__(visit_tokens=False)
        self._text = text
        self._file = filename

    # --- helpers -------------------------------------------------------------

    def _span(self, meta: Meta) -> Span:
        if getattr(meta, "empty", True):
            return Span(file=self._file, line=1, column=1, end_line=1, end_column=1)
        return Span(
            file=self._file,
            line=meta.line,
            column=meta.column,
            end_line=meta.end_line,
            end_column=meta.end_column,
        )

    def _tspan(self, tok: Token) -> Span:
        line = tok.line or 1
        return Span(
            file=self._file,
            line=line,
            column=tok.column or 1,
            end_line=tok.end_line or line,
            end_column=tok.end_column or 1,
        )

    def _str(self, tok: Token) -> ast.Str:
        return ast.Str(value=_ESCAPE.sub(r"\1", tok[1:-1]), span=self._tspan(tok))

    def _name(self, tok: Token) -> ast.Name:
        return ast.Name(value=str(tok), span=self._tspan(tok))

    def _number(self, tok: Token) -> ast.Number:
        return ast.Number(raw=str(tok), value=units.parse_number(tok), span=self._tspan(tok))

    def _duration(self, tok: Token) -> ast.Duration:
        return ast.Duration(raw=str(tok), seconds=units.parse_duration(tok), span=self._tspan(tok))

    # --- top level -----------------------------------------------------------

    def start(self, meta: Meta, children: list[Any]) -> tuple[ast.TopLevel, ...]:
        return tuple(children)

    def listen(self, meta: Meta, c: list[Token]) -> ast.Listen:
        return ast.Listen(address_raw=str(c[0]), span=self._span(meta))

    def admin(self, meta: Meta, c: list[Token]) -> ast.Admin:
        return ast.Admin(address_raw=str(c[0]), span=self._span(meta))

    def admin_off(self, meta: Meta, c: list[Token]) -> ast.Admin:
        return ast.Admin(address_raw=None, span=self._span(meta))

    def primary(self, meta: Meta, c: list[Any]) -> ast.Primary:
        return ast.Primary(
            url=str(c[0]),
            url_span=self._tspan(c[0]),
            statements=tuple(c[1:]),
            span=self._span(meta),
        )

    def primary_timeout(self, meta: Meta, c: list[Token]) -> ast.PrimaryTimeout:
        return ast.PrimaryTimeout(duration=self._duration(c[0]), span=self._span(meta))

    # --- canaries --------------------------------------------------------------

    def canary(self, meta: Meta, c: list[Any]) -> ast.Canary:
        return ast.Canary(name=self._name(c[0]), statements=tuple(c[1:]), span=self._span(meta))

    def server(self, meta: Meta, c: list[Token]) -> ast.Server:
        weight = self._number(c[1]) if len(c) > 1 else None
        return ast.Server(
            url=str(c[0]), url_span=self._tspan(c[0]), weight=weight, span=self._span(meta)
        )

    def workers(self, meta: Meta, c: list[Token]) -> ast.Workers:
        return ast.Workers(count=self._number(c[0]), span=self._span(meta))

    def queue(self, meta: Meta, c: list[Token]) -> ast.Queue:
        return ast.Queue(size=self._number(c[0]), span=self._span(meta))

    def timeout(self, meta: Meta, c: list[Token]) -> ast.Timeout:
        return ast.Timeout(duration=self._duration(c[0]), span=self._span(meta))

    def max_body(self, meta: Meta, c: list[Token]) -> ast.MaxBody:
        tok = c[0]
        size = ast.Size(raw=str(tok), bytes=units.parse_size(tok), span=self._tspan(tok))
        return ast.MaxBody(size=size, span=self._span(meta))

    def body(self, meta: Meta, c: list[Token]) -> ast.Body:
        return ast.Body(on=True, span=self._span(meta))

    def body_off(self, meta: Meta, c: list[Token]) -> ast.Body:
        return ast.Body(on=False, span=self._span(meta))

    def mark(self, meta: Meta, c: list[Token]) -> ast.Mark:
        return ast.Mark(header=self._str(c[0]), value=self._str(c[1]), span=self._span(meta))

    def mark_off(self, meta: Meta, c: list[Token]) -> ast.Mark:
        return ast.Mark(header=None, value=None, span=self._span(meta))

    def rate(self, meta: Meta, c: list[Token]) -> ast.RateLimit:
        tok = c[0]
        count_raw, _, unit = str(tok).partition("/")
        # The AST only knows /s and /m; anything else keeps a None count for validation.
        per: Any = unit if unit in ("s", "m") else "s"
        value = units.parse_number(count_raw) if unit in ("s", "m") else None
        count = ast.Number(raw=count_raw, value=value, span=self._tspan(tok))
        return ast.RateLimit(count=count, per=per, raw=str(tok), span=self._span(meta))

    def host(self, meta: Meta, c: list[Token]) -> ast.Host:
        return ast.Host(value=self._str(c[0]), span=self._span(meta))

    def host_preserve(self, meta: Meta, c: list[Token]) -> ast.Host:
        return ast.Host(value=None, span=self._span(meta))

    def set_header(self, meta: Meta, c: list[Token]) -> ast.SetHeader:
        return ast.SetHeader(name=self._str(c[0]), value=self._str(c[1]), span=self._span(meta))

    def drop_header(self, meta: Meta, c: list[Token]) -> ast.DropHeader:
        return ast.DropHeader(names=tuple(self._str(t) for t in c), span=self._span(meta))

    def rewrite_path(self, meta: Meta, c: list[Token]) -> ast.RewritePath:
        return ast.RewritePath(
            pattern=self._str(c[0]), replacement=self._str(c[1]), span=self._span(meta)
        )

    # --- rules -------------------------------------------------------------------

    def mirror(self, meta: Meta, c: list[Any]) -> ast.MirrorRule:
        return ast.MirrorRule(name=self._name(c[0]), statements=tuple(c[1:]), span=self._span(meta))

    def exclude(self, meta: Meta, c: list[Any]) -> ast.Exclude:
        return ast.Exclude(expr=c[0], span=self._span(meta))

    def when(self, meta: Meta, c: list[Any]) -> ast.When:
        return ast.When(expr=c[0], span=self._span(meta))

    def to(self, meta: Meta, c: list[Token]) -> ast.To:
        return ast.To(canaries=tuple(self._name(t) for t in c), span=self._span(meta))

    def sample(self, meta: Meta, c: list[Any]) -> ast.Sample:
        tok: Token = c[0]
        rate = ast.Ratio(raw=str(tok), value=units.parse_ratio(tok), span=self._tspan(tok))
        by, key = c[1] if len(c) > 1 else (None, None)
        return ast.Sample(rate=rate, by=by, key=key, span=self._span(meta))

    def by_header(self, meta: Meta, c: list[Token]) -> tuple[str, ast.Str]:
        return "header", self._str(c[0])

    def by_cookie(self, meta: Meta, c: list[Token]) -> tuple[str, ast.Str]:
        return "cookie", self._str(c[0])

    def by_query(self, meta: Meta, c: list[Token]) -> tuple[str, ast.Str]:
        return "query", self._str(c[0])

    def by_client(self, meta: Meta, c: list[Token]) -> tuple[str, None]:
        return "client", None

    # --- predicates ------------------------------------------------------------------

    def or_expr(self, meta: Meta, c: list[ast.Expr]) -> ast.Or:
        return ast.Or(operands=tuple(c), span=self._span(meta))

    def and_expr(self, meta: Meta, c: list[ast.Expr]) -> ast.And:
        return ast.And(operands=tuple(c), span=self._span(meta))

    def not_(self, meta: Meta, c: list[ast.Expr]) -> ast.Not:
        return ast.Not(operand=c[0], span=self._span(meta))

    def group(self, meta: Meta, c: list[ast.Expr]) -> ast.Group:
        return ast.Group(inner=c[0], span=self._span(meta))

    def _test(
        self, meta: Meta, subject: ast.Subject, key: Token | None, rest: list[Token]
    ) -> ast.Test:
        op: Any = str(rest[0])
        args: list[ast.Str | ast.Name] = []
        for tok in rest[1:]:
            args.append(self._name(tok) if tok.type == "NAME" else self._str(tok))
        span = self._span(meta)
        text = self._text[meta.start_pos : meta.end_pos] if not meta.empty else ""
        return ast.Test(
            subject=subject,
            key=self._str(key) if key is not None else None,
            op=op,
            args=tuple(args),
            text=text,
            span=span,
        )

    def method_test(self, meta: Meta, c: list[Token]) -> ast.Test:
        return self._test(meta, "method", None, c)

    def path_test(self, meta: Meta, c: list[Token]) -> ast.Test:
        return self._test(meta, "path", None, c)

    def host_test(self, meta: Meta, c: list[Token]) -> ast.Test:
        return self._test(meta, "host", None, c)

    def header_test(self, meta: Meta, c: list[Token]) -> ast.Test:
        return self._test(meta, "header", c[0], c[1:])

    def query_test(self, meta: Meta, c: list[Token]) -> ast.Test:
        return self._test(meta, "query", c[0], c[1:])

    def cookie_test(self, meta: Meta, c: list[Token]) -> ast.Test:
        return self._test(meta, "cookie", c[0], c[1:])

    def client_test(self, meta: Meta, c: list[Token]) -> ast.Test:
        return self._test(meta, "client", None, c)
