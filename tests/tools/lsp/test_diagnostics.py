"""Diagnostics: published on open and change, cleared when fixed, across the directory."""

from __future__ import annotations

from pathlib import Path

import pytest
from lsprotocol import types
from pytest_lsp import LanguageClient

from tests.tools.lsp.conftest import (
    CANARIES,
    RULES,
    change_doc,
    codes,
    diagnostics_until,
    open_doc,
    write_rules,
)


async def test_diagnostics_appear_and_clear(client: LanguageClient, tmp_path: Path) -> None:
    _server, _canaries, rules = write_rules(tmp_path)
    uri = open_doc(client, rules)
    assert await diagnostics_until(client, uri, lambda d: True) == []
    broken = RULES.replace("to v2, v3", "to v2, v4")
    change_doc(client, uri, broken, 2)
    diags = await diagnostics_until(client, uri, lambda d: bool(d))
    assert codes(diags) == ["unknown-canary"]
    [d] = diags
    assert (d.range.start.line, d.range.start.character) == (2, 11)  # the `v4`
    assert (d.range.end.line, d.range.end.character) == (2, 13)
    assert 'unknown canary "v4"' in d.message and d.source == "sidecar"
    change_doc(client, uri, RULES + "mirror bad {\n    to v2\n", 3)  # an unclosed block
    diags = await diagnostics_until(client, uri, lambda d: codes(d) == ["syntax-error"])
    assert "not closed" in diags[0].message
    change_doc(client, uri, RULES, 4)
    assert await diagnostics_until(client, uri, lambda d: not d) == []


async def test_a_change_in_one_file_reaches_the_other_open_file(
    client: LanguageClient, tmp_path: Path
) -> None:
    _server, canaries, rules = write_rules(tmp_path)
    canaries_uri = open_doc(client, canaries)
    rules_uri = open_doc(client, rules)
    await diagnostics_until(client, rules_uri, lambda d: not d)
    # Renaming v3's block (not saved) breaks the `to` in the other file...
    change_doc(client, canaries_uri, CANARIES.replace("canary v3", "canary v9"), 2)
    diags = await diagnostics_until(client, rules_uri, lambda d: bool(d))
    assert codes(diags) == ["unknown-canary"] and '"v3"' in diags[0].message
    # ... and the renamed canary is reported unused in its own file.
    own = await diagnostics_until(client, canaries_uri, lambda d: bool(d))
    assert codes(own) == ["unused-canary"]
    change_doc(client, canaries_uri, CANARIES, 3)
    assert await diagnostics_until(client, rules_uri, lambda d: not d) == []
    assert await diagnostics_until(client, canaries_uri, lambda d: not d) == []


async def test_an_unsaved_buffer_overrides_the_file_on_disk(
    client: LanguageClient, tmp_path: Path
) -> None:
    _server, canaries, rules = write_rules(tmp_path)
    canaries.write_text(CANARIES.replace("canary v3", "canary v9"))  # on disk: no v3
    rules_uri = open_doc(client, rules)
    diags = await diagnostics_until(client, rules_uri, lambda d: bool(d))
    assert codes(diags) == ["unknown-canary"]
    # The open (unsaved) buffer has v3 again: it wins over the file.
    open_doc(client, canaries, text=CANARIES)
    assert await diagnostics_until(client, rules_uri, lambda d: not d) == []
    # A new file never saved counts too: it defines a second `v2`.
    new = tmp_path / "15-more.mirror"
    new_uri = open_doc(client, new, text="canary v2 {\n    server http://127.0.0.1:1\n}\n")
    diags = await diagnostics_until(client, new_uri, lambda d: bool(d))
    assert codes(diags) == ["duplicate-canary"]
    assert not new.exists()


