"""Canary names across files (definition, references, rename), symbols, formatting."""

from __future__ import annotations

from pathlib import Path

import pytest
from lsprotocol import types
from pygls.exceptions import JsonRpcException
from pytest_lsp import LanguageClient

from tests.tools.lsp.conftest import (
    CANARIES,
    RULES,
    at,
    diagnostics_until,
    doc_id,
    open_doc,
    write_rules,
)

BASELINE = CANARIES.replace("    timeout 2s\n", "    timeout 2s\n    compare {\n        status\n        baseline v3\n    }\n")  # fmt: skip


def spots(locations: list[types.Location]) -> list[tuple[str, int, int, int]]:
    return sorted(
        (loc.uri.rsplit("/", 1)[1], loc.range.start.line, loc.range.start.character, loc.range.end.character)
        for loc in locations
    )  # fmt: skip


async def test_definition_and_references_across_files(
    client: LanguageClient, tmp_path: Path
) -> None:
    _server, canaries, rules = write_rules(tmp_path)
    canaries.write_text(BASELINE)
    rules_uri = open_doc(client, rules)
    definition = await client.text_document_definition_async(
        types.DefinitionParams(text_document=doc_id(rules_uri), position=at(RULES, "v3", 1))
    )
    assert isinstance(definition, list)
    assert spots(definition) == [("10-canaries.mirror", 9, 7, 9)]  # `canary v3`, not opened
    refs = await client.text_document_references_async(
        types.ReferenceParams(
            text_document=doc_id(rules_uri),
            position=at(RULES, "v3"),
            context=types.ReferenceContext(include_declaration=True),
        )
    )
    assert refs is not None
    assert spots(refs) == [
        ("10-canaries.mirror", 5, 17, 19),  # baseline v3
        ("10-canaries.mirror", 9, 7, 9),  # canary v3
        ("20-rules.mirror", 2, 11, 13),  # to v2, v3
    ]
    no_decl = await client.text_document_references_async(
        types.ReferenceParams(
            text_document=doc_id(rules_uri),
            position=at(RULES, "v3"),
            context=types.ReferenceContext(include_declaration=False),
        )
    )
    assert no_decl is not None and len(no_decl) == 2
    nothing = await client.text_document_definition_async(
        types.DefinitionParams(text_document=doc_id(rules_uri), position=at(RULES, "path"))
    )
    assert nothing == []


async def test_rename_a_canary_everywhere(client: LanguageClient, tmp_path: Path) -> None:
    _server, canaries, rules = write_rules(tmp_path)
    canaries.write_text(BASELINE)
    canaries_uri = open_doc(client, canaries)
    position = at(BASELINE, "canary v3", 8)
    prepared = await client.text_document_prepare_rename_async(
        types.PrepareRenameParams(text_document=doc_id(canaries_uri), position=position)
    )
    assert isinstance(prepared, types.Range) and prepared.start.character == 7
    edit = await client.text_document_rename_async(
        types.RenameParams(text_document=doc_id(canaries_uri), position=position, new_name="stable")
    )
    assert edit is not None and edit.changes is not None
    texts = {canaries.as_uri(): BASELINE, rules.as_uri(): RULES}
    assert set(edit.changes) == set(texts)
    for uri, edits in edit.changes.items():
        texts[uri] = apply(texts[uri], edits)
    assert "canary stable {" in texts[canaries.as_uri()]
    assert "baseline stable" in texts[canaries.as_uri()]
    assert "to v2, stable" in texts[rules.as_uri()]
    assert "v3" not in "".join(texts.values())
    # A name that exists already, or is not a name, is refused with the reason.
    with pytest.raises(JsonRpcException, match="already exists"):
        await client.text_document_rename_async(
            types.RenameParams(text_document=doc_id(canaries_uri), position=position, new_name="v2")
        )
    with pytest.raises(JsonRpcException, match="not a canary name"):
        await client.text_document_rename_async(
            types.RenameParams(
                text_document=doc_id(canaries_uri), position=position, new_name="a b"
            )
        )
    # A file of the directory that does not parse could hide uses: refused.
    (tmp_path / "30-broken.mirror").write_text("mirror x {\n    to v3\n")
    with pytest.raises(JsonRpcException, match=r"30-broken.mirror:\d+ has an error"):
        await client.text_document_rename_async(
            types.RenameParams(text_document=doc_id(canaries_uri), position=position, new_name="v9")
        )


