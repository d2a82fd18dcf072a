"""`parse(text, filename)`: text -> `ast.File` plus diagnostics.

The Lark instance (`grammar.get_parser`) is built once and cached. It builds
the AST while it parses: `transform.AstBuilder` is its inline transformer, so
no parse tree is ever made, and spans come from the tokens themselves
(`keep_all_tokens=True` keeps keywords and punctuation in each rule's children)
rather than from lark's `propagate_positions`. The builder is shared, so a
parse holds a lock while the builder knows its file name and text.

`parse` is the one boundary where lark exceptions are translated: a syntax
error becomes a `syntax-error` Diagnostic at the offending token (see
`errors.py`); nothing lark raises escapes. Comments are collected through a
lexer callback into `File.comments`, with their positions, for `fmt`.
"""

from __future__ import annotations

import functools
import re
from typing import Any

from lark import Lark, Token, UnexpectedInput
from lark.lexer import ContextualLexer
from lark.parsers.lalr_analysis import Shift

from sidecar.diagnostics import Diagnostic, Span
from sidecar.dsl import ast
from sidecar.dsl.errors import syntax_diagnostic
from sidecar.dsl.grammar import BUILDER as _BUILDER
from sidecar.dsl.grammar import LOCK as _LOCK
from sidecar.dsl.grammar import get_parser
from sidecar.dsl.transform import MAX_NESTING


class _Mismatch(Exception):
    """The quick parse met something it leaves to lark (an error, most likely)."""


class _QuickParse:
    """lark's LALR parse of a valid file, as one loop over lark's own tables.

    lark lexes the ignored whitespace before each token as a token of its own
    and passes every token through several layers of calls (lexer thread,
    contextual lexer, basic lexer, parser state), which is most of a `check`'s
    time. This loop uses the very same pieces lark built for this grammar (each
    parser state's scanner regex with its keyword callbacks, the parse table, the
    rule callbacks that run `AstBuilder`), with a possessive whitespace run in
    front of each scanner so that one match finds the next token, and positions
    computed the way lark's LineCounter computes them.

    It only handles input that lexes and parses: at the first thing it does not
    expect it raises `_Mismatch`, and the caller parses the text again with
    lark's own `Lark.parse`, so that every error is exactly lark's.
    """

    def __init__(self, lark: Lark) -> None:
        frontend: Any = lark.parser
        lexer = frontend.lexer
        table = frontend.parser.parser.parse_table
        callbacks = frontend.parser.parser.callbacks
        if not isinstance(lexer, ContextualLexer) or any(isinstance(k, str) for k in callbacks):
            raise TypeError("the quick parse needs the contextual lexer and no token callbacks")
        whitespace = lark.get_terminal("WS").pattern.to_regexp()
        self._skip = re.compile(f"(?:{whitespace})*+").match
        self._start = table.start_states["start"]
        self._end = table.end_states["start"]
        # state -> {terminal or rule name: (is_shift, next state | (size, rule name, callback))}
        self._actions: dict[Any, dict[str, tuple[bool, Any]]] = {}
        for state, row in table.states.items():
            self._actions[state] = {
                str(sym): (True, arg)
                if action is Shift
                else (False, (len(arg.expansion), str(arg.origin.name), callbacks[arg]))
                for sym, (action, arg) in row.items()
            }
        # state -> (scanner match, token callbacks, ignored token types)
        by_lexer: dict[int, tuple[Any, dict[str, Any], frozenset[str]]] = {}
        self._scanners: dict[Any, tuple[Any, dict[str, Any], frozenset[str]]] = {}
        basic: Any
        for state, basic in lexer.lexers.items():
            if id(basic) not in by_lexer:
                mres = basic.scanner._mres
                if len(mres) != 1:
                    raise TypeError("the quick parse needs one scanner regex per state")
                rx = re.compile(f"(?:{whitespace})*+(?:{mres[0].pattern})", mres[0].flags)
                by_lexer[id(basic)] = (rx.match, basic.callback, basic.ignore_types)
            self._scanners[state] = by_lexer[id(basic)]

    def parse(self, text: str) -> Any:
        actions = self._actions
        scanners = self._scanners
        new_token: Any = Token._future_new
        count = text.count
        rfind = text.rfind
        states = [self._start]
        values: list[Any] = []
        pos, line, line_start, end = 0, 1, 0, len(text)
        while True:
            match, token_callbacks, ignored = scanners[states[-1]]
            m = match(text, pos)
            if m is None:
                rest = self._skip(text, pos)
                if rest is None or rest.end() != end:
                    raise _Mismatch
                break
            type_: str = m.lastgroup
            start = m.start(type_)
            stop = m.end()
            if count("\n", pos, start):
                line += count("\n", pos, start)
                line_start = rfind("\n", pos, start) + 1
            tok = new_token(type_, text[start:stop], start, line, start - line_start + 1)
            if count("\n", start, stop):
                line += count("\n", start, stop)
                line_start = rfind("\n", start, stop) + 1
            tok.end_line = line
            tok.end_column = stop - line_start + 1
            tok.end_pos = pos = stop
            if type_ in token_callbacks:
                tok = token_callbacks[type_](tok)
            if type_ in ignored:
                continue
            type_ = tok.type
            while True:
                try:
                    shift, arg = actions[states[-1]][type_]
                except KeyError:
                    raise _Mismatch from None
                if shift:
                    states.append(arg)
                    values.append(tok)
                    break
                self._reduce(states, values, arg)
        # End of input: reduce until the start rule is complete, as lark does on $END.
        end_state = self._end
        while states[-1] != end_state:
            try:
                shift, arg = actions[states[-1]]["$END"]
            except KeyError:
                raise _Mismatch from None
            if shift:
                raise _Mismatch
            self._reduce(states, values, arg)
        return values[-1]

    def _reduce(self, states: list[Any], values: list[Any], rule: tuple[int, str, Any]) -> None:
        size, origin, callback = rule
        if size:
            children = values[-size:]
            del states[-size:]
            del values[-size:]
        else:
            children = []
        values.append(callback(children))
        _shift, new_state = self._actions[states[-1]][origin]
        states.append(new_state)


