"""The routing table: which canaries get a copy of a request.

One job past 400 lines: compile, decide and trace share the one `_Decider` on purpose
(the traced decision is the very same code); sampling and predicates are their own
modules.

How this works. `compile_table(config)` turns a validated `Config` into an
immutable `RoutingTable` once, at load time: every `when` and `exclude when`
becomes a tree of closures (`sidecar.routing.predicates`), every `sample` becomes a
small sampler closure, and each rule's tees are built as `Tee` objects up
front. `decide(view)` then runs the routing semantics (steps 1-3 below) over
those closures and nothing else:

1. Loop guard: if the request carries any canary's mark header with exactly
   that canary's mark value, nothing is mirrored. The (lower-case name, value
   set) pairs are precomputed; another value of the header does not count.
2. If any exclude predicate holds, nothing is mirrored.
3. Rules in configuration order: a rule whose `when` holds (no `when`: always)
   draws its sample, and if it samples in, each of its canaries not already
   chosen by an earlier rule gets one tee. Once every canary a rule can reach
   is chosen, later rules cannot add anything and the loop stops.

Sampling (`sidecar.routing.sampling`): a fresh random draw, or a stable position of
the request's key in [0, 1) so that the same key is sampled the same way everywhere.

Large tables (`INDEX_MIN_RULES` rules or more) add a candidate index: for each
rule, one necessary condition of its `when` that a dict lookup can test (its
path prefix or exact path, host, method, or an exact header, query or cookie
value; for an `or`, the union of its operands' conditions). `decide` looks the
request up in those dicts, sorts the candidate rule numbers and runs the same
loop over only those rules; a rule that is not a candidate cannot match, so the
answer (and the random draws) are the same as scanning every rule.

`trace(view)` is the hook for `explain` and `check --expect`. It runs the very
same decision code as `decide`: the steps live in one `_Decider`, and `decide`
is that decider's bound method. `trace` builds a second decider over the same
compiled closures, each wrapped to record its result (which mark value held,
which exclude, which rule matched and how it sampled), runs it, and reads the
records back. The hot path therefore pays nothing for tracing, and the traced
and untraced decisions cannot drift apart. Rules the decision never looked at
(after every canary was chosen, or not an index candidate) are reported as not
evaluated, with their failing clause computed without drawing a sample.
"""

from __future__ import annotations

import random as _random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, NamedTuple

from sidecar.diagnostics import Span
from sidecar.model.compare import CompareSpec
from sidecar.model.config import (
    CanarySpec,
    Config,
    DropHeader,
    RewritePath,
    SampleSpec,
    SetHeader,
)
from sidecar.model.tls import TlsSpec
from sidecar.routing.predicates import Check, Predicate, compile_expr
from sidecar.routing.request import RequestView, ValueSet
from sidecar.routing.rule_index import RuleIndex
from sidecar.routing.sampling import (
    KeyGetter,
    Random,
    Sampler,
    compile_sample,
    key_getter,
    key_position,
)

__all__ = [
    "CompiledExclude",
    "CompiledRule",
    "RoutingTable",
    "RuleTrace",
    "SampleTrace",
    "Tee",
    "Trace",
    "compile_table",
    "key_position",
]


# One rule on the hot path: its check, its sampler, its tees and their canary names.
class _Hot(NamedTuple):
    check: Check | None
    sample: Sampler | None
    tees: tuple[Tee, ...]
    canaries: frozenset[str]


_NO_TEES: tuple[Tee, ...] = ()

# Below this many rules a plain scan beats the index lookups (measured with bench/bench_decide.py).
INDEX_MIN_RULES = 32


@dataclass(frozen=True, slots=True)
class Tee:
    """One copy of the request for `canary`, chosen by mirror rule `rule`."""

    canary: str
    rule: str


@dataclass(frozen=True, slots=True, kw_only=True)
class CompiledRule:
    """One mirror rule: its predicate, its sampler and its tees, built once."""

    name: str
    when: Predicate | None  # None: matches every request
    sample: SampleSpec | None
    sampler: Sampler | None  # None: every matching request samples in
    key: KeyGetter | None  # the sample key's values; None without keyed sampling
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
class SampleTrace:
    """How a matching rule sampled: `key`/`position` are None for a random draw."""

    rate: float
    key: str | None  # the key's (first) value
    position: float | None  # key_position(key)
    sampled_in: bool | None  # None: a random draw that was never made (rule not evaluated)


