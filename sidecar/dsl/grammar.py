"""The grammar and the one Lark instance: `get_parser()`, `grammar_text()`.

A leaf of the rule language: the parser and the syntax-error catalogue
(`errors.py`, which replays examples through the same Lark instance) both import
it, and it imports neither of them.
"""

from __future__ import annotations

import functools
import importlib.resources
import threading
from pathlib import Path

from lark import Lark, Token

from sidecar.dsl.transform import AstBuilder

# The source tree's grammar/ (sidecar/dsl/grammar.py -> the checkout's root); a wheel
# has no such directory and reads its copy, the `sidecar.grammar` package, instead.
_SOURCE_TREE_GRAMMAR = Path(__file__).resolve().parents[2] / "grammar"
GRAMMAR_FILE = "mirror.lark"

# The one builder the parser calls back, and the lock that gives it to one parse at a time.
BUILDER = AstBuilder()
LOCK = threading.Lock()


def _on_comment(token: Token) -> Token:
    BUILDER.comments.append(token)
    return token


def grammar_text() -> str:
    """The grammar source: the source tree's `grammar/` when present, else the wheel's copy."""
    source_tree = _SOURCE_TREE_GRAMMAR / GRAMMAR_FILE
    if source_tree.is_file():
        return source_tree.read_text(encoding="utf-8")
    return importlib.resources.files("sidecar.grammar").joinpath(GRAMMAR_FILE).read_text("utf-8")


@functools.cache
def get_parser(*, strict: bool = False) -> Lark:
    """The one Lark instance (built on first use, then reused). `parse()` returns AST nodes.

    `strict=True` makes lark prove that no two terminals can collide; that proof costs
    ~0.7 s of start-up for every `sidecar` command, so the test suite builds the grammar
    strictly once (tests/dsl/test_grammar_strict.py) and the product skips it.
    """
    lark = Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        strict=strict,
        transformer=BUILDER,
        keep_all_tokens=True,
        maybe_placeholders=False,
        lexer_callbacks={"COMMENT": _on_comment},
    )
    return lark
