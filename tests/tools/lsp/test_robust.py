"""A document being typed is broken most of the time: nothing the server does with one may
fail. Hypothesis edits the example rules at random and calls every part that reads the
text; then a real server gets a seeded stream of random edits and keeps answering."""

from __future__ import annotations

import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from lsprotocol import types
from pytest_lsp import LanguageClient

from sidecar.dsl import cursor
from sidecar.tools.fmt import format_text
from sidecar.tools.lsp import assist, navigation
from sidecar.tools.lsp.positions import Lines
from sidecar.tools.lsp.project import Project
from tests.tools.lsp.conftest import change_doc, diagnostics_until, doc_id, open_doc

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = "\n".join(p.read_text() for p in sorted((ROOT / "rules").glob("*.mirror")))
# Pieces people type: keywords, punctuation, values, and things that are never valid.
PIECES = [*cursor.literals().values(), "v2", "10s", "1MiB", "5%", '"/a"', '"', "#", "\n", " ", ";", "'", "{", "}", "\x00"]  # fmt: skip


@st.composite
def edited(draw: st.DrawFn) -> tuple[str, int]:
    """The example rules after a few random edits, and a cursor offset in the result."""
    text = EXAMPLE
    for _ in range(draw(st.integers(1, 4))):
        start = draw(st.integers(0, len(text)))
        end = draw(st.integers(start, min(len(text), start + 40)))
        insert = "".join(draw(st.lists(st.sampled_from(PIECES), max_size=3)))
        text = text[:start] + insert + text[end:]
    return text, draw(st.integers(0, len(text)))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(edited())
def test_every_reader_of_a_broken_text_answers(case: tuple[str, int]) -> None:
    text, offset = case
    lines = Lines(text)
    expected = cursor.expected_at(text, offset)
    if expected is not None:
        for word in ("timeout", "header", "sample", "body"):
            cursor.rules_started_by(expected, word)
    items = assist.completions(text, offset, {}, lines)
    assert all(isinstance(i, types.CompletionItem) for i in items)
    assist.hover(text, offset, None, lines)
    navigation.defined_while_broken(text)
    formatted, diags = format_text(text, "x.mirror")
    assert (formatted is None) == bool(diags)
    project = Project()
    project.open("untitled:x", text, 1)
    result = project.check("untitled:x")
    assert all(d.span.line >= 1 for d in result.diagnostics)
    for source in project.sources("untitled:x"):
        if source.tree is not None:
            navigation.symbols(source.tree, lines)
    assert lines.offset(lines.at_offset(offset)) == offset


async def test_the_server_keeps_answering_through_random_edits(
    client: LanguageClient, tmp_path: Path
) -> None:
    rng = random.Random(18)
    path = tmp_path / "rules.mirror"
    text = EXAMPLE
    uri = open_doc(client, path, text=text)
    for version in range(2, 42):
        start = rng.randrange(len(text) + 1)
        end = min(len(text), start + rng.randrange(30))
        text = text[:start] + "".join(rng.choices(PIECES, k=rng.randrange(3))) + text[end:]
        change_doc(client, uri, text, version)
        lines = text.split("\n")
        line = rng.randrange(len(lines))
        position = types.Position(line=line, character=rng.randrange(len(lines[line]) + 1))
        await client.text_document_completion_async(
            types.CompletionParams(text_document=doc_id(uri), position=position)
        )
        await client.text_document_hover_async(
            types.HoverParams(text_document=doc_id(uri), position=position)
        )
        await client.text_document_document_symbol_async(
            types.DocumentSymbolParams(text_document=doc_id(uri))
        )
        await client.text_document_formatting_async(
            types.DocumentFormattingParams(
                text_document=doc_id(uri), options=types.FormattingOptions(tab_size=4, insert_spaces=True)
            )
        )  # fmt: skip
    # Back to the example: the last check clears every diagnostic.
    change_doc(client, uri, EXAMPLE, 100)
    assert await diagnostics_until(client, uri, lambda d: not d) == []
