"""Canary names across a group's files, and the outline of one file.

A canary is defined by its `canary NAME { ... }` block and named by every `to`
list and `baseline` statement. All of them come from the parsed files of the
group (the same ASTs `check` validates), so a name inside a comment or a string
is never taken for one.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass

from lsprotocol import types

from sidecar.diagnostics import Span
from sidecar.dsl import ast, cursor
from sidecar.tools.lsp.positions import Lines, contains
from sidecar.tools.lsp.project import Source


@dataclass(frozen=True, slots=True, kw_only=True)
class Occurrence:
    name: str
    span: Span  # of the name itself
    definition: bool
    block: Span | None = None  # a definition's whole `canary { }` block


def occurrences(sources: Iterable[Source]) -> list[Occurrence]:
    """Every definition of and reference to a canary name, in file order."""
    out: list[Occurrence] = []
    for source in sources:
        if source.tree is None:
            continue
        for stmt in source.tree.statements:
            if isinstance(stmt, ast.Canary):
                out.append(
                    Occurrence(
                        name=stmt.name.value, span=stmt.name.span, definition=True, block=stmt.span
                    )
                )
                for inner in stmt.statements:
                    if isinstance(inner, ast.Compare):
                        out.extend(
                            Occurrence(name=c.name.value, span=c.name.span, definition=False)
                            for c in inner.statements
                            if isinstance(c, ast.CompareBaseline)
                        )
            elif isinstance(stmt, ast.MirrorRule):
                for rule_stmt in stmt.statements:
                    if isinstance(rule_stmt, ast.To):
                        out.extend(
                            Occurrence(name=n.value, span=n.span, definition=False)
                            for n in rule_stmt.canaries
                        )
    return out


def defined_while_broken(text: str) -> list[tuple[str, int]]:
    """(name, line) of the `canary NAME` blocks of a text that does not parse."""
    toks = cursor.tokens(text)
    return [
        (str(b), b.line or 1)
        for a, b in itertools.pairwise(toks)
        if a.type == "CANARY" and b.type == "NAME"
    ]


def at(found: Iterable[Occurrence], file: str, line: int, column: int) -> Occurrence | None:
    """The occurrence under a 1-based position of `file`."""
    return next((o for o in found if o.span.file == file and contains(o.span, line, column)), None)


def symbols(tree: ast.File, lines: Lines) -> list[types.DocumentSymbol]:
    """The file's outline: the primary, canaries, mirror rules and excludes."""
    out: list[types.DocumentSymbol] = []
    for stmt in tree.statements:
        if isinstance(stmt, ast.Canary):
            servers = [s.url for s in stmt.statements if isinstance(s, ast.Server)]
            out.append(
                _symbol(
                    stmt.name.value,
                    types.SymbolKind.Class,
                    stmt.span,
                    stmt.name.span,
                    ", ".join(servers),
                    lines,
                )
            )
        elif isinstance(stmt, ast.MirrorRule):
            targets = [
                n.value for s in stmt.statements if isinstance(s, ast.To) for n in s.canaries
            ]
            detail = f"to {', '.join(targets)}" if targets else ""
            out.append(
                _symbol(
                    stmt.name.value,
                    types.SymbolKind.Function,
                    stmt.span,
                    stmt.name.span,
                    detail,
                    lines,
                )
            )
        elif isinstance(stmt, ast.Exclude):
            out.append(_symbol("exclude", types.SymbolKind.Event, stmt.span, stmt.span, "", lines))
        elif isinstance(stmt, ast.Primary):
            out.append(
                _symbol(
                    "primary", types.SymbolKind.Module, stmt.span, stmt.url_span, stmt.url, lines
                )
            )
    return out  # fmt: skip


def _symbol(
    name: str, kind: types.SymbolKind, whole: Span, selection: Span, detail: str, lines: Lines
) -> types.DocumentSymbol:
    return types.DocumentSymbol(
        name=name,
        kind=kind,
        range=lines.range(whole),
        selection_range=lines.range(selection),
        detail=detail or None,
    )
