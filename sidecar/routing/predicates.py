"""Compile predicate syntax (`when`, `exclude when`) into closures over a `RequestView`.

Each `nodes.Test` becomes one closure with everything it needs prepared at load
time: the regex compiled, the `in` operands in a frozenset, the header name
lower-cased, the CIDR networks as (address, mask) integers. `not`, `and` and
`or` become closures over their compiled operands, short-circuiting in source
order. A header, query parameter or cookie with several values satisfies a
test when any value does; `!=` and `!~` are computed as exactly `not (==)` and
`not (~)`, so on a missing header `!=` holds and `==` does not.

The result is a `Predicate` tree: `check` is the hot path the routing table
calls; `failing_clause` walks the same compiled children to name the first
clause that does not hold (for `explain`), so tracing never re-implements the
semantics.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from operator import attrgetter, methodcaller

from sidecar.model import expr as nodes
from sidecar.model.expr import expr_text
from sidecar.routing.request import RequestView

Check = Callable[[RequestView], bool]
_Single = Callable[[RequestView], str]
_Multi = Callable[[RequestView], list[str]]

_STRING_OPS = frozenset({"==", "!=", "^=", "$=", "*=", "~", "!~", "in"})


@dataclass(frozen=True, slots=True, kw_only=True)
class Predicate:
    """A compiled expression and the syntax it came from."""

    check: Check
    node: nodes.Expr
    text: str  # the expression's source text, normalised (see `expr_text`)
    children: tuple[Predicate, ...] = ()

    def failing_clause(self, view: RequestView) -> str | None:
        """None if the predicate holds; else the text of the first clause that does not.

        Inside an `and` that is the first operand that fails (recursively); an
        `or`, a `not` or a test is reported whole, with the parentheses written
        around it: `(path == "/a" or path == "/b")`. A parenthesised `and` is
        looked into, like any `and`.
        """
        if self.check(view):
            return None
        node = self.node
        if isinstance(node, nodes.Group) and not isinstance(_ungrouped(node), nodes.And):
            return self.text
        if isinstance(node, nodes.And | nodes.Group):
            for child in self.children:
                found = child.failing_clause(view)
                if found is not None:
                    return found
        return self.text


def _ungrouped(expr: nodes.Expr) -> nodes.Expr:
    while isinstance(expr, nodes.Group):
        expr = expr.inner
    return expr


def compile_expr(expr: nodes.Expr) -> Predicate:
    """Compile once; raises ValueError for what validation should have rejected."""
    text = expr_text(expr)
    if isinstance(expr, nodes.Test):
        return Predicate(check=_compile_test(expr), node=expr, text=text)
    if isinstance(expr, nodes.Group):
        inner = compile_expr(expr.inner)
        return Predicate(check=inner.check, node=expr, text=text, children=(inner,))
    if isinstance(expr, nodes.Not):
        operand = compile_expr(expr.operand)
        f = operand.check
        return Predicate(check=lambda v: not f(v), node=expr, text=text, children=(operand,))
    children = tuple(compile_expr(e) for e in expr.operands)
    checks = tuple(c.check for c in children)
    check = _all(checks) if isinstance(expr, nodes.And) else _any(checks)
    return Predicate(check=check, node=expr, text=text, children=children)


# Explicit loops instead of any()/all() over generators, here and below: a generator
# costs a few hundred nanoseconds per call, and these run for every rule on every request.


def _all(checks: tuple[Check, ...]) -> Check:
    # Two and three operands are the common cases; unrolled they skip a loop per request.
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        a, b = checks
        return lambda v: a(v) and b(v)
    if len(checks) == 3:
        a, b, c = checks
        return lambda v: a(v) and b(v) and c(v)

    def all_(v: RequestView) -> bool:
        for c in checks:  # noqa: SIM110
            if not c(v):
                return False
        return True

    return all_


def _any(checks: tuple[Check, ...]) -> Check:
    if len(checks) == 1:
        return checks[0]
    if len(checks) == 2:
        a, b = checks
        return lambda v: a(v) or b(v)
    if len(checks) == 3:
        a, b, c = checks
        return lambda v: a(v) or b(v) or c(v)

    def any_(v: RequestView) -> bool:
        for c in checks:  # noqa: SIM110
            if c(v):
                return True
        return False

    return any_


# --- tests ----------------------------------------------------------------------------


def _compile_test(t: nodes.Test) -> Check:
    args = tuple(a.value for a in t.args)
    if t.subject == "client" and t.op == "in":
        return _client_in(args)
    if t.subject in ("method", "path", "host", "client"):
        if t.op not in _STRING_OPS:
            raise ValueError(f"{t.subject} does not support {t.op!r}: {t.text}")
        return _single(attrgetter(t.subject), t.op, args)
    if t.key is None:
        raise ValueError(f"{t.subject} test without a name: {t.text}")
    if t.subject == "header":
        get: _Multi = methodcaller("header_b", t.key.value.lower().encode("latin-1"))
    elif t.subject == "query":
        get = methodcaller("query", t.key.value)
    else:
        get = methodcaller("cookie", t.key.value)
    if t.op == "exists":
        return lambda v: bool(get(v))
    return _multi(get, t.op, args)


def _one(args: tuple[str, ...], op: str) -> str:
    if len(args) != 1:
        raise ValueError(f"{op!r} takes one operand, got {len(args)}")
    return args[0]


def _regex(pattern: str) -> Callable[[str], re.Match[str] | None]:
    try:
        return re.compile(pattern).search
    except re.error as exc:  # the one place re's exception becomes ours
        raise ValueError(f"invalid regex {pattern!r}: {exc}") from None


def _single(get: _Single, op: str, args: tuple[str, ...]) -> Check:
    """A test on a subject with exactly one value (method, path, host, client address)."""
    if op == "in":
        choices = frozenset(args)
        return lambda v: get(v) in choices
    s = _one(args, op)
    if op == "==":
        return lambda v: get(v) == s
    if op == "!=":
        return lambda v: get(v) != s
    if op == "^=":
        return lambda v: get(v).startswith(s)
    if op == "$=":
        return lambda v: get(v).endswith(s)
    if op == "*=":
        return lambda v: s in get(v)
    search = _regex(s)
    if op == "~":
        return lambda v: search(get(v)) is not None
    return lambda v: search(get(v)) is None  # "!~"


def _multi(get: _Multi, op: str, args: tuple[str, ...]) -> Check:
    """A test on a header, query parameter or cookie: holds when any value satisfies it."""
    if op == "in":
        choices = frozenset(args)
        return lambda v: not choices.isdisjoint(get(v))
    s = _one(args, op)
    if op == "==":
        return lambda v: s in get(v)
    if op == "!=":
        return lambda v: s not in get(v)
    if op == "~" or op == "!~":
        search = _regex(s)

        def found(v: RequestView) -> bool:
            for x in get(v):  # noqa: SIM110
                if search(x) is not None:
                    return True
            return False

        return found if op == "~" else (lambda v: not found(v))
    if op == "^=":

        def starts(v: RequestView) -> bool:
            for x in get(v):  # noqa: SIM110
                if x.startswith(s):
                    return True
            return False

        return starts
    if op == "$=":

        def ends(v: RequestView) -> bool:
            for x in get(v):  # noqa: SIM110
                if x.endswith(s):
                    return True
            return False

        return ends
    if op == "*=":

        def contains(v: RequestView) -> bool:
            for x in get(v):  # noqa: SIM110
                if s in x:
                    return True
            return False

        return contains
    raise ValueError(f"unknown operator {op!r}")


# --- client in CIDR -------------------------------------------------------------------


def _client_in(args: tuple[str, ...]) -> Check:
    v4: list[tuple[int, int]] = []
    v6: list[tuple[int, int]] = []
    for arg in args:
        net = ipaddress.ip_network(arg, strict=False)
        if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
            mapped = net.network_address.ipv4_mapped
            if mapped is not None:
                # The view unwraps IPv4-mapped peers to IPv4, so match them as IPv4 too.
                net4 = ipaddress.IPv4Network((mapped, net.prefixlen - 96))
                v4.append((int(net4.network_address), int(net4.netmask)))
                continue
        bucket = v4 if net.version == 4 else v6
        bucket.append((int(net.network_address), int(net.netmask)))
    nets = {4: tuple(v4), 6: tuple(v6)}

    def client_in(v: RequestView) -> bool:
        addr = v.client_addr
        if addr is None:
            return False
        version, x = addr
        for net, mask in nets[version]:  # noqa: SIM110
            if x & mask == net:
                return True
        return False

    return client_in
