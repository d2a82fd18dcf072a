"""The pygls language server: each LSP request and the function that answers it.

Everything runs on pygls's one event loop thread. Text changes only mark the
document's group for the `Checker`, which publishes diagnostics to every open
document of the group after the check; requests (completion, hover, ...) read
the documents as they are at that moment. A handler that meets a bug answers
with an error (pygls turns the exception into a JSON-RPC error) and the server
goes on.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version

from lsprotocol import types
from pygls.exceptions import JsonRpcInvalidParams
from pygls.lsp.server import LanguageServer

from sidecar.diagnostics import Diagnostic
from sidecar.dsl.loader import MAX_FILE_BYTES
from sidecar.tools.fmt import format_text
from sidecar.tools.lsp import assist, navigation
from sidecar.tools.lsp.checker import Checker
from sidecar.tools.lsp.positions import Lines
from sidecar.tools.lsp.project import Document, Project, Source, path_of, uri_of


def _version() -> str:
    try:
        return package_version("sidecar")
    except PackageNotFoundError:  # running from a checkout that is not installed
        return "0"


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")  # the grammar's NAME terminal


class MirrorServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__(
            "sidecar-lsp",
            _version(),
            text_document_sync_kind=types.TextDocumentSyncKind.Incremental,
        )
        self.project = Project()
        self.checker = Checker(self.publish)
        self._checker_task: asyncio.Task[None] | None = None

    # --- helpers

    def encoding(self) -> str:
        return str(self.workspace.position_encoding or "utf-16")

    def lines(self, text: str) -> Lines:
        return Lines(text, self.encoding())

    def document(self, uri: str) -> Document:
        doc = self.project.documents.get(uri)
        if doc is None:
            raise JsonRpcInvalidParams(f"the document {uri} is not open")
        if len(doc.text) > MAX_FILE_BYTES:  # in characters: at least as many bytes
            # A file `check` refuses (file-too-large, in its diagnostics) is not parsed per request.
            raise JsonRpcInvalidParams(f"{doc.name} is larger than {MAX_FILE_BYTES:,} bytes")
        return doc

    def sync(self, uri: str, version: int | None) -> Document:
        """Take the document's text from pygls's workspace (which applied the change)."""
        text = self.workspace.get_text_document(uri).source
        doc = self.project.change(uri, text, version)
        return doc if doc is not None else self.project.open(uri, text, version)

    def start_checker(self) -> None:
        if self._checker_task is None:
            self._checker_task = asyncio.get_running_loop().create_task(self.checker.run())

    def publish(self, group: str) -> None:
        """Check a group and send each of its open documents its diagnostics."""
        result = self.project.check(group)  # never raises (the checker logs it if it does)
        by_file: dict[str, list[Diagnostic]] = {}
        for d in result.diagnostics:
            by_file.setdefault(d.span.file, []).append(d)
        for doc in self.project.open_in(group):
            lines = self.lines(doc.text)
            self.text_document_publish_diagnostics(
                types.PublishDiagnosticsParams(
                    uri=doc.uri,
                    version=doc.version,
                    diagnostics=[_diagnostic(d, lines) for d in by_file.get(doc.name, [])],
                )
            )

    def sources(self, doc: Document) -> list[Source]:
        return list(self.project.sources(doc.group))


def _diagnostic(d: Diagnostic, lines: Lines) -> types.Diagnostic:
    return types.Diagnostic(
        range=lines.range(d.span),
        severity=types.DiagnosticSeverity.Error
        if d.severity == "error"
        else types.DiagnosticSeverity.Warning,
        code=d.code,
        source="sidecar",
        message=d.message,
    )


server = MirrorServer()


# --- documents ---------------------------------------------------------------------


@server.feature(types.INITIALIZED)
def initialized(ls: MirrorServer, params: types.InitializedParams) -> None:
    ls.start_checker()


@server.feature(types.TEXT_DOCUMENT_DID_OPEN)
def did_open(ls: MirrorServer, params: types.DidOpenTextDocumentParams) -> None:
    ls.start_checker()
    item = params.text_document
    doc = ls.project.open(item.uri, item.text, item.version)
    ls.checker.touch(doc.group)


@server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
def did_change(ls: MirrorServer, params: types.DidChangeTextDocumentParams) -> None:
    doc = ls.sync(params.text_document.uri, params.text_document.version)
    ls.checker.touch(doc.group)


@server.feature(types.TEXT_DOCUMENT_DID_SAVE)
def did_save(ls: MirrorServer, params: types.DidSaveTextDocumentParams) -> None:
    doc = ls.project.documents.get(params.text_document.uri)
    if doc is not None:
        ls.checker.touch(doc.group)


@server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
def did_close(ls: MirrorServer, params: types.DidCloseTextDocumentParams) -> None:
    doc = ls.project.close(params.text_document.uri)
    if doc is None:
        return
    # Its diagnostics go; its group is checked again with the file on disk instead.
    ls.text_document_publish_diagnostics(
        types.PublishDiagnosticsParams(uri=doc.uri, diagnostics=[])
    )
    if ls.project.open_in(doc.group):
        ls.checker.touch(doc.group)


@server.feature(types.WORKSPACE_DID_CHANGE_WATCHED_FILES)
def did_change_files(ls: MirrorServer, params: types.DidChangeWatchedFilesParams) -> None:
    """A `.mirror` file changed on disk (a checkout, another editor): re-check its group."""
    groups = {d.group for d in ls.project.documents.values()}
    for change in params.changes:
        path = path_of(change.uri)
        if path is not None and os.path.dirname(path) in groups:
            ls.checker.touch(os.path.dirname(path))


# --- assistance ------------------------------------------------------------------------


def _canaries(
    doc: Document, sources: list[Source], every: list[navigation.Occurrence]
) -> dict[str, assist.CanaryInfo]:
    """The group's canaries; the document's own even while it does not parse."""
    out: dict[str, assist.CanaryInfo] = {}
    texts = {s.name: s.text for s in sources}
    for o in every:
        if o.definition and o.block is not None and o.name not in out:
            text = texts.get(o.span.file) or ""
            lines = text.split("\n")[o.block.line - 1 : o.block.end_line]
            out[o.name] = assist.CanaryInfo(
                name=o.name, where=f"{o.span.file}:{o.span.line}", block="\n".join(lines)
            )
    if any(s.name == doc.name and s.tree is None for s in sources):
        for name, line in navigation.defined_while_broken(doc.text):
            if name not in out:
                block = doc.text.split("\n")[line - 1]
                out[name] = assist.CanaryInfo(name=name, where=f"{doc.name}:{line}", block=block)
    return out


@server.feature(types.TEXT_DOCUMENT_COMPLETION, types.CompletionOptions(trigger_characters=[" "]))
def completion(ls: MirrorServer, params: types.CompletionParams) -> types.CompletionList:
    doc = ls.document(params.text_document.uri)
    lines = ls.lines(doc.text)
    offset = lines.offset(params.position)
    sources = ls.sources(doc)
    canaries = _canaries(doc, sources, navigation.occurrences(sources))
    context = params.context
    after_space = context is not None and context.trigger_character == " "
    items = assist.completions(doc.text, offset, canaries, lines, after_space=after_space)
    return types.CompletionList(is_incomplete=False, items=items)


@server.feature(types.TEXT_DOCUMENT_HOVER)
def hover(ls: MirrorServer, params: types.HoverParams) -> types.Hover | None:
    at = _lookup(ls, params.text_document.uri, params.position)
    lines = ls.lines(at.doc.text)
    canary = None
    if at.found is not None:
        canary = _canaries(at.doc, at.sources, at.every).get(at.found.name)
    return assist.hover(at.doc.text, lines.offset(params.position), canary, lines)


# --- navigation ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Lookup:
    """A position's document, its group's files now, every canary occurrence in them,
    and the occurrence under the position (if any)."""

    doc: Document
    sources: list[Source]
    every: list[navigation.Occurrence]
    found: navigation.Occurrence | None


def _lookup(ls: MirrorServer, uri: str, position: types.Position) -> _Lookup:
    doc = ls.document(uri)
    offset = ls.lines(doc.text).offset(position)
    before = doc.text[:offset]
    line = before.count("\n") + 1
    column = offset - (before.rfind("\n") + 1) + 1
    sources = ls.sources(doc)
    every = navigation.occurrences(sources)
    found = navigation.at(every, doc.name, line, column)
    return _Lookup(doc=doc, sources=sources, every=every, found=found)


def _location(ls: MirrorServer, o: navigation.Occurrence) -> types.Location:
    text = ls.project.text_of(o.span.file) or ""
    open_doc = ls.project.by_name(o.span.file)
    uri = open_doc.uri if open_doc is not None else uri_of(o.span.file)
    return types.Location(uri=uri, range=ls.lines(text).range(o.span))


@server.feature(types.TEXT_DOCUMENT_DEFINITION)
def definition(ls: MirrorServer, params: types.DefinitionParams) -> list[types.Location]:
    at = _lookup(ls, params.text_document.uri, params.position)
    if at.found is None:
        return []
    name = at.found.name
    return [_location(ls, o) for o in at.every if o.definition and o.name == name]


@server.feature(types.TEXT_DOCUMENT_REFERENCES)
def references(ls: MirrorServer, params: types.ReferenceParams) -> list[types.Location]:
    at = _lookup(ls, params.text_document.uri, params.position)
    if at.found is None:
        return []
    declarations = params.context.include_declaration
    return [
        _location(ls, o)
        for o in at.every
        if o.name == at.found.name and (declarations or not o.definition)
    ]


@server.feature(types.TEXT_DOCUMENT_PREPARE_RENAME)
def prepare_rename(ls: MirrorServer, params: types.PrepareRenameParams) -> types.Range | None:
    at = _lookup(ls, params.text_document.uri, params.position)
    return None if at.found is None else ls.lines(at.doc.text).range(at.found.span)


@server.feature(types.TEXT_DOCUMENT_RENAME, types.RenameOptions(prepare_provider=True))
def rename(ls: MirrorServer, params: types.RenameParams) -> types.WorkspaceEdit | None:
    at = _lookup(ls, params.text_document.uri, params.position)
    if at.found is None:
        return None
    old, new = at.found.name, params.new_name
    if not _NAME.match(new):
        raise JsonRpcInvalidParams(
            f"{new!r} is not a canary name: a letter or _, then letters, digits, _ or -"
        )
    broken = [s for s in at.sources if s.tree is None]
    if broken:
        first = broken[0]
        where = (
            f"{first.errors[0].span.file}:{first.errors[0].span.line}"
            if first.errors
            else first.name
        )
        raise JsonRpcInvalidParams(
            f"not renamed: {where} has an error, so its uses of {old!r} cannot be found"
        )
    if new != old and any(o.definition and o.name == new for o in at.every):
        raise JsonRpcInvalidParams(f"not renamed: a canary named {new!r} already exists")
    changes: dict[str, list[types.TextEdit]] = {}
    for o in at.every:
        if o.name == old:
            loc = _location(ls, o)
            changes.setdefault(loc.uri, []).append(types.TextEdit(range=loc.range, new_text=new))
    return types.WorkspaceEdit(changes=changes)


@server.feature(types.TEXT_DOCUMENT_DOCUMENT_SYMBOL)
def document_symbol(
    ls: MirrorServer, params: types.DocumentSymbolParams
) -> Sequence[types.DocumentSymbol]:
    doc = ls.document(params.text_document.uri)
    tree, _errors = ls.project.cache.parse(doc.text, doc.name)
    return [] if tree is None else navigation.symbols(tree, ls.lines(doc.text))


@server.feature(types.TEXT_DOCUMENT_FORMATTING)
def formatting(
    ls: MirrorServer, params: types.DocumentFormattingParams
) -> list[types.TextEdit] | None:
    """`sidecar fmt`'s layout; a document with a syntax error is left as it is (None)."""
    doc = ls.document(params.text_document.uri)
    formatted, _diags = format_text(doc.text, doc.name)
    if formatted is None:
        return None
    if formatted == doc.text:
        return []
    return [types.TextEdit(range=ls.lines(doc.text).whole(), new_text=formatted)]
