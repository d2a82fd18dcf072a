"""Validation of a canary's `compare` block into a `CompareSpec`, and of `diff_log`.

`check_compare` reports every problem of one block, each at the offending
statement or string, and builds the spec only when there is none. What needs
every canary (the baseline exists and has no baseline of its own; each rule
that sends to a compared canary also sends to its baseline) is
`check_baselines`, run by the validator over the whole configuration.
`check_diff_log` resolves the path at load time: relative to the directory of
the rule file that names it, whose directory must exist.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence

from sidecar.diagnostics import Span
from sidecar.dsl import ast, units, values
from sidecar.dsl.report import Report
from sidecar.model.compare import (
    DEFAULT_MAX_BODY_BYTES,
    CompareSpec,
    CompareSpecError,
    jsonpath_problem,
)

DIFF_LOG_STDERR = "stderr"
_SINGLE: dict[type, str] = {
    ast.CompareStatus: "status",
    ast.CompareHeader: "header",
    ast.CompareBody: "body",
    ast.CompareIgnore: "ignore",
    ast.MaxBody: "max_body",
    ast.CompareSample: "sample",
    ast.CompareBaseline: "baseline",
}


def _errors(r: Report) -> int:
    return sum(1 for d in r.diagnostics if d.severity == "error")


def _keyword_span(span: Span, keyword: str) -> Span:
    """The span of the keyword a statement starts with."""
    return Span(
        file=span.file,
        line=span.line,
        column=span.column,
        end_line=span.line,
        end_column=span.column + len(keyword),
    )


def check_compare(canary: ast.Name, node: ast.Compare, r: Report) -> CompareSpec | None:
    """Report every problem of the block; build its spec only if there were none."""
    before = _errors(r)
    seen: dict[str, Span] = {}
    status = False
    headers: tuple[str, ...] = ()
    body: ast.CompareBody | None = None
    ignore: ast.CompareIgnore | None = None
    max_body: int | None = None
    sample = 1.0
    baseline: str | None = None
    for st in node.statements:
        keyword = _SINGLE[type(st)]
        if not r.once(keyword, st.span, seen.get(keyword)):
            continue
        seen[keyword] = st.span
        if isinstance(st, ast.CompareStatus):
            status = True
        elif isinstance(st, ast.CompareHeader):
            for name in st.names:
                r.check("invalid-header-name", name.span, values.header_name_problem(name.value))
            _unique(st.names, str.lower, "header", r)
            headers = tuple(n.value for n in st.names)
        elif isinstance(st, ast.CompareBody):
            body = st
        elif isinstance(st, ast.CompareIgnore):
            for path in st.paths:
                r.check("invalid-jsonpath", path.span, jsonpath_problem(path.value))
            _unique(st.paths, str, "ignore path", r)
            ignore = st
        elif isinstance(st, ast.MaxBody):
            max_body = _max_body(st.size, r)
        elif isinstance(st, ast.CompareSample):
            sample = _sample(st.rate, r)
        else:
            baseline = st.name.value
            if baseline == canary.value:
                r.error(
                    "self-baseline",
                    st.name.span,
                    f'canary "{baseline}" cannot be its own baseline: name another canary that runs the primary\'s version',
                )
    if not (status or headers or body is not None):
        r.error(
            "empty-compare",
            _keyword_span(node.span, "compare"),
            "`compare` compares nothing: give at least one of `status`, `header`, `body`",
        )
    if ignore is not None and (body is None or body.mode != "json"):
        written = "no `body`" if body is None else "`body bytes`"
        r.error(
            "ignore-without-json",
            _keyword_span(ignore.span, "ignore"),
            f"`ignore` needs `body json` (this block has {written}): paths select parts of JSON bodies",
        )
    if _errors(r) > before:
        return None
    try:
        return CompareSpec(
            status=status,
            headers=headers,
            body=None if body is None else body.mode,
            ignore=() if ignore is None else tuple(p.value for p in ignore.paths),
            max_body_bytes=DEFAULT_MAX_BODY_BYTES if max_body is None else max_body,
            sample_rate=sample,
            baseline=baseline,
        )
    except CompareSpecError as exc:  # a check above missed something: report, do not raise
        r.error("internal-error", node.span, f"internal error: compare block: {exc}")
        return None


def _unique(items: Sequence[ast.Str], key: Callable[[str], str], what: str, r: Report) -> None:
    first: dict[str, ast.Str] = {}
    for item in items:
        k = key(item.value)
        if k in first:
            r.error(
                "duplicate-entry",
                item.span,
                f'{what} "{item.value}" is already listed at {first[k].span.where}',
            )
        else:
            first[k] = item


def _max_body(size: ast.Size, r: Report) -> int | None:
    if size.bytes is None:
        r.error("invalid-size", size.span, units.size_problem(size.raw))
        return None
    if size.bytes <= 0:
        r.error(
            "invalid-size",
            size.span,
            f'compare max_body "{size.raw}" must be greater than zero; to compare no bodies, remove `body`',
        )
        return None
    return size.bytes


def _sample(rate: ast.Ratio, r: Report) -> float:
    value = rate.value
    if value is None or not 0.0 < value <= 1.0:
        hint = ""
        if value is not None and 1.0 < value <= 100.0 and "%" not in rate.raw:
            hint = f" (did you mean {rate.raw}%?)"
        r.error(
            "sample-out-of-range",
            rate.span,
            f"compare sample {rate.raw} is outside (0%, 100%]{hint}; to compare nothing, remove the compare block",
        )
        return 1.0
    return value


# --- across canaries ---------------------------------------------------------------------


def baseline_of(canary: ast.Canary) -> ast.CompareBaseline | None:
    """The (first) `baseline` of the canary's (first) `compare` block, if any."""
    block = next((s for s in canary.statements if isinstance(s, ast.Compare)), None)
    if block is None:
        return None
    return next((s for s in block.statements if isinstance(s, ast.CompareBaseline)), None)


