"""The LALR parser's callbacks: every rule reduction builds a frozen `ast` node.

`AstBuilder` is passed to lark as an inline transformer (`Lark(transformer=...,
keep_all_tokens=True)`), so no parse tree is built: each callback receives the
rule's children with keywords and punctuation kept as tokens, and a node's span
runs from its first child (a token, or a node built earlier) to its last one.
That is exactly the span lark's `propagate_positions` used to compute, without
paying for it on every reduction.

It only builds nodes; it never raises and never judges. A literal that does
not mean anything (`10x` as a duration, `1.5MB` as a size) is stored with its
value None and the raw text kept, for validation to report precisely.
"""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from lark import Token

from sidecar.diagnostics import Span
from sidecar.dsl import ast, units

_ESCAPE = re.compile(r'\\(["\\])')

# Deeper predicates are refused (a syntax error): validation, compilation and
# evaluation recurse over them. Before the AST was built during the parse,
# lark's recursive tree transformer set this limit implicitly (~480 levels).
MAX_NESTING = 400

# A child of a rule: a token (a keyword, punctuation or a value) or a node built earlier.
Child = Any


class _By(NamedTuple):
    """`sample ... by X`: what the clause means, and its last token (for the span of `sample`)."""

    kind: str
    key: ast.Str | None
    last: Token


def _unescape(raw: str) -> str:
    """The inside of a STRING token, with its \\" and \\\\ escapes undone.

    Any other backslash sequence is kept as written (`"\\d+"` is the regex `\\d+`).
    """
    inner = raw[1:-1]
    return _ESCAPE.sub(r"\1", inner) if "\\" in inner else inner