@functools.cache
def _quick() -> _QuickParse:
    return _QuickParse(get_parser())


def _comment_nodes(tokens: list[Token], text: str, filename: str) -> tuple[ast.Comment, ...]:
    out = []
    for tok in tokens:
        start = tok.start_pos or 0
        line_start = text.rfind("\n", 0, start) + 1
        out.append(
            ast.Comment(
                text=str(tok),
                trailing=bool(text[line_start:start].strip()),
                span=Span(
                    file=filename,
                    line=tok.line or 1,
                    column=tok.column or 1,
                    end_line=tok.end_line or tok.line or 1,
                    end_column=tok.end_column or 1,
                ),
            )
        )
    return tuple(out)


def _too_deep(filename: str) -> Diagnostic:
    span = Span(file=filename, line=1, column=1, end_line=1, end_column=2)
    message = "expression nested too deeply"
    return Diagnostic(span=span, severity="error", code="syntax-error", message=message)


def parse(text: str, filename: str = "<string>") -> tuple[ast.File | None, list[Diagnostic]]:
    """Parse one file. Returns (File, []) or (None, [the syntax error]). Never raises."""
    parser = get_parser()
    quick = _quick()
    with _LOCK:
        sink = _BUILDER.begin(text, filename)
        try:
            try:
                statements = quick.parse(text)
            except _Mismatch:
                # lark's own parse: the same result, or (nearly always) its exact error.
                _BUILDER.begin(text, filename, sink)
                statements = parser.parse(text)
            too_deep = _BUILDER.deepest > MAX_NESTING
        except UnexpectedInput as exc:
            return None, [syntax_diagnostic(exc, text, filename)]
        finally:
            _BUILDER.end()
    if too_deep:
        # Thousands of nested parentheses: refuse rather than overflow later passes.
        return None, [_too_deep(filename)]
    return ast.File(
        path=filename, statements=statements, comments=_comment_nodes(sink, text, filename)
    ), []