async def test_closing_a_buffer_clears_it_and_rechecks_with_the_disk(
    client: LanguageClient, tmp_path: Path
) -> None:
    _server, canaries, rules = write_rules(tmp_path)
    rules_uri = open_doc(client, rules)
    canaries_uri = open_doc(client, canaries, text=CANARIES.replace("canary v3", "canary v9"))
    await diagnostics_until(client, rules_uri, lambda d: codes(d) == ["unknown-canary"])
    await diagnostics_until(client, canaries_uri, lambda d: codes(d) == ["unused-canary"])
    client.text_document_did_close(
        types.DidCloseTextDocumentParams(
            text_document=types.TextDocumentIdentifier(uri=canaries_uri)
        )
    )
    assert await diagnostics_until(client, canaries_uri, lambda d: not d) == []
    assert await diagnostics_until(client, rules_uri, lambda d: not d) == []


async def test_a_burst_of_changes_ends_with_the_last_text_checked(
    client: LanguageClient, tmp_path: Path
) -> None:
    _server, _canaries, rules = write_rules(tmp_path)
    uri = open_doc(client, rules)
    await diagnostics_until(client, uri, lambda d: not d)
    for version in range(2, 40):  # keystrokes, faster than the checks
        change_doc(client, uri, RULES.replace("v3", "v4" if version % 2 else "v3"), version)
    change_doc(client, uri, RULES.replace("v3", "v5"), 40)
    diags = await diagnostics_until(client, uri, lambda d: any('"v5"' in x.message for x in d))
    assert codes(diags) == ["unknown-canary"]


async def test_incremental_changes_in_utf16_units(client: LanguageClient, tmp_path: Path) -> None:
    """VS Code sends ranges in UTF-16 code units, and reads diagnostics in them: the
    non-BMP character before the edit counts two."""
    _server, _canaries, rules = write_rules(tmp_path)
    line = '    when path == "/🚀" and method == GET'
    rules.write_text(RULES.replace('    when path ^= "/api/"', line))
    uri = open_doc(client, rules)
    await diagnostics_until(client, uri, lambda d: not d)
    column = line.index("GET") + 1  # in UTF-16 units
    change = types.TextDocumentContentChangePartial(
        range=types.Range(
            start=types.Position(line=1, character=column),
            end=types.Position(line=1, character=column + 3),
        ),
        text="get",
    )
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=2),
            content_changes=[change],
        )
    )
    diags = await diagnostics_until(client, uri, lambda d: bool(d))
    assert codes(diags) == ["invalid-method"], diags
    assert (diags[0].range.start.line, diags[0].range.start.character) == (1, column)
    assert diags[0].range.end.character == column + 3


async def test_a_closed_file_changed_on_disk_is_checked_again(
    client: LanguageClient, tmp_path: Path
) -> None:
    _server, canaries, rules = write_rules(tmp_path)
    rules_uri = open_doc(client, rules)
    await diagnostics_until(client, rules_uri, lambda d: not d)
    canaries.write_text(CANARIES.replace("canary v3", "canary v9"))  # a checkout, say
    client.workspace_did_change_watched_files(
        types.DidChangeWatchedFilesParams(
            changes=[types.FileEvent(uri=canaries.as_uri(), type=types.FileChangeType.Changed)]
        )
    )
    diags = await diagnostics_until(client, rules_uri, lambda d: bool(d))
    assert codes(diags) == ["unknown-canary"]


async def test_a_document_over_the_size_limit_is_refused_not_parsed(
    client: LanguageClient, tmp_path: Path
) -> None:
    from pygls.exceptions import JsonRpcException

    big = "# " + "x" * (1 << 20) + "\nlisten\n"
    uri = open_doc(client, tmp_path / "big.mirror", text=big)
    diags = await diagnostics_until(client, uri, lambda d: bool(d))
    assert codes(diags) == ["file-too-large"]
    with pytest.raises(JsonRpcException, match="larger than 1,048,576 bytes"):
        await client.text_document_hover_async(
            types.HoverParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                position=types.Position(line=1, character=2),
            )
        )
