"""The candidate index of large routing tables (see `sidecar.routing.table`).

How this works. For each rule, one necessary condition of its `when` that a dict
lookup can test: its path prefix or exact path, host, method, or an exact header,
query or cookie value (for an `or`, the union of its operands' conditions; for an
`and`, any one operand's). `candidates(view)` looks the request up in those dicts
and returns the rule numbers, in configuration order, that can possibly match;
rules without an indexable condition are always candidates. A rule that is not a
candidate cannot match, so scanning only the candidates gives the same answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from sidecar.model import expr as nodes
from sidecar.model.config import RuleSpec
from sidecar.routing.request import RequestView

# A necessary condition of one test: (kind, key, value). Kinds: "method", "path" (exact),
# "prefix" (path prefix), "host", "header" (key: lower-case name), "query", "cookie".
_Cond = tuple[str, str, str]
_REGEX_META = frozenset(".^$*+?{}[]\\|()")


def regex_prefix(pattern: str) -> str:
    """A literal every match of `^literal...` must start with; "" when there is none."""
    if not pattern.startswith("^") or "|" in pattern:
        return ""  # unanchored, or an alternation that may bypass the literal
    lit: list[str] = []
    for ch in pattern[1:]:
        if ch in _REGEX_META:
            if ch in "*?{" and lit:
                lit.pop()  # that quantifier makes the previous character optional
            break
        lit.append(ch)
    return "".join(lit)


def conditions(expr: nodes.Expr) -> list[_Cond] | None:
    """Conditions one of which holds whenever `expr` holds; None if no such set is known."""
    if isinstance(expr, nodes.Group):
        return conditions(expr.inner)
    if isinstance(expr, nodes.Or):
        out: list[_Cond] = []
        for operand in expr.operands:
            sub = conditions(operand)
            if sub is None:
                return None
            out.extend(sub)
        return out
    if isinstance(expr, nodes.And):
        # Any operand's conditions will do; prefer one that is not about the method,
        # which has only a handful of values and so selects little.
        found = [c for c in map(conditions, expr.operands) if c is not None]
        found.sort(key=lambda conds: any(kind == "method" for kind, _, _ in conds))
        return found[0] if found else None
    if not isinstance(expr, nodes.Test):
        return None  # `not`: its operand failing says nothing indexable
    args = [a.value for a in expr.args]
    key = "" if expr.key is None else expr.key.value
    subject, op = expr.subject, expr.op
    if subject in ("method", "path", "host") and op in ("==", "in"):
        return [(subject, "", a) for a in args]
    if subject in ("header", "query", "cookie") and op in ("==", "in"):
        name = key.lower() if subject == "header" else key
        return [(subject, name, a) for a in args]
    if subject == "path" and op == "^=" and args[0]:
        return [("prefix", "", args[0])]
    if subject == "path" and op == "~" and (prefix := regex_prefix(args[0])):
        return [("prefix", "", prefix)]
    return None


class RuleIndex:
    """Rule numbers by a necessary condition; `candidates(view)` in configuration order."""

    __slots__ = ("_always", "_by", "_multi", "_prefix_lengths", "_use_host")

    def __init__(self, rules: Sequence[RuleSpec]) -> None:
        always: list[int] = []
        by: dict[tuple[str, str, str], list[int]] = {}
        for i, r in enumerate(rules):
            conds = None if r.when is None else conditions(r.when)
            if conds is None:
                always.append(i)
                continue
            for cond in set(conds):
                by.setdefault(cond, []).append(i)
        self._always = tuple(always)
        self._by = {cond: tuple(ids) for cond, ids in by.items()}
        self._prefix_lengths = sorted({len(v) for kind, _, v in by if kind == "prefix"})
        # Only look up what some rule is indexed by: computing `host` or reading a
        # header costs time for every request.
        self._multi: tuple[tuple[str, str], ...] = tuple(
            sorted({(kind, name) for kind, name, _ in by if kind in ("header", "query", "cookie")})
        )
        self._use_host = any(kind == "host" for kind, _, _ in by)

    def candidates(self, view: RequestView) -> list[int]:
        by = self._by
        found: set[int] = set(self._always)
        path = view.path
        hit = by.get(("method", "", view.method))
        if hit:
            found.update(hit)
        hit = by.get(("path", "", path))
        if hit:
            found.update(hit)
        if self._use_host:
            hit = by.get(("host", "", view.host))
            if hit:
                found.update(hit)
        for n in self._prefix_lengths:
            if n > len(path):
                break
            hit = by.get(("prefix", "", path[:n]))
            if hit:
                found.update(hit)
        for kind, name in self._multi:
            values = (
                view.header(name)
                if kind == "header"
                else view.query(name)
                if kind == "query"
                else view.cookie(name)
            )
            for value in values:
                hit = by.get((kind, name, value))
                if hit:
                    found.update(hit)
        return sorted(found)
