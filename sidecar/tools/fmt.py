"""`sidecar fmt`: rule files in one canonical layout, every comment kept.

How this works. `format_file` prints an `ast.File` into *entries*, one per
output line: a statement, a block's opening line, or its closing `}`. Each
entry remembers the source region it came from. The comments the parser
collected (`File.comments`, lark COMMENT tokens with positions) are then
placed among the entries by position: a trailing comment goes to the end of
the entry whose source lines hold it (when one entry gets several, the earlier
ones move onto their own lines above it), and an own-line comment goes before
the first entry that ends after it, at that entry's indentation (inside a block
when it was). An expression (`when`, `exclude when`) is one line, except where
the source had a comment between two operands: there it breaks before the
`and`/`or`, the continuation line 4 spaces deeper and its own entry, so the
comment stays at the end of its line. Blank lines follow the source, at most
one in a row; never right after `{` or before `}`; and always one between
top-level statements when either is a block (after the comments right below a
`}`, which stay attached to it).

Values are printed from the AST: strings re-quoted (only `"` and `\\` are
escaped, the only escapes the language has), numbers, durations, sizes and
rates from their raw text as written, parentheses exactly where the user put
them (`ast.Group`). The layout is therefore a function of the tree and the
comments alone, which is what makes formatting idempotent.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sidecar.diagnostics import Diagnostic, Span
from sidecar.dsl import ast
from sidecar.model.config import DEFAULT_RULES
from sidecar.model.expr import expr_text

INDENT = "    "
_END = 1 << 30  # "end of the line" as a column


@dataclass(slots=True, kw_only=True)
class _Entry:
    depth: int
    text: str
    first: tuple[int, int]  # source (line, column) where it starts
    last: tuple[int, int]  # source (line, column) where it ends
    top: int  # index of the top-level statement it belongs to
    closing: bool = False  # a block's `}`
    opening: bool = False  # a block's `{` line
    trailing: ast.Comment | None = None
    before: list[ast.Comment] = field(default_factory=list)  # own-line comments above it


def quote(value: str) -> str:
    """A string literal for `value`: escapes only where the language needs them."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def expr(e: ast.Expr) -> str:
    """An expression in canonical form, parentheses exactly as written."""
    return expr_text(e, _test)


@dataclass(slots=True)
class _Segment:
    """A run of an expression's text that no line break may split, and its source lines."""

    text: str
    first_line: int
    last_line: int


def _segments(e: ast.Expr) -> list[_Segment]:
    """`expr(e)` cut before each `and`/`or`: joined with spaces, the segments are `expr(e)`."""
    if isinstance(e, ast.Test):
        return [_Segment(_test(e), e.span.line, e.span.end_line)]
    if isinstance(e, ast.Not | ast.Group):
        inner = _segments(e.operand if isinstance(e, ast.Not) else e.inner)
        inner[0].text = ("not " if isinstance(e, ast.Not) else "(") + inner[0].text
        inner[0].first_line = e.span.line
        if isinstance(e, ast.Group):
            inner[-1].text += ")"
            inner[-1].last_line = e.span.end_line
        return inner
    op = "and" if isinstance(e, ast.And) else "or"
    out: list[_Segment] = []
    for i, operand in enumerate(e.operands):
        parts = _segments(operand)
        if i:
            parts[0].text = f"{op} {parts[0].text}"
        out += parts
    return out


def _expr_lines(e: ast.Expr, comment_lines: set[int]) -> list[_Segment]:
    """`expr(e)` as one line, or, where the source broke it with a comment in between,
    several: each break goes before the `and`/`or` that followed the comment, so an
    end-of-line comment stays at the end of its line."""
    segs = _segments(e)
    lines = [segs[0]]
    for prev, seg in itertools.pairwise(segs):
        if any(prev.last_line <= n < seg.first_line for n in comment_lines):
            lines.append(seg)
        else:
            lines[-1] = _Segment(
                f"{lines[-1].text} {seg.text}", lines[-1].first_line, seg.last_line
            )
    return lines


def _split_entries(
    head: str, e: ast.Expr, span: Span, depth: int, top: int, comment_lines: set[int]
) -> Iterator[_Entry]:
    """The entries of `head <expr>`: one, or continuation lines 4 spaces deeper. Each
    continuation line owns the source lines from the end of the previous one, so a
    comment on an operator's own line ends up on the line that operator leads."""
    lines = _expr_lines(e, comment_lines)
    first = (span.line, span.column)
    for i, line in enumerate(lines):
        end = (span.end_line, span.end_column) if i == len(lines) - 1 else (line.last_line, _END)
        text = f"{head} {line.text}" if i == 0 else line.text
        yield _Entry(depth=depth + (i > 0), text=text, first=first, last=end, top=top)
        first = (line.last_line + 1, 0)