class AstBuilder:
    """Rule callbacks for the one Lark instance; `begin` gives it a file, `end` takes it back.

    The parser is shared, so `parser.parse` calls `begin` (under a lock) before each
    parse and `end` afterwards. Besides nodes it records the comments the lexer
    passes on and the deepest nesting of a predicate (`deepest`, checked against
    `MAX_NESTING` after the parse: a callback never raises).
    """

    def __init__(self) -> None:
        self.end()

    def begin(self, text: str, filename: str, comments: list[Token] | None = None) -> list[Token]:
        """Start a parse of `text`; returns the list the comments will be collected in.

        Given `comments` (from an abandoned parse of the same text), empties and reuses it.
        """
        self.file = filename
        self.text = text
        if comments is not None:
            comments.clear()
        self.comments: list[Token] = [] if comments is None else comments
        self.deepest = 0
        self._depth: dict[int, int] = {}  # id(predicate node) -> its nesting, when above 0
        return self.comments

    def end(self) -> None:
        """Forget the file (and its nodes); parses outside `begin`/`end` still work."""
        self.begin("", "<string>")

    def _nested(self, node: ast.Expr, *children: Any) -> ast.Expr:
        get = self._depth.get
        depth = 1 + max(get(id(child), 0) for child in children)
        self._depth[id(node)] = depth
        if depth > self.deepest:
            self.deepest = depth
        return node

    # --- helpers -------------------------------------------------------------

    def _span(self, first: Child, last: Child) -> Span:
        """From the start of `first` to the end of `last` (each a token or a node)."""
        if type(first) is Token:
            line, column = first.line or 1, first.column or 1
        else:
            line, column = first.span.line, first.span.column
        if type(last) is Token:
            end_line, end_column = last.end_line or line, last.end_column or 1
        else:
            end_line, end_column = last.span.end_line, last.span.end_column
        return Span(
            file=self.file, line=line, column=column, end_line=end_line, end_column=end_column
        )

    def _tspan(self, tok: Token) -> Span:
        line = tok.line or 1
        return Span(
            file=self.file,
            line=line,
            column=tok.column or 1,
            end_line=tok.end_line or line,
            end_column=tok.end_column or 1,
        )

    def _str(self, tok: Token) -> ast.Str:
        return ast.Str(value=_unescape(tok), span=self._tspan(tok))

    def _name(self, tok: Token) -> ast.Name:
        return ast.Name(value=str(tok), span=self._tspan(tok))

    def _number(self, tok: Token) -> ast.Number:
        return ast.Number(raw=str(tok), value=units.parse_number(tok), span=self._tspan(tok))

    def _duration(self, tok: Token) -> ast.Duration:
        return ast.Duration(raw=str(tok), seconds=units.parse_duration(tok), span=self._tspan(tok))

    # --- top level -----------------------------------------------------------

    def start(self, c: list[ast.TopLevel]) -> tuple[ast.TopLevel, ...]:
        return tuple(c)

    def listen(self, c: list[Child]) -> ast.Listen:  # "listen" ADDRESS ("{" _listen_stmt* "}")?
        return ast.Listen(
            address_raw=str(c[1]),
            span=self._span(c[0], c[-1]),
            statements=tuple(c[3:-1]),
            braces=len(c) > 2,
            address_span=self._tspan(c[1]),
        )

    def admin(self, c: list[Token]) -> ast.Admin:  # "admin" ADDRESS
        return ast.Admin(address_raw=str(c[1]), span=self._span(c[0], c[1]))

    def admin_off(self, c: list[Token]) -> ast.Admin:  # "admin" "off"
        return ast.Admin(address_raw=None, span=self._span(c[0], c[1]))

    def primary(self, c: list[Child]) -> ast.Primary:  # "primary" URL ("{" _primary_stmt* "}")?
        url: Token = c[1]
        return ast.Primary(
            url=str(url),
            url_span=self._tspan(url),
            statements=tuple(c[3:-1]),
            span=self._span(c[0], c[-1]),
        )

    def primary_timeout(self, c: list[Token]) -> ast.PrimaryTimeout:  # "timeout" DURATION
        return ast.PrimaryTimeout(duration=self._duration(c[1]), span=self._span(c[0], c[1]))

    def primary_idle_timeout(self, c: list[Token]) -> ast.PrimaryIdleTimeout:
        # "idle_timeout" DURATION
        return ast.PrimaryIdleTimeout(duration=self._duration(c[1]), span=self._span(c[0], c[1]))

    def diff_log(self, c: list[Token]) -> ast.DiffLog:  # "diff_log" STRING
        return ast.DiffLog(path=self._str(c[1]), span=self._span(c[0], c[1]))

    def diff_log_stderr(self, c: list[Token]) -> ast.DiffLog:  # "diff_log" "stderr"
        return ast.DiffLog(path=None, span=self._span(c[0], c[1]))

    def request_id(self, c: list[Token]) -> ast.RequestId:  # "request_id" STRING
        return ast.RequestId(header=self._str(c[1]), span=self._span(c[0], c[1]))

    def host_server(self, c: list[Token]) -> ast.HostServer:  # "server" NAME
        return ast.HostServer(name=self._name(c[1]), span=self._span(c[0], c[1]))

    # --- tls blocks ------------------------------------------------------------------

    def tls(self, c: list[Child]) -> ast.Tls:  # "tls" "{" _tls_stmt* "}"
        return ast.Tls(statements=tuple(c[2:-1]), span=self._span(c[0], c[-1]))

    def tls_ca(self, c: list[Token]) -> ast.TlsCa:  # "ca" STRING
        return ast.TlsCa(path=self._str(c[1]), span=self._span(c[0], c[1]))

    def tls_verify_on(self, c: list[Token]) -> ast.TlsVerify:  # "verify" ON
        return ast.TlsVerify(on=True, span=self._span(c[0], c[1]))

    def tls_verify_off(self, c: list[Token]) -> ast.TlsVerify:  # "verify" "off"
        return ast.TlsVerify(on=False, span=self._span(c[0], c[1]))

    def tls_cert(self, c: list[Token]) -> ast.TlsCert:  # "cert" STRING
        return ast.TlsCert(path=self._str(c[1]), span=self._span(c[0], c[1]))

    def tls_key(self, c: list[Token]) -> ast.TlsKey:  # "key" STRING
        return ast.TlsKey(path=self._str(c[1]), span=self._span(c[0], c[1]))

    def tls_server_name(self, c: list[Token]) -> ast.TlsServerName:  # "server_name" STRING
        return ast.TlsServerName(name=self._str(c[1]), span=self._span(c[0], c[1]))

    # --- canaries --------------------------------------------------------------

    def canary(self, c: list[Child]) -> ast.Canary:  # "canary" NAME "{" _canary_stmt* "}"
        return ast.Canary(
            name=self._name(c[1]), statements=tuple(c[3:-1]), span=self._span(c[0], c[-1])
        )

    def server(self, c: list[Token]) -> ast.Server:  # "server" URL ("weight" NUMBER)?
        weight = self._number(c[3]) if len(c) > 2 else None
        return ast.Server(
            url=str(c[1]),
            url_span=self._tspan(c[1]),
            weight=weight,
            span=self._span(c[0], c[-1]),
        )

    def workers(self, c: list[Token]) -> ast.Workers:
        return ast.Workers(count=self._number(c[1]), span=self._span(c[0], c[1]))

    def queue(self, c: list[Token]) -> ast.Queue:
        return ast.Queue(size=self._number(c[1]), span=self._span(c[0], c[1]))

    def timeout(self, c: list[Token]) -> ast.Timeout:
        return ast.Timeout(duration=self._duration(c[1]), span=self._span(c[0], c[1]))

    def max_body(self, c: list[Token]) -> ast.MaxBody:
        tok = c[1]
        size = ast.Size(raw=str(tok), bytes=units.parse_size(tok), span=self._tspan(tok))
        return ast.MaxBody(size=size, span=self._span(c[0], tok))

    def body(self, c: list[Token]) -> ast.Body:  # "body" ON
        return ast.Body(on=True, span=self._span(c[0], c[1]))

    def body_off(self, c: list[Token]) -> ast.Body:
        return ast.Body(on=False, span=self._span(c[0], c[1]))

    def mark(self, c: list[Token]) -> ast.Mark:  # "mark" STRING STRING
        return ast.Mark(header=self._str(c[1]), value=self._str(c[2]), span=self._span(c[0], c[2]))

    def mark_off(self, c: list[Token]) -> ast.Mark:
        return ast.Mark(header=None, value=None, span=self._span(c[0], c[1]))

    def rate(self, c: list[Token]) -> ast.RateLimit:  # "rate" RATE
        tok = c[1]
        count_raw, _, unit = str(tok).partition("/")
        # The AST only knows /s and /m; anything else keeps a None count for validation.
        per: Any = unit if unit in ("s", "m") else "s"
        value = units.parse_number(count_raw) if unit in ("s", "m") else None
        count = ast.Number(raw=count_raw, value=value, span=self._tspan(tok))
        return ast.RateLimit(count=count, per=per, raw=str(tok), span=self._span(c[0], tok))

    def host(self, c: list[Token]) -> ast.Host:  # "host" STRING
        return ast.Host(value=self._str(c[1]), span=self._span(c[0], c[1]))

    def host_preserve(self, c: list[Token]) -> ast.Host:
        return ast.Host(value=None, span=self._span(c[0], c[1]))

    def set_header(self, c: list[Token]) -> ast.SetHeader:  # "set" "header" STRING STRING
        return ast.SetHeader(
            name=self._str(c[2]), value=self._str(c[3]), span=self._span(c[0], c[3])
        )

    def drop_header(self, c: list[Token]) -> ast.DropHeader:  # "drop" "header" STRING ("," STRING)*
        return ast.DropHeader(
            names=tuple(self._str(t) for t in c[2::2]), span=self._span(c[0], c[-1])
        )

    def rewrite_path(self, c: list[Token]) -> ast.RewritePath:  # "rewrite" "path" STRING STRING
        return ast.RewritePath(
            pattern=self._str(c[2]), replacement=self._str(c[3]), span=self._span(c[0], c[3])
        )

    def pause(self, c: list[Token]) -> ast.Pause:
        # "pause" "after" NUMBER "failures" "for" DURATION
        return ast.Pause(
            failures=self._number(c[2]),
            duration=self._duration(c[5]),
            span=self._span(c[0], c[5]),
        )

    # --- compare blocks ------------------------------------------------------------

    def compare(self, c: list[Child]) -> ast.Compare:  # "compare" "{" _compare_stmt* "}"
        return ast.Compare(statements=tuple(c[2:-1]), span=self._span(c[0], c[-1]))

    def compare_status(self, c: list[Token]) -> ast.CompareStatus:  # "status"
        return ast.CompareStatus(span=self._tspan(c[0]))

    def compare_header(self, c: list[Token]) -> ast.CompareHeader:  # "header" STRING ("," STRING)*
        return ast.CompareHeader(
            names=tuple(self._str(t) for t in c[1::2]), span=self._span(c[0], c[-1])
        )

    def compare_body_bytes(self, c: list[Token]) -> ast.CompareBody:  # "body" "bytes"
        return ast.CompareBody(mode="bytes", span=self._span(c[0], c[1]))

    def compare_body_json(self, c: list[Token]) -> ast.CompareBody:  # "body" "json"
        return ast.CompareBody(mode="json", span=self._span(c[0], c[1]))

    def compare_ignore(self, c: list[Token]) -> ast.CompareIgnore:  # "ignore" STRING ("," STRING)*
        return ast.CompareIgnore(
            paths=tuple(self._str(t) for t in c[1::2]), span=self._span(c[0], c[-1])
        )

    def compare_sample(self, c: list[Token]) -> ast.CompareSample:  # "sample" (PERCENT | NUMBER)
        tok = c[1]
        rate = ast.Ratio(raw=str(tok), value=units.parse_ratio(tok), span=self._tspan(tok))
        return ast.CompareSample(rate=rate, span=self._span(c[0], tok))

    def compare_baseline(self, c: list[Token]) -> ast.CompareBaseline:  # "baseline" NAME
        return ast.CompareBaseline(name=self._name(c[1]), span=self._span(c[0], c[1]))

    # --- rules -------------------------------------------------------------------

    def mirror(self, c: list[Child]) -> ast.MirrorRule:  # "mirror" NAME "{" _mirror_stmt* "}"
        return ast.MirrorRule(
            name=self._name(c[1]), statements=tuple(c[3:-1]), span=self._span(c[0], c[-1])
        )

    def exclude(self, c: list[Child]) -> ast.Exclude:  # "exclude" "when" expr
        return ast.Exclude(expr=c[2], span=self._span(c[0], c[2]))

    def when(self, c: list[Child]) -> ast.When:  # "when" expr
        return ast.When(expr=c[1], span=self._span(c[0], c[1]))

    def to(self, c: list[Token]) -> ast.To:  # "to" NAME ("," NAME)*
        return ast.To(canaries=tuple(self._name(t) for t in c[1::2]), span=self._span(c[0], c[-1]))

    def sample(self, c: list[Child]) -> ast.Sample:  # "sample" (PERCENT | NUMBER) sample_by?
        tok: Token = c[1]
        rate = ast.Ratio(raw=str(tok), value=units.parse_ratio(tok), span=self._tspan(tok))
        if len(c) > 2:
            by: _By = c[2]
            return ast.Sample(rate=rate, by=by.kind, key=by.key, span=self._span(c[0], by.last))  # type: ignore[arg-type]
        return ast.Sample(rate=rate, by=None, key=None, span=self._span(c[0], tok))

    def by_header(self, c: list[Token]) -> _By:  # "by" "header" STRING
        return _By("header", self._str(c[2]), c[2])

    def by_cookie(self, c: list[Token]) -> _By:
        return _By("cookie", self._str(c[2]), c[2])

    def by_query(self, c: list[Token]) -> _By:
        return _By("query", self._str(c[2]), c[2])

    def by_client(self, c: list[Token]) -> _By:  # "by" "client"
        return _By("client", None, c[1])

    # --- predicates ------------------------------------------------------------------

    def or_expr(self, c: list[Child]) -> ast.Expr:  # and_expr (_OR and_expr)+
        operands = tuple(c[::2])
        return self._nested(ast.Or(operands=operands, span=self._span(c[0], c[-1])), *operands)

    def and_expr(self, c: list[Child]) -> ast.Expr:  # not_expr (_AND not_expr)+
        operands = tuple(c[::2])
        return self._nested(ast.And(operands=operands, span=self._span(c[0], c[-1])), *operands)

    def not_(self, c: list[Child]) -> ast.Expr:  # _NOT not_expr
        return self._nested(ast.Not(operand=c[1], span=self._span(c[0], c[1])), c[1])

    def group(self, c: list[Child]) -> ast.Expr:  # "(" expr ")"
        return self._nested(ast.Group(inner=c[1], span=self._span(c[0], c[2])), c[1])

    def _test(self, subject: ast.Subject, c: list[Token], key: Token | None) -> ast.Test:
        """`c`: the subject keyword, the key if any, then `op value` or `in ( v, ... )` or `exists`."""
        rest = c[2:] if key is not None else c[1:]
        op: Any = str(rest[0])
        values = rest[2:-1:2] if rest[0].type == "IN" else rest[1:]
        args = tuple(self._name(t) if t.type == "NAME" else self._str(t) for t in values)
        first, last = c[0], c[-1]
        start, end = first.start_pos, last.end_pos
        return ast.Test(
            subject=subject,
            key=self._str(key) if key is not None else None,
            op=op,
            args=args,
            text=self.text[start:end] if start is not None and end is not None else "",
            span=self._span(first, last),
        )

    def method_test(self, c: list[Token]) -> ast.Test:
        return self._test("method", c, None)

    def path_test(self, c: list[Token]) -> ast.Test:
        return self._test("path", c, None)

    def host_test(self, c: list[Token]) -> ast.Test:
        return self._test("host", c, None)

    def header_test(self, c: list[Token]) -> ast.Test:
        return self._test("header", c, c[1])

    def query_test(self, c: list[Token]) -> ast.Test:
        return self._test("query", c, c[1])

    def cookie_test(self, c: list[Token]) -> ast.Test:
        return self._test("cookie", c, c[1])

    def client_test(self, c: list[Token]) -> ast.Test:
        return self._test("client", c, None)
