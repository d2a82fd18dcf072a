"""The routing table: which canaries get a copy of a request.

How this works. `compile_table(config)` turns a validated `Config` into an
immutable `RoutingTable` once, at load time: every `when` and `exclude when`
becomes a tree of closures (`sidecar.predicates`), every `sample` becomes a
small sampler closure, and each rule's tees are built as `Tee` objects up
front. `decide(view)` then runs SPEC section 3 "Semantics of the routing
table", steps 1-3, over those closures and nothing else:

1. Loop guard: if the request carries any canary's mark header with exactly
   that canary's mark value, nothing is mirrored. The (lower-case name, value
   set) pairs are precomputed; another value of the header does not count.
2. If any exclude predicate holds, nothing is mirrored.
3. Rules in configuration order: a rule whose `when` holds (no `when`: always)
   draws its sample, and if it samples in, each of its canaries not already
   chosen by an earlier rule gets one tee. Once every canary a rule can reach
   is chosen, later rules cannot add anything and the loop stops.

Sampling: `sample R` compares a fresh draw of the injected `random()` with R.
`sample R by ...` compares `key_position(key)` with R, where `key_position` is
an unsalted hash of the key's UTF-8 bytes mapped to [0, 1): the same key gets
the same position in every process, rule and restart, so the keys sampled at
5% are a subset of those sampled at 10%. A request without the key falls back
to a random draw. With several values of the key, the first one is used.

Large tables (`INDEX_MIN_RULES` rules or more) add a candidate index: for each
rule, one necessary condition of its `when` that a dict lookup can test (its
path prefix or exact path, host, method, or an exact header, query or cookie
value; for an `or`, the union of its operands' conditions). `decide` looks the
request up in those dicts, sorts the candidate rule numbers and runs the same
loop over only those rules; a rule that is not a candidate cannot match, so the
answer (and the random draws) are the same as scanning every rule.

`trace(view)` is the hook for `explain`: it walks the same compiled rules
(`CompiledRule.matches`, `failing_clause`, `samples_in`) and records why each
rule did or did not send a tee. `decide` stays a separate tight loop because it
is the per-request hot path; tests check the two agree.
"""

from __future__ import annotations

import hashlib
import random as _random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from operator import methodcaller
from types import MappingProxyType
from typing import Any

from sidecar.config import (
    CanarySpec,
    Config,
    DropHeader,
    RewritePath,
    RuleSpec,
    SampleSpec,
    SetHeader,
)
from sidecar.diagnostics import Span
from sidecar.dsl import ast
from sidecar.predicates import Check, Predicate, compile_expr
from sidecar.request import RequestView

__all__ = [
    "CompiledExclude",
    "CompiledRule",
    "RoutingTable",
    "RuleTrace",
    "Tee",
    "Trace",
    "compile_table",
    "key_position",
]

Random = Callable[[], float]
Sampler = Callable[[RequestView], bool]
# One rule on the hot path: its check, its sampler, its tees and their canary names.
_Hot = tuple[Check | None, Sampler | None, tuple["Tee", ...], frozenset[str]]

_NO_TEES: tuple[Tee, ...] = ()

# Below this many rules a plain scan beats the index lookups (measured with bench/bench_decide.py).
INDEX_MIN_RULES = 32


@dataclass(frozen=True, slots=True)
class Tee:
    """One copy of the request for `canary`, chosen by mirror rule `rule`."""

    canary: str
    rule: str


def key_position(value: str) -> float:
    """The key's stable position in [0, 1): unsalted, identical across processes.

    The top 53 bits of an 8-byte BLAKE2b digest, so the float is exact and never 1.0.
    """
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) * (1.0 / (1 << 53))


def _compile_sample(spec: SampleSpec | None, random: Random) -> Sampler | None:
    if spec is None or spec.rate >= 1.0:
        return None  # every matching request: no draw at all
    rate = spec.rate
    if spec.by is None:
        return lambda v: random() < rate

    if spec.by == "client":

        def by_client(v: RequestView) -> bool:
            key = v.client
            return (key_position(key) if key else random()) < rate

        return by_client

    if spec.key is None:
        raise ValueError(f"sample by {spec.by} needs a name")
    get: Callable[[RequestView], list[str]]
    if spec.by == "header":
        get = methodcaller("header_b", spec.key.lower().encode("latin-1"))
    else:
        get = methodcaller(spec.by, spec.key)

    def by_key(v: RequestView) -> bool:
        values = get(v)
        return (key_position(values[0]) if values else random()) < rate

    return by_key


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledRule:
    """One mirror rule: its predicate, its sampler and its tees, built once."""

    name: str
    when: Predicate | None  # None: matches every request
    sampler: Sampler | None  # None: every matching request samples in
    tees: tuple[Tee, ...]
    span: Span

    def matches(self, view: RequestView) -> bool:
        return self.when is None or self.when.check(view)

    def failing_clause(self, view: RequestView) -> str | None:
        return None if self.when is None else self.when.failing_clause(view)

    def samples_in(self, view: RequestView) -> bool:
        """Draws this rule's sample (consumes a random number when the rule samples randomly)."""
        return self.sampler is None or self.sampler(view)


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledExclude:
    when: Predicate
    span: Span


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleTrace:
    rule: str
    failing_clause: str | None  # None when `when` holds
    sampled: bool | None  # None when the sample was not drawn (the rule did not match)
    tees: tuple[Tee, ...]  # the tees this rule added (canaries not chosen earlier)