def _test(t: ast.Test) -> str:
    head = t.subject if t.key is None else f"{t.subject} {quote(t.key.value)}"
    args = [a.value if isinstance(a, ast.Name) else quote(a.value) for a in t.args]
    if t.op == "exists":
        return f"{head} exists"
    if t.op == "in":
        return f"{head} in ({', '.join(args)})"
    return f"{head} {t.op} {args[0]}"


def _primary_stmt(s: ast.PrimaryStatement) -> str:
    if isinstance(s, ast.PrimaryIdleTimeout):
        return f"idle_timeout {s.duration.raw}"
    if isinstance(s, ast.Tls):
        return "tls {"  # printed by _tls_entries, over several lines
    return f"timeout {s.duration.raw}"


def _tls_stmt(s: ast.TlsStatement) -> str:
    if isinstance(s, ast.TlsCa):
        return f"ca {quote(s.path.value)}"
    if isinstance(s, ast.TlsVerify):
        return "verify on" if s.on else "verify off"
    if isinstance(s, ast.TlsCert):
        return f"cert {quote(s.path.value)}"
    if isinstance(s, ast.TlsKey):
        return f"key {quote(s.path.value)}"
    return f"server_name {quote(s.name.value)}"


def _canary_stmt(s: ast.CanaryStatement) -> str:
    if isinstance(s, ast.Server):
        return f"server {s.url}" + ("" if s.weight is None else f" weight {s.weight.raw}")
    if isinstance(s, ast.Workers):
        return f"workers {s.count.raw}"
    if isinstance(s, ast.Queue):
        return f"queue {s.size.raw}"
    if isinstance(s, ast.Timeout):
        return f"timeout {s.duration.raw}"
    if isinstance(s, ast.MaxBody):
        return f"max_body {s.size.raw}"
    if isinstance(s, ast.Body):
        return "body on" if s.on else "body off"
    if isinstance(s, ast.Mark):
        if s.header is None or s.value is None:
            return "mark off"
        return f"mark {quote(s.header.value)} {quote(s.value.value)}"
    if isinstance(s, ast.RateLimit):
        return f"rate {s.raw}"
    if isinstance(s, ast.Host):
        return "host preserve" if s.value is None else f"host {quote(s.value.value)}"
    if isinstance(s, ast.SetHeader):
        return f"set header {quote(s.name.value)} {quote(s.value.value)}"
    if isinstance(s, ast.DropHeader):
        return "drop header " + ", ".join(quote(n.value) for n in s.names)
    if isinstance(s, ast.Compare):
        return "compare {"  # printed by _compare_entries, over several lines
    if isinstance(s, ast.Pause):
        return f"pause after {s.failures.raw} failures for {s.duration.raw}"
    if isinstance(s, ast.Tls):
        return "tls {"  # printed by _tls_entries, over several lines
    return f"rewrite path {quote(s.pattern.value)} {quote(s.replacement.value)}"


def _compare_stmt(s: ast.CompareStatement) -> str:
    if isinstance(s, ast.CompareStatus):
        return "status"
    if isinstance(s, ast.CompareHeader):
        return "header " + ", ".join(quote(n.value) for n in s.names)
    if isinstance(s, ast.CompareBody):
        return f"body {s.mode}"
    if isinstance(s, ast.CompareIgnore):
        return "ignore " + ", ".join(quote(p.value) for p in s.paths)
    if isinstance(s, ast.MaxBody):
        return f"max_body {s.size.raw}"
    if isinstance(s, ast.CompareSample):
        return f"sample {s.rate.raw}"
    return f"baseline {s.name.value}"


def _compare_entries(node: ast.Compare, top: int) -> Iterator[_Entry]:
    """A canary's `compare` block: its own `{` line, statements one level deeper, `}`."""
    texts = [_compare_stmt(s) for s in node.statements]
    yield from _nested_entries("compare", node.span, node.statements, texts, top)


def _tls_entries(node: ast.Tls, top: int) -> Iterator[_Entry]:
    """A primary's or canary's `tls` block, laid out like `compare`."""
    texts = [_tls_stmt(s) for s in node.statements]
    yield from _nested_entries("tls", node.span, node.statements, texts, top)


