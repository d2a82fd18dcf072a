"""The documents an editor has open, and the configurations they belong to.

A document is checked as `sidecar check DIR` would check its directory: with
every `*.mirror` file of that directory, in name order, where an open document's
unsaved text wins over its file on disk (and a new, never saved `.mirror`
document counts too). Such a directory is a *group*; a document that is not a
`.mirror` file on disk (an untitled buffer, another extension) is a group of
its own. One `ParseCache` serves every check, so a keystroke re-parses only the
file it changed.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from sidecar.diagnostics import Diagnostic
from sidecar.dsl import ast
from sidecar.dsl.loader import RULE_SUFFIX, LoadResult, ParseCache, load, read_rule_file


@dataclass(slots=True, kw_only=True)
class Document:
    uri: str
    name: str  # the file name diagnostics carry: the path, or the URI if it has none
    group: str
    text: str
    version: int | None


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """One file of a group as it is now: its text (None if unreadable) and parse."""

    name: str
    text: str | None
    tree: ast.File | None
    errors: list[Diagnostic]


def path_of(uri: str) -> str | None:
    """The local path of a `file:` URI, else None."""
    parsed = urlparse(uri)
    if parsed.scheme != "file":
        return None
    path = unquote(parsed.path)
    if os.name == "nt" and path.startswith("/") and path[2:3] == ":":  # pragma: no cover
        path = path[1:]
    return os.path.normpath(path)


def uri_of(path: str) -> str:
    return Path(path).absolute().as_uri()


class Project:
    """Open documents by URI, their groups, and the checks of those groups."""

    def __init__(self) -> None:
        self.documents: dict[str, Document] = {}
        self.cache = ParseCache()

    # --- documents

    def open(self, uri: str, text: str, version: int | None) -> Document:
        path = path_of(uri)
        if path is not None and path.endswith(RULE_SUFFIX):
            name, group = path, os.path.dirname(path)
        else:
            name, group = path or uri, uri
        doc = Document(uri=uri, name=name, group=group, text=text, version=version)
        self.documents[uri] = doc
        return doc

    def change(self, uri: str, text: str, version: int | None) -> Document | None:
        doc = self.documents.get(uri)
        if doc is not None:
            doc.text, doc.version = text, version
        return doc

    def close(self, uri: str) -> Document | None:
        return self.documents.pop(uri, None)

    def open_in(self, group: str) -> list[Document]:
        return [d for d in self.documents.values() if d.group == group]

    def by_name(self, name: str) -> Document | None:
        return next((d for d in self.documents.values() if d.name == name), None)

    # --- groups

    def files(self, group: str) -> list[str]:
        """The files of a group, in configuration order."""
        docs = self.open_in(group)
        if not os.path.isabs(group):  # a group of one document (its URI)
            return [d.name for d in docs]
        names = {d.name for d in docs}
        with contextlib.suppress(OSError):  # a directory gone: its open documents still count
            names.update(
                os.path.join(group, n) for n in os.listdir(group) if n.endswith(RULE_SUFFIX)
            )
        return sorted(names, key=os.path.basename)

    def check(self, group: str) -> LoadResult:
        """The group's configuration checked as `sidecar check` checks it."""
        buffers = {d.name: d.text for d in self.open_in(group)}
        files = self.files(group)
        result = load(files, buffers=buffers, cache=self.cache)
        self._retain()
        return result

    def sources(self, group: str) -> Iterator[Source]:
        """Every file of the group as it is now, parsed (through the cache)."""
        buffers = {d.name: d.text for d in self.open_in(group)}
        for name in self.files(group):
            text = buffers.get(name)
            if text is None:
                text, _data, problem = read_rule_file(name)
                if problem is not None:
                    yield Source(name=name, text=None, tree=None, errors=[problem])
                    continue
            assert text is not None
            tree, errors = self.cache.parse(text, name)
            yield Source(name=name, text=text, tree=tree, errors=errors)

    def _retain(self) -> None:
        keep = {name for g in {d.group for d in self.documents.values()} for name in self.files(g)}
        self.cache.retain(keep)

    def text_of(self, name: str) -> str | None:
        """A file's text: the open document's, else the file on disk's."""
        doc = self.by_name(name)
        if doc is not None:
            return doc.text
        text, _data, problem = read_rule_file(name)
        return None if problem is not None else text