@dataclass(frozen=True, slots=True, kw_only=True)
class Trace:
    """Why `decide` answered what it did, step by step."""

    loop_guard: tuple[str, str] | None  # the mark (header, value) the request carried
    excluded_by: CompiledExclude | None
    rules: tuple[RuleTrace, ...]
    tees: tuple[Tee, ...]


class RoutingTable:
    """An immutable compiled configuration. `decide` is pure apart from `random()`."""

    __slots__ = (
        "_excludes",
        "_hot",
        "_index",
        "_marks",
        "_reachable",
        "canaries",
        "config",
        "excludes",
        "rules",
    )

    config: Config
    canaries: Mapping[str, CanarySpec]
    rules: tuple[CompiledRule, ...]
    excludes: tuple[CompiledExclude, ...]
    _excludes: tuple[Check, ...]
    _marks: tuple[tuple[bytes, frozenset[str]], ...]
    _hot: tuple[_Hot, ...]
    _reachable: int
    _index: _Index | None

    def __init__(self, config: Config, *, random: Random = _random.random) -> None:
        self.config = config
        self.canaries = MappingProxyType({c.name: c for c in config.canaries})
        self.rules = tuple(
            CompiledRule(
                name=r.name,
                when=None if r.when is None else compile_expr(r.when),
                sampler=_compile_sample(r.sample, random),
                tees=tuple(Tee(canary, r.name) for canary in r.to),
                span=r.span,
            )
            for r in config.rules
        )
        self.excludes = tuple(
            CompiledExclude(when=compile_expr(e.when), span=e.span) for e in config.excludes
        )
        marks: dict[bytes, set[str]] = {}
        for c in config.canaries:
            if c.mark is not None:
                marks.setdefault(c.mark[0].lower().encode("latin-1"), set()).add(c.mark[1])
        self._marks = tuple((name, frozenset(values)) for name, values in marks.items())
        self._excludes = tuple(e.when.check for e in self.excludes)
        self._hot = tuple(
            (
                None if r.when is None else r.when.check,
                r.sampler,
                r.tees,
                frozenset(t.canary for t in r.tees),
            )
            for r in self.rules
        )
        self._reachable = len({t.canary for r in self.rules for t in r.tees})
        self._index = _Index(config.rules) if len(config.rules) >= INDEX_MIN_RULES else None

    def decide(self, view: RequestView) -> tuple[Tee, ...]:
        """The tees for this request, in rule order; empty when nothing is mirrored."""
        for name, values in self._marks:
            if not values.isdisjoint(view.header_b(name)):
                return _NO_TEES
        for excluded in self._excludes:
            if excluded(view):
                return _NO_TEES
        if self._index is None:
            return self._collect(view, self._hot)
        hot = self._hot
        return self._collect(view, [hot[i] for i in self._index.candidates(view)])

    def _collect(self, view: RequestView, rules: Iterable[_Hot]) -> tuple[Tee, ...]:
        """Step 3 over `rules` (all of them, or the index's candidates, in order)."""
        out: list[Tee] = []
        taken: set[str] = set()
        for check, sample, tees, canaries in rules:
            if check is not None and not check(view):
                continue
            if sample is not None and not sample(view):
                continue
            if not taken:
                out.extend(tees)
                taken.update(canaries)
            else:
                for tee in tees:
                    if tee.canary not in taken:
                        taken.add(tee.canary)
                        out.append(tee)
            if len(taken) == self._reachable:
                break  # every canary is chosen: no later rule can add a tee
        return tuple(out) if out else _NO_TEES

    def trace(self, view: RequestView) -> Trace:
        """`decide`, recording each step (for `explain`). Draws samples for every matching rule."""
        for name, values in self._marks:
            for value in view.header_b(name):
                if value in values:
                    mark = (name.decode("latin-1"), value)
                    return Trace(loop_guard=mark, excluded_by=None, rules=(), tees=())
        for ex in self.excludes:
            if ex.when.check(view):
                return Trace(loop_guard=None, excluded_by=ex, rules=(), tees=())
        steps: list[RuleTrace] = []
        out: list[Tee] = []
        taken: set[str] = set()
        for rule in self.rules:
            failing = rule.failing_clause(view)
            if failing is not None:
                steps.append(
                    RuleTrace(rule=rule.name, failing_clause=failing, sampled=None, tees=())
                )
                continue
            sampled = rule.samples_in(view)
            added: list[Tee] = []
            if sampled:
                for tee in rule.tees:
                    if tee.canary not in taken:
                        taken.add(tee.canary)
                        added.append(tee)
            out.extend(added)
            steps.append(
                RuleTrace(rule=rule.name, failing_clause=None, sampled=sampled, tees=tuple(added))
            )
        return Trace(loop_guard=None, excluded_by=None, rules=tuple(steps), tees=tuple(out))

    def to_json(self) -> dict[str, Any]:
        """The compiled table as plain JSON data (the admin `/rules` endpoint)."""
        cfg = self.config
        return {
            "listen": cfg.listen,
            "admin": cfg.admin,
            "primary": None
            if cfg.primary is None
            else {"url": cfg.primary.endpoint.url, "timeout_s": cfg.primary.timeout_s},
            "canaries": [_canary_json(c) for c in cfg.canaries],
            "rules": [
                {
                    "name": r.name,
                    "when": None if r.when is None else r.when.text,
                    "sample": None
                    if spec.sample is None
                    else {"rate": spec.sample.rate, "by": spec.sample.by, "key": spec.sample.key},
                    "to": [t.canary for t in r.tees],
                    "source": r.span.where,
                }
                for r, spec in zip(self.rules, cfg.rules, strict=True)
            ],
            "excludes": [{"when": e.when.text, "source": e.span.where} for e in self.excludes],
            "sources": [{"path": s.path, "sha256": s.sha256} for s in cfg.sources],
            "hash": cfg.sha256,
        }


