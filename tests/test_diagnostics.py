"""Rendering of diagnostics: headline, gutter, caret under the span."""

from __future__ import annotations

from sidecar.diagnostics import Diagnostic, Span, render, render_all, sort, summary


def diag(line: int, col: int, end_col: int) -> Diagnostic:
    span = Span(file="f.mirror", line=line, column=col, end_line=line, end_column=end_col)
    return Diagnostic(span=span, severity="error", code="unknown-canary", message="m")


def test_caret_under_the_span() -> None:
    text = "mirror m {\n    to v3\n}\n"
    assert render(diag(2, 8, 10), {"f.mirror": text}).splitlines()[1:] == [
        "    2 |     to v3",
        "      |        ^^",
    ]


def test_caret_under_the_span_after_tabs() -> None:
    text = "mirror m {\n\tto v3\n}\n"
    rendered = render(diag(2, 5, 7), {"f.mirror": text}).splitlines()
    assert rendered[1] == "    2 |     to v3"
    assert rendered[2] == "      |        ^^"


def test_caret_past_the_end_of_a_short_line_is_clamped() -> None:
    rendered = render(diag(1, 40, 41), {"f.mirror": "ab\n"}).splitlines()
    assert rendered[2] == "      |   ^"


def test_control_characters_are_not_echoed() -> None:
    rendered = render(diag(1, 1, 2), {"f.mirror": "\x1b[31mred\n"})
    assert "\x1b" not in rendered


def test_summary_plurals() -> None:
    assert summary([diag(1, 1, 2)], 1) == "1 error, 0 warnings in 1 file"
    assert summary([], 3) == "0 errors, 0 warnings in 3 files"


def _at(file: str, line: int) -> Diagnostic:
    span = Span(file=file, line=line, column=1, end_line=line, end_column=2)
    return Diagnostic(span=span, severity="error", code="x", message="m")


def test_sort_takes_files_in_the_configuration_order() -> None:
    diags = [_at("a.mirror", 2), _at("z.mirror", 1), _at("a.mirror", 1), _at("dir", 1)]
    got = [(d.span.file, d.span.line) for d in sort(diags, ["z.mirror", "a.mirror"])]
    # a diagnostic of a file outside the order (a directory) comes first
    assert got == [("dir", 1), ("z.mirror", 1), ("a.mirror", 1), ("a.mirror", 2)]
    assert [d.span.file for d in sort(diags)][-1] == "z.mirror"  # no order: by name


def test_render_all_defaults_to_the_order_of_the_sources() -> None:
    text = render_all([_at("a.mirror", 1), _at("z.mirror", 1)], {"z.mirror": "x", "a.mirror": "y"})
    assert text.index("z.mirror:1:1") < text.index("a.mirror:1:1")
