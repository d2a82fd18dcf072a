"""A real LSP client (pytest-lsp) driving `sidecar lsp` in a subprocess over stdio."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest_lsp
from lsprotocol import types
from pytest_lsp import ClientServerConfig, LanguageClient, client_capabilities

# Long enough for a loaded CI machine; the checks themselves take milliseconds.
DEADLINE_S = 20.0


@pytest_lsp.fixture(
    config=ClientServerConfig(server_command=[sys.executable, "-m", "sidecar.cli", "lsp"]),
)
async def client(lsp_client: LanguageClient, tmp_path: Path):  # type: ignore[no-untyped-def]
    params = types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"),
        root_uri=tmp_path.as_uri(),
    )
    lsp_client.init_result = await lsp_client.initialize_session(params)  # type: ignore[attr-defined]
    yield
    await lsp_client.shutdown_session()


def open_doc(client: LanguageClient, path: Path, text: str | None = None, version: int = 1) -> str:
    """Open `path` in the server (with `text`, else the file's); returns its URI."""
    uri = path.as_uri()
    client.text_document_did_open(
        types.DidOpenTextDocumentParams(
            text_document=types.TextDocumentItem(
                uri=uri,
                language_id="mirror",
                version=version,
                text=path.read_text() if text is None else text,
            )
        )
    )
    return uri


def change_doc(client: LanguageClient, uri: str, text: str, version: int) -> None:
    """Replace the whole text of an open document."""
    client.text_document_did_change(
        types.DidChangeTextDocumentParams(
            text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=version),
            content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)],
        )
    )


async def diagnostics_until(
    client: LanguageClient,
    uri: str,
    done: Callable[[Sequence[types.Diagnostic]], bool],
) -> list[types.Diagnostic]:
    """Wait (with a deadline) until the diagnostics published for `uri` satisfy `done`."""

    async def wait() -> list[types.Diagnostic]:
        while True:
            if uri in client.diagnostics and done(client.diagnostics[uri]):
                return list(client.diagnostics[uri])
            await client.wait_for_notification(types.TEXT_DOCUMENT_PUBLISH_DIAGNOSTICS)

    return await asyncio.wait_for(wait(), DEADLINE_S)


def codes(diags: Sequence[types.Diagnostic]) -> list[str]:
    return sorted(str(d.code) for d in diags)


def at(text: str, needle: str, delta: int = 0) -> types.Position:
    """The position of the first `needle` in `text` (ASCII), moved `delta` characters."""
    offset = text.index(needle) + delta
    line = text.count("\n", 0, offset)
    return types.Position(line=line, character=offset - (text.rfind("\n", 0, offset) + 1))


def doc_id(uri: str) -> types.TextDocumentIdentifier:
    return types.TextDocumentIdentifier(uri=uri)


SERVER = "primary http://127.0.0.1:8081\n"
CANARIES = """\
canary v2 {
    server http://127.0.0.1:9002
    timeout 2s
}

canary v3 {
    server http://127.0.0.1:9003
}
"""
RULES = """\
mirror api {
    when path ^= "/api/"
    to v2, v3
}
"""


def write_rules(directory: Path) -> tuple[Path, Path, Path]:
    """A three-file configuration that passes check."""
    files = (
        directory / "00-server.mirror",
        directory / "10-canaries.mirror",
        directory / "20-rules.mirror",
    )
    for path, text in zip(files, (SERVER, CANARIES, RULES), strict=True):
        path.write_text(text)
    return files
