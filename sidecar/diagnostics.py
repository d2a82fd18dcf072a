"""Positions in rule files and the one diagnostic type every stage reports.

Parse errors, semantic errors, I/O errors and internal errors are all a
`Diagnostic`. They render like a compiler's (``file:line:col: severity: message
[code]`` plus the source line and a caret) or as JSON. Pure: no I/O here; the
caller hands in the source text for the caret line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Severity = Literal["error", "warning"]

# Width of the line-number gutter in rendered diagnostics (`   12 | ...`).
GUTTER_WIDTH = 5
# Tabs in an echoed source line are expanded to this many columns.
TAB_WIDTH = 4
# Longer source lines are cut in the echo (a minified or binary file is one huge line).
MAX_SHOWN_CHARS = 200


@dataclass(frozen=True, slots=True, kw_only=True)
class Span:
    """A 1-based region of one file: start line/column and end line/column (exclusive)."""

    file: str
    line: int
    column: int
    end_line: int
    end_column: int

    def __post_init__(self) -> None:
        if self.line < 1 or self.column < 1:
            raise ValueError(f"span positions are 1-based, got {self.line}:{self.column}")

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True, slots=True, kw_only=True)
class Diagnostic:
    """One finding. `code` is kebab-case (``unknown-canary``)."""

    span: Span
    severity: Severity
    code: str
    message: str

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.span.file, self.span.line, self.span.column, self.code)

    def headline(self) -> str:
        s = self.span
        return f"{s.file}:{s.line}:{s.column}: {self.severity}: {self.message} [{self.code}]"

    def to_json(self) -> dict[str, object]:
        s = self.span
        return {
            "file": s.file,
            "line": s.line,
            "column": s.column,
            "end_line": s.end_line,
            "end_column": s.end_column,
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
        }


def render(diag: Diagnostic, sources: Mapping[str, str]) -> str:
    """The headline, then the source line and a caret under the span (when known)."""
    head = diag.headline()
    text = sources.get(diag.span.file)
    if text is None:
        return head
    # Only "\n" ends a line: that is how lark counts lines. splitlines() would also
    # split on \r, \f, \x1c or \u2028 and shift the caret onto the wrong line.
    lines = text.split("\n")
    if not 1 <= diag.span.line <= len(lines):
        return head
    raw = lines[diag.span.line - 1].removesuffix("\r")
    # Tabs are shown as spaces, so the caret's columns are measured on the expanded text.
    start = len(raw[: diag.span.column - 1].expandtabs(TAB_WIDTH)) + 1
    end = start + 1
    if diag.span.end_line == diag.span.line and diag.span.end_column > diag.span.column:
        end = len(raw[: diag.span.end_column - 1].expandtabs(TAB_WIDTH)) + 1
    line = raw.expandtabs(TAB_WIDTH)
    # Never echo control characters (binary garbage, terminal escapes) to a terminal.
    line = "".join(c if c.isprintable() else "\ufffd" for c in line)
    if len(line) > MAX_SHOWN_CHARS:  # a minified or garbage line: show a window, not a megabyte
        line = line[:MAX_SHOWN_CHARS] + "..."
    num = str(diag.span.line)
    col = max(1, min(start, len(line) + 1))
    width = max(1, min(end - col, len(line) + 1 - col))
    # The line number right-aligned in a fixed gutter, as `check` prints it.
    gutter = max(GUTTER_WIDTH, len(num))
    return f"{head}\n{num:>{gutter}} | {line}\n{'':>{gutter}} | {' ' * (col - 1)}{'^' * width}"


def summary(diags: Sequence[Diagnostic], files: int) -> str:
    """``2 errors, 1 warning in 3 files``."""
    errors = sum(1 for d in diags if d.severity == "error")
    warnings = len(diags) - errors
    return (
        f"{errors} error{'s' if errors != 1 else ''}, "
        f"{warnings} warning{'s' if warnings != 1 else ''} "
        f"in {files} file{'s' if files != 1 else ''}"
    )


def sort(diags: Iterable[Diagnostic], order: Sequence[str] | None = None) -> list[Diagnostic]:
    """By file, then line, column and code.

    Files are taken in `order` (a configuration's files, as given);
    diagnostics of files not in it (a directory, a path) come first, by name. Without
    an order, files sort by name.
    """
    rank: dict[str, int] = {}
    for i, name in enumerate(order or ()):
        rank.setdefault(name, i)
    return sorted(diags, key=lambda d: (rank.get(d.span.file, -1), *d.sort_key()))


def render_all(
    diags: Iterable[Diagnostic], sources: Mapping[str, str], order: Sequence[str] | None = None
) -> str:
    """Every diagnostic rendered, in `order` of files (default: the order of `sources`'s
    keys, which the loader fills in configuration order)."""
    return "\n".join(
        render(d, sources) for d in sort(diags, list(sources) if order is None else order)
    )


def to_json(diags: Iterable[Diagnostic], order: Sequence[str] | None = None) -> str:
    return json.dumps([d.to_json() for d in sort(diags, order)], indent=2)


def has_errors(diags: Iterable[Diagnostic], *, strict: bool = False) -> bool:
    return any(d.severity == "error" or strict for d in diags)
