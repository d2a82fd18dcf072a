"""The grammar is LALR-strict: no terminal collisions, no shift/reduce conflicts.

The product builds the parser without lark's `strict` proof (it costs ~0.7 s per
process); this test is where the proof runs, so a colliding terminal fails CI.
"""

from __future__ import annotations

from sidecar.dsl import grammar


def test_grammar_builds_in_strict_mode() -> None:
    strict = grammar.get_parser(strict=True)
    assert strict.options.strict


def test_strict_and_product_parsers_agree() -> None:
    text = "canary v2 { server http://127.0.0.1:9 }\nmirror m { to v2 }  # c\n"
    assert str(grammar.get_parser(strict=True).parse(text)) == str(grammar.get_parser().parse(text))
