"""What the grammar expects at a position of a (possibly unfinished) file.

An editor asks, with the cursor somewhere in a file being typed: which keywords,
operators and values may come next, and which statement does this keyword start?
The answers come from the grammar itself, never from a list kept by hand, so a
statement added to `grammar/mirror.lark` is completed and looked up at once.

How: lark's interactive LALR parser (`parse_interactive`, the same Lark instance
as `parse`) is run over the top-level statement around the cursor, from its
start to the cursor: the parser is in the same state at the start of every
top-level statement, so the rest of the file need not be read. That start is
the last line that begins, outside any block, with a keyword that starts a
top-level statement, or the end of the last top-level block, whichever comes
later. The parser's `accepts()` is then the set of terminals it takes at the
cursor. If the statement has an error before the cursor, it is parsed again in
panic mode: a token no state takes is skipped, and one that an enclosing block
takes ends the unfinished statements before it. Which rule a keyword starts is
read from lark's parse table: after the keyword, each candidate rule's remaining
terminals are fed to a copy of the parser's state stack, and the rule whose
reduction the table then offers is the one.
"""

from __future__ import annotations

import contextlib
import functools
import re
from dataclasses import dataclass
from typing import Any

from lark import Token, UnexpectedCharacters, UnexpectedInput, UnexpectedToken
from lark.parsers.lalr_analysis import Shift

from sidecar.dsl.grammar import BUILDER, LOCK, get_parser

# The last tokens before the cursor kept for the caller's context (`to a, b, ` needs 5).
MAX_CONTEXT_TOKENS = 16
# Errors skipped in one statement before giving up (a pasted binary file is not a statement).
MAX_RECOVERIES = 200
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class KeywordRule:
    """A grammar rule that begins with a keyword: `rule` (lark's rule name) and `keyword`."""

    rule: str
    keyword: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Expected:
    """The parser at an offset: the terminals it accepts and the tokens before it."""

    accepts: frozenset[str]  # terminal names: "TIMEOUT", "NAME", "DURATION", "RBRACE"...
    tokens: tuple[Token, ...]  # the last tokens before the offset, oldest first
    stack: tuple[int, ...]  # the LALR state stack (for `rules_started_by`)


@functools.cache
def literals() -> dict[str, str]:
    """Terminal name -> its fixed text, for keywords and operators (`TIMEOUT` -> `timeout`)."""
    return {t.name: str(t.pattern.value) for t in get_parser().terminals if t.pattern.type == "str"}


def keyword_terminal(word: str) -> str | None:
    """The terminal whose text is `word`, if `word` is a keyword."""
    return _terminal_of().get(word)


@functools.cache
def _terminal_of() -> dict[str, str]:
    return {text: name for name, text in literals().items() if _WORD.match(text)}


@functools.cache
def keyword_rules() -> tuple[KeywordRule, ...]:
    """Every rule of the grammar that begins with a keyword, in grammar order.

    Rules whose name begins with `_` are lark's helpers and inlined rules (`_str_cmp`'s
    `in`, `or`, `and`); they are parts of a statement, not statements.
    """
    words = _terminal_of()
    out: dict[tuple[str, str], None] = {}
    for rule in get_parser().rules:
        origin = str(rule.origin.name)
        first = rule.expansion[0] if rule.expansion else None
        if first is None or not first.is_term or origin.startswith("_"):
            continue
        text = literals().get(first.name)
        if text is not None and text in words:
            out[(origin, text)] = None
    return tuple(KeywordRule(rule=r, keyword=k) for r, k in out)


def _table() -> Any:
    return get_parser().parser.parser.parser.parse_table


@functools.cache
def _top_level_words() -> frozenset[str]:
    """The keywords that begin a top-level statement: what the parser takes at the start."""
    scan = _scan("")
    return (
        frozenset(literals()[t] for t in scan.accepts if t in literals()) if scan else frozenset()
    )


# What `_resync` looks at: comments and strings (skipped whole, so their braces do not
# count), braces, and the word that begins a line.
_SKIM = re.compile(r'#[^\n]*|"(?:[^"\\\n]|\\[^\n])*"?|[{}]|^[A-Za-z_][A-Za-z0-9_]*', re.MULTILINE)


def _resync(text: str) -> int:
    """Where the last top-level statement of `text` begins (0 if none is found): a line that
    begins with a top-level keyword outside any block, or the end of a top-level block."""
    top = _top_level_words()
    depth = 0
    best = 0
    for m in _SKIM.finditer(text):
        token = m.group()
        first = token[0]
        if first == "{":
            depth += 1
        elif first == "}":
            depth = max(0, depth - 1)
            if depth == 0:
                best = m.end()  # after a top-level block's `}` the parser is at the top level
        elif first not in '#"' and depth == 0 and token in top:
            best = m.start()
    return best


