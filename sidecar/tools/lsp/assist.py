"""Completion and hover, from what the grammar accepts at the cursor.

Completion asks `sidecar.dsl.cursor` which terminals the parser takes where the
word being typed begins, then offers: the keywords among them (with the
statement's meaning from `reference`), the tests after a subject (`^=`,
`exists`, `in`...), canary names where a `NAME` follows `to` or `baseline`, HTTP
methods after `method`, and a number's units where a duration, size, rate or
percentage is expected. Hover shows a keyword's meaning, or a canary name's
block.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from lsprotocol import types

from sidecar.dsl import cursor
from sidecar.dsl.units import DURATION_UNITS_S, SIZE_UNITS_BYTES
from sidecar.tools.lsp import reference
from sidecar.tools.lsp.positions import Lines

# The units a number may take where the parser expects these terminals.
UNITS: dict[str, tuple[str, ...]] = {
    "DURATION": tuple(DURATION_UNITS_S),
    "SIZE": tuple(SIZE_UNITS_BYTES),
    "RATE": ("/s", "/m"),  # `rate`: per second or per minute
    "PERCENT": ("%",),
}
# Offered after `method ==` / `method in (`; any upper-case word is a valid method.
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
# Keywords that continue a statement rather than begin one (reference.Entry.where).
_INSIDE_A_STATEMENT = ("predicate", "sample")
# Tokens between a keyword and the NAME being typed that do not change what it names.
_NAME_LIST = {"NAME", "COMMA", "LPAR", "IN", "EQ", "NE"}
_PARTIAL_WORD = re.compile(r"[A-Za-z0-9_.%/-]*\Z")
_PARTIAL_OPERATOR = re.compile(r"[=!^$*~]*\Z")
_OPERATOR = re.compile(r"==|!=|\^=|\$=|\*=|!~|~")
_NUMBER = re.compile(r"([0-9]+(?:\.[0-9]+)?)[A-Za-z/%]*\Z")

# add(label, kind, detail, markdown documentation or None): one completion item.
_Add = Callable[[str, types.CompletionItemKind, str, str | None], None]


@dataclass(frozen=True, slots=True, kw_only=True)
class CanaryInfo:
    name: str
    where: str  # file:line of its block
    block: str  # the block's source text


def in_comment_or_string(text: str, offset: int) -> bool:
    """Whether `offset` is inside a comment or a string (strings do not span lines)."""
    line = text[text.rfind("\n", 0, offset) + 1 : offset]
    quoted = False
    i = 0
    while i < len(line):
        c = line[i]
        if quoted and c == "\\":
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        elif c == "#" and not quoted:
            return True
        i += 1
    return quoted


def completions(
    text: str,
    offset: int,
    canaries: dict[str, CanaryInfo],
    lines: Lines,
    *,
    after_space: bool = False,
) -> list[types.CompletionItem]:
    """The items for the cursor at `offset`. `after_space`: the editor asked because a space
    was typed; then the keywords that begin a block's statements are left out (after
    `workers 8 ` the list would pop up at every space), the rest (canary names after `to`,
    subjects after `when`, tests after a subject, `on`/`off`...) is offered."""
    if in_comment_or_string(text, offset):
        return []
    before = text[text.rfind("\n", 0, offset) + 1 : offset]
    partial = _PARTIAL_WORD.search(before)
    word = partial.group(0) if partial else ""
    if not word:
        op = _PARTIAL_OPERATOR.search(before)
        word = op.group(0) if op else ""
    start = offset - len(word)
    expected = cursor.expected_at(text, start)
    if expected is None:
        return []
    edit_range = types.Range(start=lines.at_offset(start), end=lines.at_offset(offset))
    items: list[types.CompletionItem] = []

    def add(label: str, kind: types.CompletionItemKind, detail: str, doc: str | None) -> None:
        items.append(
            types.CompletionItem(
                label=label,
                kind=kind,
                detail=detail,
                documentation=types.MarkupContent(kind=types.MarkupKind.Markdown, value=doc)
                if doc
                else None,
                text_edit=types.TextEdit(range=edit_range, new_text=label),
                sort_text=f"{len(items):04d}",
            )
        )

    literals = cursor.literals()
    number = _NUMBER.match(word)
    for terminal in sorted(expected.accepts):
        if number and terminal in UNITS:
            for unit in UNITS[terminal]:
                add(
                    f"{number.group(1)}{unit}",
                    types.CompletionItemKind.Unit,
                    terminal.lower(),
                    None,
                )
            continue
        literal = literals.get(terminal)
        if literal is None or not literal.strip("{}(),"):
            continue
        if terminal in reference.OPERATORS:
            add(literal, types.CompletionItemKind.Operator, reference.OPERATORS[terminal], None)
            continue
        if cursor.keyword_terminal(literal) is None:
            continue
        entries = [
            e
            for r in cursor.rules_started_by(expected, literal)
            for e in reference.entries_for(r.rule, r.keyword)
        ]
        if entries and after_space and all(e.where not in _INSIDE_A_STATEMENT for e in entries):
            continue
        if entries:
            doc = "\n\n---\n\n".join(reference.hover_markdown(e) for e in entries)
            add(literal, types.CompletionItemKind.Keyword, entries[0].syntax, doc)
        else:
            add(literal, types.CompletionItemKind.Keyword, "keyword", None)
    if "NAME" in expected.accepts:
        _names(expected, canaries, add)
    return items


def _names(expected: cursor.Expected, canaries: dict[str, CanaryInfo], add: _Add) -> None:
    """Canary names after `to` / `baseline`, methods after `method`."""
    listed: set[str] = set()
    governing = None
    for tok in reversed(expected.tokens):
        if tok.type not in _NAME_LIST:
            governing = tok.type
            break
        if tok.type == "NAME":
            listed.add(str(tok))
    if governing in ("TO", "BASELINE"):
        for name, info in sorted(canaries.items()):
            if name not in listed:
                add(name, types.CompletionItemKind.Class, f"canary ({info.where})", _block(info))
    elif governing == "METHOD":
        for method in METHODS:
            if method not in listed:
                add(method, types.CompletionItemKind.EnumMember, "HTTP method", None)


def _block(info: CanaryInfo) -> str:
    return f"```mirror\n{info.block}\n```\n\n*Defined at {info.where}.*"


def hover(text: str, offset: int, canary: CanaryInfo | None, lines: Lines) -> types.Hover | None:
    """The hover at `offset`: `canary` is the canary named there, if any."""
    if in_comment_or_string(text, offset):
        return None
    word = cursor.word_at(text, offset)
    if word is None:
        return _operator_hover(text, offset, lines)
    start, end = word
    span = types.Range(start=lines.at_offset(start), end=lines.at_offset(end))
    if canary is not None:
        return types.Hover(
            contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=_block(canary)),
            range=span,
        )
    keyword = text[start:end]
    if cursor.keyword_terminal(keyword) is None:
        return None
    expected = cursor.expected_at(text, start)
    rules = (
        cursor.rules_started_by(expected, keyword)
        if expected is not None
        else [r for r in cursor.keyword_rules() if r.keyword == keyword]
    )
    entries = [e for r in rules for e in reference.entries_for(r.rule, r.keyword)]
    if not entries:
        return None
    value = "\n\n---\n\n".join(reference.hover_markdown(e) for e in entries)
    return types.Hover(
        contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=value), range=span
    )


def _operator_hover(text: str, offset: int, lines: Lines) -> types.Hover | None:
    """The meaning of the test operator (`^=`, `!~`...) under the cursor."""
    literals = cursor.literals()
    by_text = {literals[name]: meaning for name, meaning in reference.OPERATORS.items()}
    line_start = text.rfind("\n", 0, offset) + 1
    line_end = text.find("\n", offset)
    line = text[line_start : len(text) if line_end < 0 else line_end]
    for m in _OPERATOR.finditer(line):
        start, end = line_start + m.start(), line_start + m.end()
        if start <= offset <= end and m.group(0) in by_text:
            value = f"`{m.group(0)}`: {by_text[m.group(0)]}"
            span = types.Range(start=lines.at_offset(start), end=lines.at_offset(end))
            return types.Hover(
                contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value=value),
                range=span,
            )
    return None