def _canary_json(c: CanarySpec) -> dict[str, Any]:
    transforms: list[dict[str, Any]] = []
    for t in c.transforms:
        if isinstance(t, SetHeader):
            transforms.append({"set_header": {"name": t.name, "value": t.value}})
        elif isinstance(t, DropHeader):
            transforms.append({"drop_header": list(t.names)})
        elif isinstance(t, RewritePath):
            transforms.append(
                {"rewrite_path": {"pattern": t.pattern, "replacement": t.replacement}}
            )
    return {
        "name": c.name,
        "servers": [{"url": s.endpoint.url, "weight": s.weight} for s in c.servers],
        "workers": c.workers,
        "queue": c.queue,
        "timeout_s": c.timeout_s,
        "max_body_bytes": c.max_body_bytes,
        "body": c.body,
        "mark": None if c.mark is None else {"header": c.mark[0], "value": c.mark[1]},
        "rate": None
        if c.rate is None
        else {"burst": c.rate.burst, "per_second": c.rate.per_second},
        "host": c.host,
        "transforms": transforms,
    }


# --- the candidate index for large tables ------------------------------------------------

# A necessary condition of one test: (kind, key, value). Kinds: "method", "path" (exact),
# "prefix" (path prefix), "host", "header" (key: lower-case name), "query", "cookie".
_Cond = tuple[str, str, str]
_REGEX_META = frozenset(".^$*+?{}[]\\|()")


def _regex_prefix(pattern: str) -> str:
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


def _conditions(expr: ast.Expr) -> list[_Cond] | None:
    """Conditions one of which holds whenever `expr` holds; None if no such set is known."""
    if isinstance(expr, ast.Group):
        return _conditions(expr.inner)
    if isinstance(expr, ast.Or):
        out: list[_Cond] = []
        for operand in expr.operands:
            sub = _conditions(operand)
            if sub is None:
                return None
            out.extend(sub)
        return out
    if isinstance(expr, ast.And):
        # Any operand's conditions will do; prefer one that is not about the method,
        # which has only a handful of values and so selects little.
        found = [c for c in map(_conditions, expr.operands) if c is not None]
        found.sort(key=lambda conds: any(kind == "method" for kind, _, _ in conds))
        return found[0] if found else None
    if not isinstance(expr, ast.Test):
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
    if subject == "path" and op == "~" and (prefix := _regex_prefix(args[0])):
        return [("prefix", "", prefix)]
    return None


class _Index:
    """Rule numbers by a necessary condition; `candidates(view)` in configuration order."""

    __slots__ = ("_always", "_by", "_multi", "_prefix_lengths", "_use_host")

    def __init__(self, rules: Sequence[RuleSpec]) -> None:
        always: list[int] = []
        by: dict[tuple[str, str, str], list[int]] = {}
        for i, r in enumerate(rules):
            conds = None if r.when is None else _conditions(r.when)
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


def compile_table(config: Config, *, random: Random = _random.random) -> RoutingTable:
    """Compile a validated configuration; raises ValueError only for what validation missed."""
    return RoutingTable(config, random=random)