def _scan(text: str, *, tolerant: bool = False, keep: int = MAX_CONTEXT_TOKENS) -> Expected | None:
    """Parse all of `text` interactively; None if it does not parse (unless `tolerant`).

    The last `keep` tokens are kept in the result."""
    parser = get_parser()
    tokens: list[Token] = []
    with LOCK:
        BUILDER.begin(text, "<cursor>")
        try:
            interactive = parser.parse_interactive(text)
            errors = 0
            while True:
                try:
                    for tok in interactive.iter_parse():
                        tokens.append(tok)
                        if len(tokens) > keep:
                            del tokens[0]
                    break
                except UnexpectedToken as exc:
                    errors += 1
                    if not tolerant or errors > MAX_RECOVERIES:
                        return None
                    _recover(interactive, exc.token)
                except UnexpectedCharacters:
                    errors += 1
                    if not tolerant or errors > MAX_RECOVERIES:
                        return None
                    lexer: Any = interactive.lexer_thread.state
                    at = lexer.line_ctr.char_pos
                    lexer.line_ctr.feed(text[at : at + 1])  # skip the character
            accepts: set[str] = interactive.accepts()  # type: ignore[no-untyped-call]
            stack = tuple(interactive.parser_state.state_stack)
        except (UnexpectedInput, RecursionError):
            return None
        finally:
            BUILDER.end()
    return Expected(accepts=frozenset(accepts), tokens=tuple(tokens), stack=stack)


def _recover(interactive: Any, token: Token) -> None:
    """Panic mode: give up the statements in progress until one of the enclosing states
    takes `token` (a keyword after an unfinished statement is the next statement), and
    feed it there; if none does, the token is dropped."""
    state = interactive.parser_state
    stack, values = state.state_stack, state.value_stack
    states = _table().states
    for keep in range(len(stack) - 1, 0, -1):
        if token.type in states[stack[keep - 1]]:
            del stack[keep:]
            del values[keep - 1 :]
            with contextlib.suppress(UnexpectedInput):  # then the token is dropped
                interactive.feed_token(token)
            return


def tokens(text: str) -> tuple[Token, ...]:
    """Every token of `text` as the parser reads it, errors skipped (for a file that does
    not parse: the names it defines are still worth offering)."""
    scan = _scan(text, tolerant=True, keep=len(text))
    return scan.tokens if scan is not None else ()


def expected_at(text: str, offset: int) -> Expected | None:
    """What the parser takes at `offset` of `text` (the text after it is not read).

    Only the top-level statement around `offset` is read; if it has an error before
    `offset`, it is parsed again with errors skipped. None only if even that fails.
    """
    # Only the statement around the cursor is parsed: the parser is at the top level, in
    # the same state, at the start of every top-level statement, and a file's prefix can
    # be 1 MiB (lark's interactive parse of 160 KB takes ~350 ms).
    before = text[:offset]
    statement = before[_resync(before) :]
    scan = _scan(statement)
    if scan is None:
        scan = _scan(statement, tolerant=True)
    return scan


def rules_started_by(expected: Expected, keyword: str) -> list[KeywordRule]:
    """The rules that the keyword `keyword` would start where `expected` was taken.

    Several rules may begin with the same keyword (`timeout` in a primary and in a
    canary block): each candidate's remaining terminals are fed to a copy of the
    parser's stack, and the candidate is kept when the table then offers its
    reduction. Empty when the keyword is not accepted there.
    """
    terminal = keyword_terminal(keyword)
    if terminal is None or terminal not in expected.accepts:
        return []
    candidates = [r for r in keyword_rules() if r.keyword == keyword]
    if len(candidates) <= 1:
        return candidates
    table = _table()
    found = []
    for rule in get_parser().rules:
        origin = str(rule.origin.name)
        if not any(c.rule == origin for c in candidates) or not rule.expansion:
            continue
        if rule.expansion[0].name != terminal or not all(s.is_term for s in rule.expansion):
            continue
        stack = list(expected.stack)
        if all(_feed(table, stack, s.name) for s in rule.expansion) and _reduces(
            table, stack, origin
        ):
            match = next(c for c in candidates if c.rule == origin)
            if match not in found:
                found.append(match)
    return found or candidates


def _feed(table: Any, stack: list[int], terminal: str) -> bool:
    """Shift `terminal` onto `stack` (after the reductions it causes); False if refused."""
    states = table.states
    while True:
        action = states[stack[-1]].get(terminal)
        if action is None:
            return False
        kind, arg = action
        if kind is Shift:
            stack.append(arg)
            return True
        size = len(arg.expansion)
        if size:
            del stack[-size:]
        stack.append(states[stack[-1]][arg.origin.name][1])


def _reduces(table: Any, stack: list[int], origin: str) -> bool:
    return any(
        kind is not Shift and str(arg.origin.name) == origin
        for kind, arg in table.states[stack[-1]].values()
    )


def word_at(text: str, offset: int) -> tuple[int, int] | None:
    """The (start, end) of the word (a name or keyword) containing or ending at `offset`."""
    start = offset
    while start > 0 and (text[start - 1].isalnum() or text[start - 1] in "_-"):
        start -= 1
    end = offset
    while end < len(text) and (text[end].isalnum() or text[end] in "_-"):
        end += 1
    return (start, end) if end > start else None