@dataclass(frozen=True, slots=True, kw_only=True)
class RuleTrace:
    rule: str
    failing_clause: str | None  # None when `when` holds
    evaluated: bool  # False: the decision stopped before it (all canaries chosen) or skipped it
    sampled: bool | None  # the sample's result; None when not drawn (no match, not evaluated)
    sample: SampleTrace | None  # None without `sample` or when `when` failed
    tees: tuple[Tee, ...]  # the tees this rule added (canaries not chosen earlier)


@dataclass(frozen=True, slots=True, kw_only=True)
class Trace:
    """Why `decide` answered what it did, step by step."""

    loop_guard: tuple[str, str] | None  # the mark (header, value) the request carried
    excluded_by: CompiledExclude | None
    rules: tuple[RuleTrace, ...]
    tees: tuple[Tee, ...]


@dataclass(frozen=True, slots=True)
class _Decider:
    """Steps 1-3 of the routing semantics over compiled closures: the one implementation."""

    marks: tuple[tuple[bytes, ValueSet], ...]  # (lower-case header name, mark values)
    excludes: tuple[Check, ...]
    hot: tuple[_Hot, ...]
    index: RuleIndex | None
    reachable: int  # how many distinct canaries the rules can choose

    def decide(self, view: RequestView) -> tuple[Tee, ...]:
        for name, values in self.marks:
            if view.header_in(name, values):
                return _NO_TEES
        for excluded in self.excludes:
            if excluded(view):
                return _NO_TEES
        if self.index is None:
            return self._collect(view, self.hot)
        hot = self.hot
        return self._collect(view, [hot[i] for i in self.index.candidates(view)])

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
                if len(canaries) == self.reachable:
                    return tees  # the first match chooses every canary: nothing to merge
                out.extend(tees)
                taken.update(canaries)
            else:
                for tee in tees:
                    if tee.canary not in taken:
                        taken.add(tee.canary)
                        out.append(tee)
            if len(taken) == self.reachable:
                break  # every canary is chosen: no later rule can add a tee
        return tuple(out) if out else _NO_TEES


class _MarkProbe:
    """A mark's value set in a tracing decider: remembers the value that held."""

    __slots__ = ("hit", "values")

    def __init__(self, values: frozenset[str]) -> None:
        self.values = values
        self.hit: str | None = None

    def isdisjoint(self, other: Iterable[str], /) -> bool:
        for value in other:
            if value in self.values:
                self.hit = value
                return False
        return True


def _recorded(check: Check | None, box: list[bool | None], i: int) -> Check:
    """`check` (None: always true), writing each result to box[i]."""

    def recorded(view: RequestView) -> bool:
        box[i] = result = True if check is None else check(view)
        return result

    return recorded


