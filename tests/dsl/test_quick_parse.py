"""The quick parse loop (sidecar/dsl/parser.py `_QuickParse`) agrees with lark's own parse.

`parse()` builds the AST in one loop over lark's tables and falls back to
`Lark.parse` at anything unexpected; both must give the same nodes, spans and
comments for valid input, and errors must come from lark.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.dsl import grammar, parser
from sidecar.dsl.transform import MAX_NESTING

ROOT = Path(__file__).resolve().parents[2]

SAMPLES = [
    "",
    "  \n\t# only a comment\n",
    "listen 127.0.0.1:8080 admin off primary http://a:1 { timeout 3s } # trailing",
    'canary c {\n\tserver http://x weight 2\n\tmark "X-M" "1"\n\tdrop header "a", "b"\n'
    '\trewrite path "^/a\\"b\\\\" "/c"\n\trate 10/m host preserve body off\n}\n',
    'mirror m { when not (method in (GET, HEAD) or host *= "x") and header "A" exists\n'
    "  sample 12.5% by client to a, b }\n# last\n",
    'exclude when client in ("10.0.0.0/8", "::1/128") or query "q" !~ "z"',
]


def _both(text: str) -> tuple[object, object]:
    builder = grammar.BUILDER
    with grammar.LOCK:
        try:
            builder.begin(text, "t.mirror")
            quick = (parser._quick().parse(text), list(builder.comments))
            builder.begin(text, "t.mirror")
            slow = (grammar.get_parser().parse(text), list(builder.comments))
        finally:
            builder.end()
    return quick, slow


@pytest.mark.parametrize(
    "text", SAMPLES + [p.read_text() for p in sorted(ROOT.glob("rules/*.mirror"))]
)
def test_quick_parse_equals_lark(text: str) -> None:
    quick, slow = _both(text)
    assert repr(quick) == repr(slow)
    assert [(t.line, t.column, t.end_line, t.end_column) for t in quick[1]] == [  # type: ignore[index]
        (t.line, t.column, t.end_line, t.end_column)
        for t in slow[1]  # type: ignore[index]
    ]


@pytest.mark.parametrize("text", ["mirror a {", "canary a { wokers 8 }", "\x00", 'path == "a'])
def test_errors_are_left_to_lark(text: str) -> None:
    with pytest.raises(parser._Mismatch), grammar.LOCK:
        try:
            grammar.BUILDER.begin(text, "t")
            parser._quick().parse(text)
        finally:
            grammar.BUILDER.end()
    file, diags = parser.parse(text, "t")
    assert file is None and [d.code for d in diags] == ["syntax-error"]


class _GivesUp:
    """A quick parse that gets some way (collecting comments) and then leaves the text to lark."""

    real = parser._quick()

    def parse(self, text: str) -> object:
        self.real.parse(text.partition("mirror")[0])
        raise parser._Mismatch


def test_a_quick_parse_given_up_leaves_no_trace(monkeypatch: pytest.MonkeyPatch) -> None:
    text = (
        "# a\nexclude when " + "(" * 300 + 'path == "a"' + ")" * 300 + "\nmirror a { to b } # b\n"
    )
    expected, _ = parser.parse(text, "t")
    monkeypatch.setattr(parser, "_quick", _GivesUp)
    file, _ = parser.parse(text, "t")
    assert file is not None and [c.text for c in file.comments] == ["# a", "# b"]
    assert file == expected


@pytest.mark.parametrize(("depth", "ok"), [(MAX_NESTING, True), (MAX_NESTING + 1, False)])
def test_nesting_limit(depth: int, ok: bool) -> None:
    text = "exclude when " + "(" * depth + 'path == "a"' + ")" * depth
    file, diags = parser.parse(text, "t")
    assert (file is not None) is ok
    if not ok:
        assert diags[0].message == "expression nested too deeply"


def test_the_lark_internals_the_quick_parse_reads_are_still_there() -> None:
    """pyproject pins lark to the versions this was tested on; a new lark that moves these
    internals fails here by name, not as a slow fallback nobody notices."""
    from lark import Token
    from lark.lexer import ContextualLexer

    lark = grammar.get_parser()
    frontend = lark.parser
    assert isinstance(frontend.lexer, ContextualLexer), "lark: contextual lexer moved"
    assert hasattr(Token, "_future_new"), "lark: Token._future_new is gone"
    table = frontend.parser.parser.parse_table
    assert table.start_states["start"] is not None and table.states, "lark: parse table moved"
    for basic in frontend.lexer.lexers.values():
        assert len(basic.scanner._mres) == 1, "lark: one scanner regex per state no longer"
    quick = parser._quick()
    assert isinstance(quick, parser._QuickParse)
    file, diags = parser.parse("mirror m { to c }", "t")
    assert file is not None and not diags
