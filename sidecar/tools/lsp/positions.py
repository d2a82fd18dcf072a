"""Rule-file positions (1-based line and column in code points, as lark counts
them: only "\\n" ends a line) <-> LSP positions (0-based line, column in the
client's code units: UTF-16 unless the client negotiated UTF-8 or UTF-32)."""

from __future__ import annotations

import bisect

from lsprotocol import types

from sidecar.diagnostics import Span


class Lines:
    """One text's lines, for converting positions both ways."""

    def __init__(self, text: str, encoding: str = "utf-16") -> None:
        self.text = text
        self.lines = text.split("\n")
        self.starts: list[int] = []
        offset = 0
        for line in self.lines:
            self.starts.append(offset)
            offset += len(line) + 1
        self.encoding = encoding

    def _units(self, chars: str) -> int:
        if self.encoding == "utf-32":
            return len(chars)
        if self.encoding == "utf-8":
            return len(chars.encode("utf-8", "surrogatepass"))
        return len(chars.encode("utf-16-le", "surrogatepass")) // 2

    def position(self, line: int, column: int) -> types.Position:
        """1-based line and code-point column -> an LSP position."""
        index = min(max(line - 1, 0), len(self.lines) - 1)
        text = self.lines[index]
        return types.Position(line=index, character=self._units(text[: max(column - 1, 0)]))

    def at_offset(self, offset: int) -> types.Position:
        line = max(bisect.bisect_right(self.starts, offset) - 1, 0)
        return self.position(line + 1, offset - self.starts[line] + 1)

    def range(self, span: Span) -> types.Range:
        end_column = span.end_column
        if span.end_line == span.line and end_column <= span.column:
            end_column = span.column + 1  # a point: show one character
        return types.Range(
            start=self.position(span.line, span.column),
            end=self.position(span.end_line, end_column),
        )

    def offset(self, position: types.Position) -> int:
        """An LSP position -> an offset into the text (clamped to the text)."""
        if position.line >= len(self.lines):
            return len(self.text)
        line = self.lines[position.line]
        units = 0
        column = 0
        while column < len(line) and units < position.character:
            units += self._units(line[column])
            column += 1
        return self.starts[position.line] + column

    def whole(self) -> types.Range:
        """The range of the whole text."""
        return types.Range(
            start=types.Position(line=0, character=0),
            end=self.position(len(self.lines), len(self.lines[-1]) + 1),
        )


def contains(span: Span, line: int, column: int) -> bool:
    """Whether the 1-based (line, column) is inside `span` or just after its end."""
    if (line, column) < (span.line, span.column):
        return False
    return (line, column) <= (span.end_line, span.end_column)