def _nested_entries(
    head: str,
    span: Span,
    statements: tuple[ast.CompareStatement, ...] | tuple[ast.TlsStatement, ...],
    texts: list[str],
    top: int,
) -> Iterator[_Entry]:
    """A block inside a block: its own `{` line, statements one level deeper, `}`."""
    first, end = (span.line, span.column), (span.end_line, span.end_column)
    yield _Entry(
        depth=1, text=f"{head} {{", first=first, last=(span.line, _END), top=top, opening=True
    )
    for s, text in zip(statements, texts, strict=True):
        yield _Entry(
            depth=2,
            text=text,
            first=(s.span.line, s.span.column),
            last=(s.span.end_line, s.span.end_column),
            top=top,
        )
    close = (span.end_line, max(1, span.end_column - 1))
    yield _Entry(depth=1, text="}", first=close, last=end, top=top, closing=True)


def _mirror_stmt(s: ast.MirrorStatement) -> str:
    if isinstance(s, ast.When):
        return f"when {expr(s.expr)}"
    if isinstance(s, ast.To):
        return "to " + ", ".join(n.value for n in s.canaries)
    by = ""
    if s.by == "client":
        by = " by client"
    elif s.by is not None and s.key is not None:
        by = f" by {s.by} {quote(s.key.value)}"
    return f"sample {s.rate.raw}{by}"


def _entries(stmt: ast.TopLevel, top: int, comment_lines: set[int]) -> Iterator[_Entry]:
    span = stmt.span
    start, end = (span.line, span.column), (span.end_line, span.end_column)

    def block(head: str, inner: list[tuple[str, Span]]) -> Iterator[_Entry]:
        yield _Entry(
            depth=0, text=f"{head} {{", first=start, last=(span.line, _END), top=top, opening=True
        )
        statements = (
            stmt.statements if isinstance(stmt, ast.MirrorRule | ast.Canary | ast.Primary) else ()
        )
        for i, (text, s) in enumerate(inner):
            node = statements[i] if i < len(statements) else None
            if isinstance(node, ast.When):
                yield from _split_entries("when", node.expr, s, 1, top, comment_lines)
                continue
            if isinstance(node, ast.Compare):
                yield from _compare_entries(node, top)
                continue
            if isinstance(node, ast.Tls):
                yield from _tls_entries(node, top)
                continue
            yield _Entry(
                depth=1,
                text=text,
                first=(s.line, s.column),
                last=(s.end_line, s.end_column),
                top=top,
            )
        close = (span.end_line, max(1, span.end_column - 1))
        yield _Entry(depth=0, text="}", first=close, last=end, top=top, closing=True)

    if isinstance(stmt, ast.Listen):
        if stmt.braces:
            inner = [(_tls_stmt(s), s.span) for s in stmt.statements]
            yield from block(f"listen {stmt.address_raw}", inner)
        else:
            yield _Entry(depth=0, text=f"listen {stmt.address_raw}", first=start, last=end, top=top)
    elif isinstance(stmt, ast.Admin):
        text = "admin off" if stmt.address_raw is None else f"admin {stmt.address_raw}"
        yield _Entry(depth=0, text=text, first=start, last=end, top=top)
    elif isinstance(stmt, ast.Primary):
        url_end = (stmt.url_span.end_line, stmt.url_span.end_column)
        if not stmt.statements and end <= url_end:  # written without braces
            yield _Entry(depth=0, text=f"primary {stmt.url}", first=start, last=end, top=top)
        else:
            inner = [(_primary_stmt(s), s.span) for s in stmt.statements]
            yield from block(f"primary {stmt.url}", inner)
    elif isinstance(stmt, ast.Canary):
        yield from block(
            f"canary {stmt.name.value}", [(_canary_stmt(s), s.span) for s in stmt.statements]
        )
    elif isinstance(stmt, ast.MirrorRule):
        yield from block(
            f"mirror {stmt.name.value}", [(_mirror_stmt(s), s.span) for s in stmt.statements]
        )
    elif isinstance(stmt, ast.DiffLog):
        text = "diff_log stderr" if stmt.path is None else f"diff_log {quote(stmt.path.value)}"
        yield _Entry(depth=0, text=text, first=start, last=end, top=top)
    elif isinstance(stmt, ast.RequestId):
        text = f"request_id {quote(stmt.header.value)}"
        yield _Entry(depth=0, text=text, first=start, last=end, top=top)
    elif isinstance(stmt, ast.HostServer):
        text = f"server {stmt.name.value}"
        yield _Entry(depth=0, text=text, first=start, last=end, top=top)
    else:
        yield from _split_entries("exclude when", stmt.expr, span, 0, top, comment_lines)


