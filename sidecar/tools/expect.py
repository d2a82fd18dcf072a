"""Route test cases for `sidecar check --expect CASES`.

A cases file is a YAML list of mappings: `name`, `request` ("METHOD /path?query"),
optional `headers` (a mapping; a list value repeats the header), optional
`client` (default 127.0.0.1) and `expect` (the set of canaries). The file is
read through yaml's composer, not its constructor, so every node keeps its
position: a file that is not YAML or not a list is one `Diagnostic` pointing at
the offending node (`case-syntax` for YAML, `invalid-case` for the shape) and no
case runs; a malformed case is a `BadCase` carrying its `invalid-case`
diagnostic, which fails on its own while the other cases run. Scalars are taken
as the text written (`X-User-Id: 42` is the string "42").

Running a case is `explain` on a table compiled with a random source that
always samples in; keyed sampling is computed exactly. A canary in `expect`
that the configuration lacks makes that case fail with an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from sidecar.diagnostics import Diagnostic, Span, render
from sidecar.routing.table import RoutingTable
from sidecar.tools.explain import (
    DEFAULT_CLIENT,
    Explanation,
    RequestTextError,
    explain,
    parse_client,
    parse_header,
    parse_request,
    request_view,
)
from sidecar.tools.explain import to_json as explain_json
from sidecar.tools.explain import to_text as explain_text

_KEYS = ("name", "request", "headers", "client", "expect")


class CaseFileError(Exception):
    """The cases file is not valid; `diagnostic` says where and why."""

    def __init__(self, diagnostic: Diagnostic) -> None:
        super().__init__(diagnostic.headline())
        self.diagnostic = diagnostic


@dataclass(frozen=True, slots=True, kw_only=True)
class Case:
    name: str
    request: str
    headers: tuple[str, ...]  # "Name: value", in the order written
    client: str
    expect: frozenset[str]
    where: str  # file:line of the case


@dataclass(frozen=True, slots=True, kw_only=True)
class BadCase:
    """A case that is not well-formed: it fails with `diagnostic`; the others still run."""

    name: str  # its `name` when that is readable, else "case N" (1-based)
    where: str  # file:line of the case
    diagnostic: Diagnostic
    expect: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class CaseResult:
    case: Case | BadCase
    actual: tuple[str, ...]  # canaries, in the order the table chose them
    errors: tuple[str, ...]  # e.g. an unknown canary in `expect`
    explanation: Explanation | None  # None for a BadCase: nothing was explained

    @property
    def passed(self) -> bool:
        if isinstance(self.case, BadCase):
            return False
        return not self.errors and frozenset(self.actual) == self.case.expect


def _fail(
    filename: str, node: yaml.Node | yaml.Mark | None, code: str, message: str
) -> CaseFileError:
    mark = node.start_mark if isinstance(node, yaml.Node) else node
    line, column = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    span = Span(file=filename, line=line, column=column, end_line=line, end_column=column + 1)
    return CaseFileError(Diagnostic(span=span, severity="error", code=code, message=message))


def _scalar(filename: str, node: yaml.Node, what: str) -> str:
    if not isinstance(node, yaml.ScalarNode):
        raise _fail(filename, node, "invalid-case", f"{what} must be a single value")
    return str(node.value)


def load_cases(text: str, filename: str) -> list[Case | BadCase]:
    """Parse a cases file: each case well-formed (`Case`) or not (`BadCase`).

    Raises CaseFileError (one positioned diagnostic) only when the file as a whole is
    not valid: not YAML, or not a list.
    """
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        raise _fail(
            filename, exc.problem_mark, "case-syntax", f"invalid YAML: {exc.problem}"
        ) from None
    except yaml.YAMLError as exc:
        raise _fail(filename, None, "case-syntax", f"invalid YAML: {exc}") from None
    if root is None:  # an empty (or comment-only) file: no cases, nothing fails
        return []
    if not isinstance(root, yaml.SequenceNode):
        raise _fail(filename, root, "invalid-case", "the cases file must be a YAML list of cases")
    cases: list[Case | BadCase] = []
    seen: set[str] = set()
    for number, item in enumerate(root.value, start=1):
        where = f"{filename}:{item.start_mark.line + 1}"
        try:
            case = _case(filename, item)
            if case.name in seen:
                raise _fail(filename, item, "invalid-case", f"duplicate case name {case.name!r}")
        except CaseFileError as exc:
            name = _name_of(item) or f"case {number}"
            cases.append(BadCase(name=name, where=where, diagnostic=exc.diagnostic))
            continue
        seen.add(case.name)
        cases.append(case)
    return cases


def _name_of(node: yaml.Node) -> str | None:
    """The `name` of a (possibly malformed) case, when it has a readable one."""
    if not isinstance(node, yaml.MappingNode):
        return None
    for key_node, value_node in node.value:
        if (
            isinstance(key_node, yaml.ScalarNode)
            and key_node.value == "name"
            and isinstance(value_node, yaml.ScalarNode)
        ):
            return str(value_node.value)
    return None


def _case(filename: str, node: yaml.Node) -> Case:
    if not isinstance(node, yaml.MappingNode):
        raise _fail(
            filename, node, "invalid-case", "a case must be a mapping with name, request and expect"
        )
    fields: dict[str, yaml.Node] = {}
    for key_node, value_node in node.value:
        key = _scalar(filename, key_node, "a key")
        if key not in _KEYS:
            raise _fail(
                filename,
                key_node,
                "invalid-case",
                f"unknown key {key!r} (allowed: {', '.join(_KEYS)})",
            )
        if key in fields:
            raise _fail(filename, key_node, "invalid-case", f"repeated key {key!r}")
        fields[key] = value_node
    for required in ("name", "request", "expect"):
        if required not in fields:
            raise _fail(filename, node, "invalid-case", f"case has no {required!r}")
    headers = _headers(filename, fields.get("headers"))
    request = _checked(filename, fields["request"], "request", parse_request)
    client = DEFAULT_CLIENT
    if "client" in fields:
        client = _checked(filename, fields["client"], "client", parse_client)
    expect = fields["expect"]
    if not isinstance(expect, yaml.SequenceNode):
        raise _fail(
            filename, expect, "invalid-case", "expect must be a list of canary names ([] for none)"
        )
    return Case(
        name=_scalar(filename, fields["name"], "name"),
        request=request,
        headers=headers,
        client=client,
        expect=frozenset(_scalar(filename, n, "a canary name") for n in expect.value),
        where=f"{filename}:{node.start_mark.line + 1}",
    )


def _headers(filename: str, node: yaml.Node | None) -> tuple[str, ...]:
    if node is None or (isinstance(node, yaml.ScalarNode) and node.tag.endswith(":null")):
        return ()
    if not isinstance(node, yaml.MappingNode):
        raise _fail(filename, node, "invalid-case", "headers must be a mapping of name to value")
    out: list[str] = []
    for key_node, value_node in node.value:
        name = _scalar(filename, key_node, "a header name")
        values = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
        for v in values:
            header = f"{name}: {_scalar(filename, v, 'a header value')}"
            try:
                parse_header(header)
            except RequestTextError as exc:
                raise _fail(filename, key_node, "invalid-case", str(exc)) from None
            out.append(header)
    return tuple(out)


def _checked(filename: str, node: yaml.Node, what: str, check: Callable[[str], object]) -> str:
    """The scalar's text, after `check` (a parse_* function) accepted it."""
    text = _scalar(filename, node, what)
    try:
        check(text)
    except RequestTextError as exc:
        raise _fail(filename, node, "invalid-case", str(exc)) from None
    return text


