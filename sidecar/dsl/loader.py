"""PATHs -> one configuration: read, decode, parse, validate.

Files are taken in the order given; a directory means the `*.mirror` entries
directly inside it, in lexicographic order (like nginx's conf.d). A path that
does not exist is a usage error; a directory without rule files, an unreadable
file and invalid UTF-8 are diagnostics. Nothing here raises: an unexpected
exception while handling one file becomes an `internal-error` diagnostic.
"""

from __future__ import annotations

import hashlib
import os
import traceback
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from sidecar import diagnostics
from sidecar.diagnostics import Diagnostic, Span, sort
from sidecar.dsl import ast
from sidecar.dsl.parser import parse
from sidecar.dsl.validate import validate
from sidecar.model.config import Config, SourceFile

RULE_SUFFIX = ".mirror"
# A 1000-rule configuration is about 100 KB and parses in well under a second;
# LALR in pure Python does roughly 100-300 KB/s, so past this a file would stall
# `check` and every reload for many seconds. Bigger is a generator gone wrong.
MAX_FILE_BYTES = 1 << 20
_BOM = "\ufeff"


@dataclass(frozen=True, slots=True, kw_only=True)
class LoadResult:
    config: Config | None  # None iff any error-severity diagnostic (or a usage error)
    diagnostics: list[Diagnostic]  # sorted
    sources: dict[str, str]  # file name -> text, for diagnostics.render()
    files: list[str]  # files read, in configuration order
    usage_error: str | None = None  # e.g. a PATH that does not exist (check exits 2)

    def report(self, *, always: bool = False) -> str:
        """The diagnostics as `check` prints them (each with its source line and caret, in
        configuration order), then the summary line; "" when there are none, unless `always`.

        The one rendering of a load for check, explain, expect, serve, reload and demo."""
        if not self.diagnostics and not always:
            return ""
        summary = diagnostics.summary(self.diagnostics, len(self.files))
        if not self.diagnostics:
            return summary
        return f"{diagnostics.render_all(self.diagnostics, self.sources, self.files)}\n{summary}"


def _at(file: str, line: int = 1, column: int = 1) -> Span:
    return Span(file=file, line=line, column=column, end_line=line, end_column=column + 1)


def _error(file: str, code: str, message: str, line: int = 1, column: int = 1) -> Diagnostic:
    return Diagnostic(span=_at(file, line, column), severity="error", code=code, message=message)


def internal_error(file: str, exc: BaseException) -> Diagnostic:
    """A bug, reported as a diagnostic with the innermost frame rather than a traceback."""
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}" if frames else ""
    message = f"internal error{where}: {type(exc).__name__}: {exc} (please report this)"
    return _error(file, "internal-error", message)


def expand(
    paths: Sequence[str | os.PathLike[str]], present: Collection[str] = ()
) -> tuple[list[str], list[Diagnostic], str | None]:
    """The files of a configuration, diagnostics for empty directories, and any usage error.

    A path in `present` is a file even when it is not on disk (an editor's unsaved buffer)."""
    files: list[str] = []
    diags: list[Diagnostic] = []
    seen: set[str] = set()
    for raw in paths:
        path = os.fspath(raw)
        if path in present:  # an editor's buffer, saved or not
            candidates = [path]
        elif not os.path.lexists(path):
            return files, diags, f"no such file or directory: {path}"
        elif os.path.isdir(path):
            try:
                names = sorted(n for n in os.listdir(path) if n.endswith(RULE_SUFFIX))
            except OSError as exc:
                diags.append(
                    _error(path, "unreadable-file", f"cannot list directory: {exc.strerror}")
                )
                continue
            if not names:
                diags.append(
                    _error(path, "no-rule-files", f"no *{RULE_SUFFIX} files in directory {path}")
                )
            candidates = [os.path.join(path, n) for n in names]
        else:
            candidates = [path]
        for c in candidates:
            key = os.path.realpath(c)
            if key not in seen:  # `check rules/ rules/a.mirror` reads a.mirror once
                seen.add(key)
                files.append(c)
    return files, diags, None


def _decode(name: str, data: bytes) -> tuple[str, Diagnostic | None]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        line_start = data.rfind(b"\n", 0, exc.start) + 1
        column = len(data[line_start : exc.start].decode("utf-8", "replace")) + 1
        message = f"file is not valid UTF-8 (byte 0x{data[exc.start]:02x} at offset {exc.start})"
        return data.decode("utf-8", "replace"), _error(name, "invalid-utf8", message, line, column)
    return text.removeprefix(_BOM), None


def _too_large(name: str, size: int) -> Diagnostic:
    message = f"file is {size:,} bytes; rule files are limited to {MAX_FILE_BYTES:,} bytes"
    return _error(name, "file-too-large", message)


