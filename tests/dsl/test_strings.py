"""String literals: `\\"` and `\\\\` are escapes; any other backslash is kept as written."""

from __future__ import annotations

import pytest

from sidecar.dsl import ast, loads
from sidecar.dsl.parser import parse
from sidecar.tools.fmt import quote


def rewrite(text: str) -> ast.RewritePath:
    f, diags = parse(f'canary c {{ server http://127.0.0.1:1 rewrite path {text} "/x" }}', "t")
    assert f is not None, diags
    (canary,) = f.statements
    assert isinstance(canary, ast.Canary)
    stmt = canary.statements[-1]
    assert isinstance(stmt, ast.RewritePath)
    return stmt


@pytest.mark.parametrize(
    ("literal", "value"),
    [
        (r'"^/a/\d+"', r"^/a/\d+"),
        (r'"\\.css$"', r"\.css$"),
        (r'"a\"b"', 'a"b'),
        (r'"a\\\\b"', r"a\\b"),
        (r'"end\\"', "end\\"),
    ],
)
def test_escapes(literal: str, value: str) -> None:
    assert rewrite(literal).pattern.value == value


@pytest.mark.parametrize("value", [r"^/a/\d+", 'a"b', "end\\", r"\\"])
def test_quote_round_trips(value: str) -> None:
    assert rewrite(quote(value)).pattern.value == value


def test_regex_with_backslash_class_compiles_and_matches() -> None:
    result = loads(
        'canary c { server http://127.0.0.1:1 }\nmirror m { when path ~ "^/items/\\d+$" to c }\n'
    )
    assert result.config is not None, result.diagnostics


def test_unterminated_string_is_a_syntax_error_on_its_line() -> None:
    result = loads('mirror m { when path == "/a }\n')
    assert result.config is None
    assert result.diagnostics[0].code == "syntax-error"
    assert result.diagnostics[0].span.line == 1