def _place(entries: list[_Entry], comments: tuple[ast.Comment, ...]) -> list[ast.Comment]:
    """Attach comments to entries; returns those after the last entry (end of file)."""
    tail: list[ast.Comment] = []
    for c in sorted(comments, key=lambda c: (c.span.line, c.span.column)):
        pos = (c.span.line, c.span.column)
        if c.trailing:
            owner = None
            for e in entries:
                if e.first < pos and e.first[0] <= pos[0] <= e.last[0]:
                    owner = e
            if owner is not None:
                # The last comment on a statement's lines stays at its end; an earlier
                # one (a `when` split over lines) moves above it, keeping their order.
                if owner.trailing is not None:
                    owner.before.append(owner.trailing)
                owner.trailing = c
                continue
        target = next((e for e in entries if e.last > pos), None)
        if target is None:
            tail.append(c)
        else:
            target.before.append(c)
    return tail


def format_file(file: ast.File) -> str:
    """The canonical text of one parsed file (ends with one newline; empty stays empty)."""
    comment_lines = {c.span.line for c in file.comments}
    entries = [e for i, s in enumerate(file.statements) for e in _entries(s, i, comment_lines)]
    blocks = {e.top for e in entries if e.opening}
    tail = _place(entries, file.comments)
    out: list[str] = []
    # (last source line, top-level index or None, was a `{` line) of the previous printed line
    prev: tuple[int, int | None, bool] | None = None

    def emit(
        depth: int,
        text: str,
        first_line: int,
        last_line: int,
        top: int | None,
        closing: bool,
        opening: bool,
    ) -> None:
        nonlocal prev
        if prev is not None and out:
            prev_line, prev_top, prev_opening = prev
            boundary = top != prev_top and depth == 0 and (top in blocks or prev_top in blocks)
            if (boundary or first_line - prev_line > 1) and not prev_opening and not closing:
                out.append("")
        out.append(INDENT * depth + text)
        prev = (last_line, top, opening)

    # Own-line comments right below a block's `}` (no blank line between) stay attached
    # to it: they count as part of that block, so the blank line between top-level
    # blocks goes after them rather than between `}` and them.
    glued_to: int | None = None

    def comment(depth: int, c: ast.Comment, top: int | None) -> None:
        nonlocal glued_to
        if prev is None or depth != 0 or c.span.line != prev[0] + 1:
            glued_to = None
        line = c.span.line
        emit(
            depth, c.text.rstrip(), line, line, top if glued_to is None else glued_to, False, False
        )

    for e in entries:
        comment_depth = e.depth + 1 if e.closing else e.depth
        for c in e.before:
            comment(comment_depth, c, e.top)
        text = e.text if e.trailing is None else f"{e.text}  {e.trailing.text.rstrip()}"
        emit(e.depth, text, e.first[0], e.last[0], e.top, e.closing, e.opening)
        glued_to = e.top if e.closing and e.depth == 0 else None
    for c in tail:
        comment(0, c, None)
    return "\n".join(out) + "\n" if out else ""


def format_text(text: str, filename: str = "<string>") -> tuple[str | None, list[Diagnostic]]:
    """(canonical text, []) or (None, the syntax diagnostics). Never raises."""
    from sidecar.dsl.parser import parse  # lark: not for `sidecar --help`

    tree, diags = parse(text, filename)
    if tree is None:
        return None, diags
    return format_file(tree), []


# --- the command ----------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help=f"rule files or directories (default {DEFAULT_RULES})",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--check",
        action="store_true",
        help="change nothing; exit 1 listing files that would change",
    )
    mode.add_argument("--diff", action="store_true", help="print a unified diff; change nothing")


def run(args: argparse.Namespace) -> int:
    """Format each file on its own: one with syntax errors is left alone, the rest still done."""
    # lark (through the loader): not for `sidecar --help`.
    from sidecar import diagnostics
    from sidecar.dsl.loader import expand, read_rule_file

    files, problems, usage = expand(list(args.paths) or [DEFAULT_RULES])
    if usage is not None:
        print(f"sidecar fmt: error: {usage}", file=sys.stderr)
        return 2
    status = 1 if problems else 0
    for d in problems:
        print(d.headline(), file=sys.stderr)
    for name in files:
        source, data, problem = read_rule_file(name)  # the same diagnostics as `check`
        if problem is not None or source is None:
            shown = {} if source is None else {name: source}
            print(diagnostics.render_all([problem] if problem else [], shown), file=sys.stderr)
            status = 1
            continue
        text = source
        formatted, diags = format_text(text, name)
        if formatted is None:
            print(diagnostics.render_all(diags, {name: text}), file=sys.stderr)
            status = 1
            continue
        if formatted.encode("utf-8") == data:
            continue
        if args.diff:
            lines = difflib.unified_diff(
                text.splitlines(keepends=True),
                formatted.splitlines(keepends=True),
                fromfile=name,
                tofile=name,
            )
            sys.stdout.writelines(lines)
        elif args.check:
            print(name)
            status = 1
        else:
            Path(name).write_text(formatted, encoding="utf-8", newline="\n")
    return status