class RoutingTable:
    """An immutable compiled configuration. `decide` is pure apart from `random()`.

    `decide(view) -> tuple[Tee, ...]`: the tees for this request, in rule order;
    empty when nothing is mirrored. (An attribute bound to the decider's method,
    so the hot path is one call.)
    """

    __slots__ = (
        "_decider",
        "_index",
        "_marks",
        "canaries",
        "config",
        "decide",
        "excludes",
        "rules",
    )

    config: Config
    canaries: Mapping[str, CanarySpec]
    rules: tuple[CompiledRule, ...]
    excludes: tuple[CompiledExclude, ...]
    decide: Callable[[RequestView], tuple[Tee, ...]]
    _marks: tuple[tuple[bytes, frozenset[str]], ...]
    _decider: _Decider
    _index: RuleIndex | None

    def __init__(self, config: Config, *, random: Random = _random.random) -> None:
        self.config = config
        self.canaries = MappingProxyType({c.name: c for c in config.canaries})
        self.rules = tuple(
            CompiledRule(
                name=r.name,
                when=None if r.when is None else compile_expr(r.when),
                sample=r.sample,
                sampler=compile_sample(r.sample, random),
                key=None if r.sample is None else key_getter(r.sample),
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
        self._index = RuleIndex(config.rules) if len(config.rules) >= INDEX_MIN_RULES else None
        self._decider = _Decider(
            self._marks,
            tuple(e.when.check for e in self.excludes),
            tuple(
                _Hot(
                    None if r.when is None else r.when.check,
                    r.sampler,
                    r.tees,
                    frozenset(t.canary for t in r.tees),
                )
                for r in self.rules
            ),
            self._index,
            len({t.canary for r in self.rules for t in r.tees}),
        )
        self.decide = self._decider.decide

    def trace(self, view: RequestView) -> Trace:
        """`decide`, recording each step (for `explain`): the same decider, probed.

        Draws exactly the samples `decide` would draw, from the same `random`.
        """
        d = self._decider
        matched: list[bool | None] = [None] * len(self.rules)
        drawn: list[bool | None] = [None] * len(self.rules)
        held: list[bool | None] = [None] * len(self.excludes)
        probes = tuple((name, _MarkProbe(values)) for name, values in self._marks)
        tracer = _Decider(
            probes,
            tuple(_recorded(c, held, i) for i, c in enumerate(d.excludes)),
            tuple(
                _Hot(
                    _recorded(check, matched, i),
                    None if sample is None else _recorded(sample, drawn, i),
                    tees,
                    canaries,
                )
                for i, (check, sample, tees, canaries) in enumerate(d.hot)
            ),
            d.index,
            d.reachable,
        )
        tees = tracer.decide(view)
        for name, probe in probes:
            if probe.hit is not None:
                mark = (name.decode("latin-1"), probe.hit)
                return Trace(loop_guard=mark, excluded_by=None, rules=(), tees=tees)
        for ex, h in zip(self.excludes, held, strict=True):
            if h:
                return Trace(loop_guard=None, excluded_by=ex, rules=(), tees=tees)
        steps = tuple(
            _rule_trace(rule, view, matched[i], drawn[i], tees) for i, rule in enumerate(self.rules)
        )
        return Trace(loop_guard=None, excluded_by=None, rules=steps, tees=tees)

    def to_json(self) -> dict[str, Any]:
        """The compiled table as plain JSON data (the admin `/rules` endpoint)."""
        cfg = self.config
        return {
            "listen": cfg.listen,
            "listen_tls": None
            if cfg.listen_tls is None
            else {"cert": cfg.listen_tls.cert, "key": cfg.listen_tls.key},
            "admin": cfg.admin,
            "primary": None
            if cfg.primary is None
            else {
                "url": cfg.primary.endpoint.url,
                "timeout_s": cfg.primary.timeout_s,
                "idle_timeout_s": cfg.primary.idle_timeout_s,
                "tls": _tls_json(cfg.primary.tls),
            },
            "diff_log": cfg.diff_log,
            "request_id": cfg.request_id,
            "server": cfg.server,
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
        "compare": None if c.compare is None else _compare_json(c.compare),
        "pause": None
        if c.pause is None
        else {"failures": c.pause.failures, "duration_s": c.pause.duration_s},
        "tls": _tls_json(c.tls),
    }


def _tls_json(t: TlsSpec | None) -> dict[str, Any] | None:
    if t is None:
        return None
    return {
        "ca": t.ca,
        "verify": t.verify,
        "cert": t.cert,
        "key": t.key,
        "server_name": t.server_name,
    }


def _compare_json(c: CompareSpec) -> dict[str, Any]:
    return {
        "status": c.status,
        "headers": list(c.headers),
        "body": c.body,
        "ignore": list(c.ignore),
        "max_body_bytes": c.max_body_bytes,
        "sample": c.sample_rate,
        "baseline": c.baseline,
    }


def _rule_trace(
    rule: CompiledRule,
    view: RequestView,
    matched: bool | None,
    drawn: bool | None,
    tees: tuple[Tee, ...],
) -> RuleTrace:
    """One rule's step from what the tracing decider recorded (None: it never got there)."""
    evaluated = matched is not None
    failing = None if matched else rule.failing_clause(view)
    sampled: bool | None = None
    if matched:
        sampled = True if drawn is None else drawn
    detail: SampleTrace | None = None
    if rule.sample is not None and failing is None:
        values = [] if rule.key is None else rule.key(view)
        key = values[0] if values else None
        position = None if key is None else key_position(key)
        sampled_in = sampled
        if not evaluated and position is not None:
            sampled_in = position < rule.sample.rate  # keyed: exact, no draw needed
        detail = SampleTrace(
            rate=rule.sample.rate, key=key, position=position, sampled_in=sampled_in
        )
    return RuleTrace(
        rule=rule.name,
        failing_clause=failing,
        evaluated=evaluated,
        sampled=sampled,
        sample=detail,
        tees=tuple(t for t in tees if t.rule == rule.name),
    )


def compile_table(config: Config, *, random: Random = _random.random) -> RoutingTable:
    """Compile a validated configuration; raises ValueError only for what validation missed."""
    return RoutingTable(config, random=random)
