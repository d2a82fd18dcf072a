"""Grammar loading and `parse(text, filename)`: text -> `ast.File` plus diagnostics.

The Lark instance is built once (LALR, contextual lexer, strict, positions) and
cached. `parse` is the one boundary where lark exceptions are translated: a
syntax error becomes a `syntax-error` Diagnostic at the offending token (see
`errors.py`); nothing lark raises escapes. Comments are collected through a
lexer callback into `File.comments`, with their positions, for `fmt`.
"""

from __future__ import annotations

import contextvars
import functools
import importlib.resources
from pathlib import Path

from lark import Lark, Token, UnexpectedInput
from lark.exceptions import VisitError

import sidecar
from sidecar.diagnostics import Diagnostic, Span
from sidecar.dsl import ast
from sidecar.dsl.errors import syntax_diagnostic
from sidecar.dsl.transform import ToAst

GRAMMAR_FILE = "mirror.lark"

# The comments of the parse in progress. A context variable rather than a
# global list so that parses in different threads or tasks do not mix.
_comments: contextvars.ContextVar[list[Token] | None] = contextvars.ContextVar(
    "sidecar_dsl_comments", default=None
)


def _on_comment(token: Token) -> Token:
    sink = _comments.get()
    if sink is not None:
        sink.append(token)
    return token


def grammar_text() -> str:
    """The grammar source: the source tree's `grammar/` when present, else the wheel's copy."""
    source_tree = Path(sidecar.__file__).resolve().parent.parent / "grammar" / GRAMMAR_FILE
    if source_tree.is_file():
        return source_tree.read_text(encoding="utf-8")
    return importlib.resources.files("sidecar.grammar").joinpath(GRAMMAR_FILE).read_text("utf-8")


@functools.cache
def get_parser(*, strict: bool = False) -> Lark:
    """The one Lark instance (built on first use, then reused).

    `strict=True` makes lark prove that no two terminals can collide; that proof costs
    ~0.7 s of start-up for every `sidecar` command, so the test suite builds the grammar
    strictly once (tests/dsl/test_grammar_strict.py) and the product skips it.
    """
    return Lark(
        grammar_text(),
        parser="lalr",
        lexer="contextual",
        strict=strict,
        propagate_positions=True,
        maybe_placeholders=False,
        lexer_callbacks={"COMMENT": _on_comment},
    )


def _comment_nodes(tokens: list[Token], text: str, filename: str) -> tuple[ast.Comment, ...]:
    out = []
    for tok in tokens:
        start = tok.start_pos or 0
        line_start = text.rfind("\n", 0, start) + 1
        out.append(
            ast.Comment(
                text=str(tok),
                trailing=bool(text[line_start:start].strip()),
                span=Span(
                    file=filename,
                    line=tok.line or 1,
                    column=tok.column or 1,
                    end_line=tok.end_line or tok.line or 1,
                    end_column=tok.end_column or 1,
                ),
            )
        )
    return tuple(out)


def parse(text: str, filename: str = "<string>") -> tuple[ast.File | None, list[Diagnostic]]:
    """Parse one file. Returns (File, []) or (None, [the syntax error]). Never raises."""
    sink: list[Token] = []
    reset = _comments.set(sink)
    try:
        tree = get_parser().parse(text)
        statements = ToAst(text, filename).transform(tree)
    except UnexpectedInput as exc:
        return None, [syntax_diagnostic(exc, text, filename)]
    except (RecursionError, VisitError) as exc:
        if isinstance(exc, VisitError) and not isinstance(exc.orig_exc, RecursionError):
            raise exc.orig_exc from None  # a bug in the transformer: the loader reports it
        # Thousands of nested parentheses: refuse rather than overflow later passes.
        span = Span(file=filename, line=1, column=1, end_line=1, end_column=2)
        message = "expression nested too deeply"
        return None, [Diagnostic(span=span, severity="error", code="syntax-error", message=message)]
    finally:
        _comments.reset(reset)
    return ast.File(
        path=filename, statements=statements, comments=_comment_nodes(sink, text, filename)
    ), []