def check_baselines(
    canaries: Mapping[str, ast.Canary],
    rules: Sequence[ast.MirrorRule],
    r: Report,
    did_you_mean: Callable[[str, Sequence[str]], str | None],
) -> None:
    """Baselines name known canaries without a baseline of their own; rules send to both."""
    names = list(canaries)
    baselines: dict[str, str] = {}  # compared canary -> its (known, other) baseline
    for name, canary in canaries.items():
        node = baseline_of(canary)
        if node is None or node.name.value == name:
            continue  # a self-baseline has its own diagnostic
        target = node.name.value
        if target not in canaries:
            close = did_you_mean(target, names)
            hint = f' (did you mean "{close}"?)' if close else ""
            r.error("unknown-canary", node.name.span, f'unknown canary "{target}"{hint}')
            continue
        chained = baseline_of(canaries[target])
        if chained is not None:
            r.error(
                "baseline-chain",
                node.name.span,
                f'canary "{target}" cannot be a baseline: it has a baseline of its own '
                f'("{chained.name.value}" at {chained.name.span.where}); a baseline runs the '
                "primary's version and is compared with the primary alone",
            )
            continue
        baselines[name] = target
    for rule in rules:
        to = next((s for s in rule.statements if isinstance(s, ast.To)), None)
        if to is None:
            continue
        sent = {t.value for t in to.canaries}
        for dest in to.canaries:
            baseline = baselines.get(dest.value)
            if baseline is not None and baseline not in sent:
                r.warning(
                    "baseline-not-sent",
                    dest.span,
                    f'mirror rule "{rule.name.value}" sends to "{dest.value}" but not to its '
                    f'baseline "{baseline}", so noise cannot be removed for its requests '
                    f'(unless another rule sends them to "{baseline}")',
                )


# --- diff_log -------------------------------------------------------------------------------


def check_diff_log(node: ast.DiffLog, r: Report) -> str | None:
    """ "stderr", or the absolute path of the file (None when there is an error).

    A relative path is relative to the directory of the rule file that names it; the
    file need not exist, its directory must.
    """
    if node.path is None:
        return DIFF_LOG_STDERR
    raw = node.path.value
    where = node.path.span
    if not raw or "\0" in raw:
        r.error("invalid-diff-log", where, "`diff_log` needs a file name (without NUL characters)")
        return None
    base = os.path.dirname(node.span.file)
    path = os.path.abspath(os.path.join(base, raw))
    if raw.endswith(("/", os.sep)) or os.path.isdir(path):
        r.error(
            "invalid-diff-log",
            where,
            f'"{raw}" is a directory: `diff_log` names a file, such as "{raw.rstrip("/")}/diffs.jsonl"',
        )
        return None
    if not os.path.isdir(os.path.dirname(path)):
        shown = os.path.normpath(os.path.join(base, os.path.dirname(raw) or "."))
        relative = (
            "" if os.path.isabs(raw) else " (a relative path starts at the rule file's directory)"
        )
        r.error(
            "invalid-diff-log",
            where,
            f'directory "{shown}" does not exist{relative}',
        )
        return None
    return path