def run_case(table: RoutingTable, case: Case | BadCase) -> CaseResult:
    """`explain` the case's request; `table` must be compiled with an always-in random source."""
    if isinstance(case, BadCase):
        return CaseResult(case=case, actual=(), errors=(case.diagnostic.message,), explanation=None)
    e = explain(table, request_view(case.request, case.headers, case.client))
    unknown = sorted(case.expect - set(table.canaries))
    errors = tuple(f"unknown canary {name!r} in expect" for name in unknown)
    actual = tuple(a.canary for a in e.canaries)
    return CaseResult(case=case, actual=actual, errors=errors, explanation=e)


def summary(results: Sequence[CaseResult]) -> str:
    passed = sum(r.passed for r in results)
    return f"{passed} passed, {len(results) - passed} failed"


def to_text(results: Sequence[CaseResult], source: str = "") -> list[str]:
    """One line per passing case; name, expected, actual and the trace for each failure.

    A malformed case shows its diagnostic, rendered against `source` (the cases file).
    """
    lines: list[str] = []
    for r in results:
        if r.passed:
            lines.append(f"ok   {r.case.name}")
            continue
        lines.append(f"FAIL {r.case.name} ({r.case.where})")
        if isinstance(r.case, BadCase):
            rendered = render(r.case.diagnostic, {r.case.diagnostic.span.file: source})
            lines.extend(f"  {line}" for line in rendered.splitlines())
            continue
        assert r.explanation is not None  # only a BadCase has none
        lines.extend(f"  error: {err}" for err in r.errors)
        lines.append(f"  expected: [{', '.join(sorted(r.case.expect))}]")
        lines.append(f"  actual:   [{', '.join(r.actual)}]")
        lines.append(f"  request:  {r.case.request}")
        lines.extend(f"    {line}" for line in explain_text(r.explanation))
    lines.append(summary(results))
    return lines


def to_json(results: Sequence[CaseResult]) -> dict[str, Any]:
    """`{"cases": [...], "passed": N, "failed": M}`; a malformed case has its diagnostic."""
    return {
        "cases": [
            {
                "name": r.case.name,
                "where": r.case.where,
                "passed": r.passed,
                "expected": sorted(r.case.expect),
                "actual": list(r.actual),
                "errors": list(r.errors),
                "trace": None if r.explanation is None else explain_json(r.explanation),
                "diagnostic": (
                    r.case.diagnostic.to_json() if isinstance(r.case, BadCase) else None
                ),
            }
            for r in results
        ],
        "passed": sum(r.passed for r in results),
        "failed": sum(not r.passed for r in results),
    }