def read_rule_file(name: str) -> tuple[str | None, bytes, Diagnostic | None]:
    """(text, bytes, None), or with the diagnostic of an unreadable, too large or not
    UTF-8 file (then the text, if any, is only for the caret line). `check` and `fmt`."""
    try:
        data = Path(name).read_bytes()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return None, b"", _error(name, "unreadable-file", f"cannot read {name}: {reason}")
    if len(data) > MAX_FILE_BYTES:
        return None, data, _too_large(name, len(data))
    text, problem = _decode(name, data)
    return text, data, problem


class ParseCache:
    """The last parse of each file name, reused while its text is unchanged.

    An editor re-checks a whole directory after each keystroke in one of its files
    (`sidecar lsp`): only the edited file is parsed again, the rest is validation.
    It holds one entry per file name, the newest, and `retain` drops the others.
    """

    def __init__(self) -> None:
        self._entries: dict[str, tuple[str, ast.File | None, list[Diagnostic]]] = {}

    def parse(self, text: str, name: str) -> tuple[ast.File | None, list[Diagnostic]]:
        hit = self._entries.get(name)
        if hit is not None and hit[0] == text:
            return hit[1], list(hit[2])
        tree, errors = parse(text, name)
        self._entries[name] = (text, tree, errors)
        return tree, list(errors)

    def retain(self, names: Collection[str]) -> None:
        """Forget every file not in `names` (closed, deleted or renamed)."""
        for name in [n for n in self._entries if n not in names]:
            del self._entries[name]


def _buffer(name: str, text: str) -> tuple[str | None, bytes, Diagnostic | None]:
    """An unsaved buffer as `read_rule_file` would read it, its size limit included."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) > MAX_FILE_BYTES:
        return None, data, _too_large(name, len(data))
    return text, data, None


def load(
    paths: Sequence[str | os.PathLike[str]],
    *,
    buffers: Mapping[str, str] | None = None,
    cache: ParseCache | None = None,
) -> LoadResult:
    """Load, parse and validate the configuration formed by `paths`. Never raises.

    `buffers` (file name -> text) are read instead of the files of those names, which
    need not exist on disk: an editor's open documents. `cache` keeps the parse of files
    whose text has not changed since the last load that used it."""
    buffers = buffers or {}
    files, diags, usage = expand(paths, present=buffers)
    if usage is not None:
        return LoadResult(
            config=None, diagnostics=sort(diags), sources={}, files=[], usage_error=usage
        )
    texts: list[tuple[str, str | None, bytes]] = []
    for name in files:
        text: str | None
        if name in buffers:
            text, data, problem = _buffer(name, buffers[name])
        else:
            text, data, problem = read_rule_file(name)
        if problem is not None:
            diags.append(problem)
        texts.append((name, text, data))
    bad = {d.span.file for d in diags}
    return _finish(texts, diags, files, bad, cache)


def loads(text: str, filename: str = "<string>") -> LoadResult:
    """One in-memory file (tests, tools). Never raises."""
    return _finish([(filename, text, text.encode("utf-8", "surrogatepass"))], [], [filename], set())


def _finish(
    texts: list[tuple[str, str | None, bytes]],
    diags: list[Diagnostic],
    files: list[str],
    bad: set[str],
    cache: ParseCache | None = None,
) -> LoadResult:
    parsed: list[ast.File] = []
    sources: dict[str, str] = {}
    complete = not bad
    for name, text, _ in texts:
        if text is None:
            continue
        sources[name] = text
        if name in bad:
            continue
        try:
            tree, errors = parse(text, name) if cache is None else cache.parse(text, name)
        except Exception as exc:  # the edge for parser bugs: report, do not crash
            tree, errors = None, [internal_error(name, exc)]
        diags.extend(errors)
        if tree is None:
            complete = False
        else:
            parsed.append(tree)
    digests = [SourceFile(path=n, sha256=hashlib.sha256(data).hexdigest()) for n, _, data in texts]
    # The configuration's hash: sha256 of the sources' bytes in configuration order (for
    # one file, that file's sha256sum).
    whole = hashlib.sha256()
    for _, _, data in texts:
        whole.update(data)
    config: Config | None = None
    try:
        config, problems = validate(
            parsed, sources=digests, sha256=whole.hexdigest(), complete=complete
        )
    except Exception as exc:
        problems = [internal_error(files[0] if files else "<config>", exc)]
    diags.extend(problems)
    if any(d.severity == "error" for d in diags):
        config = None
    return LoadResult(config=config, diagnostics=sort(diags, files), sources=sources, files=files)