def apply(text: str, edits: list[types.TextEdit]) -> str:
    """Apply single-line edits (bottom up)."""
    lines = text.split("\n")
    for e in sorted(
        edits, key=lambda e: (e.range.start.line, e.range.start.character), reverse=True
    ):
        line = lines[e.range.start.line]
        lines[e.range.start.line] = (
            line[: e.range.start.character] + e.new_text + line[e.range.end.character :]
        )
    return "\n".join(lines)  # fmt: skip


async def test_document_symbols(client: LanguageClient, tmp_path: Path) -> None:
    text = (
        "primary http://127.0.0.1:8081\n"
        + CANARIES
        + "\n"
        + RULES
        + '\nexclude when path ^= "/admin"\n'
    )
    uri = open_doc(client, tmp_path / "all.mirror", text=text)
    result = await client.text_document_document_symbol_async(
        types.DocumentSymbolParams(text_document=doc_id(uri))
    )
    assert result is not None
    got = [
        (s.name, s.kind, s.range.start.line) for s in result if isinstance(s, types.DocumentSymbol)
    ]
    assert got == [
        ("primary", types.SymbolKind.Module, 0),
        ("v2", types.SymbolKind.Class, 1),
        ("v3", types.SymbolKind.Class, 6),
        ("api", types.SymbolKind.Function, 10),
        ("exclude", types.SymbolKind.Event, 15),
    ]
    api = next(s for s in result if s.name == "api")
    assert isinstance(api, types.DocumentSymbol) and api.detail == "to v2, v3"


async def test_formatting_is_fmt_and_skips_broken_files(
    client: LanguageClient, tmp_path: Path
) -> None:
    messy = "canary  v2 {\n  server   http://127.0.0.1:9002\n       timeout 2s }\n"
    uri = open_doc(client, tmp_path / "a.mirror", text=messy)
    options = types.FormattingOptions(tab_size=4, insert_spaces=True)
    edits = await client.text_document_formatting_async(
        types.DocumentFormattingParams(text_document=doc_id(uri), options=options)
    )
    assert edits is not None and len(edits) == 1
    assert edits[0].new_text == "canary v2 {\n    server http://127.0.0.1:9002\n    timeout 2s\n}\n"
    assert (edits[0].range.start.line, edits[0].range.start.character) == (0, 0)
    assert (edits[0].range.end.line, edits[0].range.end.character) == (3, 0)
    formatted = tmp_path / "b.mirror"
    formatted.write_text(edits[0].new_text)
    b_uri = open_doc(client, formatted)
    unchanged = await client.text_document_formatting_async(
        types.DocumentFormattingParams(text_document=doc_id(b_uri), options=options)
    )
    assert unchanged is not None and list(unchanged) == []
    broken = "canary v2 {\n  server http://127.0.0.1:9002\n"
    c_uri = open_doc(client, tmp_path / "c.mirror", text=broken)
    await diagnostics_until(client, c_uri, lambda d: bool(d))
    assert (
        await client.text_document_formatting_async(
            types.DocumentFormattingParams(text_document=doc_id(c_uri), options=options)
        )
        is None
    )


async def test_the_server_advertises_what_it_answers(client: LanguageClient) -> None:
    """An editor asks only for what the server says it does (VS Code calls prepareRename
    only with `prepareProvider`)."""
    caps = client.init_result.capabilities  # type: ignore[attr-defined]
    assert caps.completion_provider is not None and caps.hover_provider
    assert caps.definition_provider and caps.references_provider
    assert caps.document_symbol_provider and caps.document_formatting_provider
    assert isinstance(caps.rename_provider, types.RenameOptions)
    assert caps.rename_provider.prepare_provider
    sync = caps.text_document_sync
    assert isinstance(sync, types.TextDocumentSyncOptions)
    assert sync.change == types.TextDocumentSyncKind.Incremental
