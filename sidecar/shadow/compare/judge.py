"""Judging two captures: `judge(spec, primary, canary, baseline)` -> `Verdict`.

JSON comparison walks both documents together. Objects compare key by key
(order ignored), arrays index by index, leaves by value with JSON's types:
numbers by value (1 == 1.0), but a boolean is never a number (true != 1). Nodes
an `ignore` path selects in either document are masked at their location in
both (array positions are not renumbered: renumbering by one side's selection
would misalign the other). Each differing leaf, and each value present on one
side only, is one `Difference` named by its RFC 9535 normalized path.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from jsonpath_rfc9535 import JSONPathError

from sidecar.model.compare import (
    MAX_VALUE_CHARS,
    PRIMARY_INCOMPLETE,
    ROOT_WHERE,
    STATUS_WHERE,
    TOO_LARGE,
    TRUNCATION_MARKER,
    CompareError,
    CompareSpec,
    Kind,
    Result,
    SkipReason,
    pattern_masks,
)
from sidecar.shadow.compare.capture import Captured

# --- the verdict ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Difference:
    """One difference. `primary`/`canary` are JSON-encoded values cut to MAX_VALUE_CHARS,
    or None when the value is absent on that side."""

    kind: Kind
    where: str
    primary: str | None
    canary: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "where": self.where,
            "primary": self.primary,
            "canary": self.canary,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Verdict:
    """`match`, `diff` (differences non-empty) or `skipped` (with a reason)."""

    result: Result
    reason: SkipReason | None = None
    differences: tuple[Difference, ...] = ()
    noise: tuple[Difference, ...] = ()

    def __post_init__(self) -> None:
        if (self.result == "skipped") != (self.reason is not None):
            raise CompareError("a skipped verdict, and only it, has a reason")
        if (self.result == "diff") != bool(self.differences):
            raise CompareError("a diff verdict, and only it, has differences")

    @classmethod
    def skipped(cls, reason: SkipReason) -> Verdict:
        """E.g. `Verdict.skipped(PRIMARY_FAILED)` when the proxy answered 502/504 itself."""
        return cls(result="skipped", reason=reason)

    @property
    def difference_kinds(self) -> frozenset[str]:
        """For `sidecar_compare_differences_total` (once per response and kind)."""
        return frozenset(d.kind for d in self.differences)

    @property
    def noise_kinds(self) -> frozenset[str]:
        """For `sidecar_compare_noise_total` (once per response and kind)."""
        return frozenset(d.kind for d in self.noise)


_MATCH: Final = Verdict(result="match")


def judge(
    spec: CompareSpec, primary: Captured, canary: Captured, baseline: Captured | None = None
) -> Verdict:
    """Compare a completed canary response with the primary's.

    `baseline` is the baseline canary's capture of the same request, or None when it did
    not receive it (then no noise removal). A baseline capture that is incomplete or too
    large is ignored likewise. Raises `CompareError` if `canary` is incomplete: only
    completed tees are compared.
    """
    if not canary.complete:
        raise CompareError("only a completed canary response is judged")
    if not primary.complete:
        return Verdict.skipped(PRIMARY_INCOMPLETE)
    if spec.body == "json" and (primary.too_large or canary.too_large):
        return Verdict.skipped(TOO_LARGE)
    differences = _differences(spec, primary, canary)
    if not differences:
        return _MATCH
    usable = (
        baseline is not None
        and baseline.complete
        and not (spec.body == "json" and baseline.too_large)
    )
    if not usable or baseline is None:
        return Verdict(result="diff", differences=tuple(differences))
    noisy = {(d.kind, d.where) for d in _differences(spec, primary, baseline)}
    real = tuple(d for d in differences if (d.kind, d.where) not in noisy)
    noise = tuple(d for d in differences if (d.kind, d.where) in noisy)
    return Verdict(result="diff" if real else "match", differences=real, noise=noise)


def _differences(spec: CompareSpec, a: Captured, b: Captured) -> list[Difference]:
    """All differences, in kind order (status, header, body) then document order."""
    out: list[Difference] = []
    if spec.status and a.status != b.status:
        out.append(
            Difference(
                kind="status", where=STATUS_WHERE, primary=str(a.status), canary=str(b.status)
            )
        )
    for name in spec.headers:
        va, vb = a.headers.get(name, ()), b.headers.get(name, ())
        if va != vb:
            out.append(
                Difference(
                    kind="header", where=name, primary=_encode(list(va)), canary=_encode(list(vb))
                )
            )
    if spec.body is None or (a.length == b.length and a.sha256 == b.sha256):
        return out  # identical bytes: identical JSON too, whatever is ignored
    if spec.body == "json" and a.json is not None and b.json is not None:
        body = _json_differences(spec, a.json, b.json)
        if body is not None:
            out.extend(body)
            return out
        out.append(
            Difference(kind="body", where=ROOT_WHERE, primary=_text(a.json), canary=_text(b.json))
        )
        return out
    out.append(Difference(kind="body", where=ROOT_WHERE, primary=_digest(a), canary=_digest(b)))
    return out


def _digest(c: Captured) -> str:
    return _encode({"length": c.length, "sha256": c.sha256})


def _text(body: bytes) -> str:
    """A non-JSON body as a JSON string (lossy decode), for a readable `$` difference."""
    return _encode(body[: MAX_VALUE_CHARS * 4].decode("utf-8", errors="replace"))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN/Infinity; JSON does not


# Numbers are parsed as (_NUMBER, value) pairs so that Python's `==` is exactly JSON
# equality: (_NUMBER, 1) == (_NUMBER, 1.0), but a pair never equals True, a string or an
# array (a list). Equal subtrees are then skipped with one C-speed comparison.
_NUMBER: Final = "number"


def _int(text: str) -> tuple[str, int]:
    return (_NUMBER, int(text))


def _float(text: str) -> tuple[str, float]:
    return (_NUMBER, float(text))


def _parse(body: bytes, *, tagged: bool) -> tuple[bool, Any]:
    try:
        if tagged:
            doc = json.loads(
                body, parse_int=_int, parse_float=_float, parse_constant=_reject_constant
            )
        else:
            doc = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False, None
    return True, doc


def _plain(value: Any) -> Any:
    """Undo the number tagging, for encoding a value into a Difference."""
    if type(value) is tuple:
        return value[1]
    if type(value) is dict:
        return {k: _plain(v) for k, v in value.items()}
    if type(value) is list:
        return [_plain(v) for v in value]
    return value


# The ignore mask is a trie over locations: step -> sub-trie, or _MASKED for a removed node.
_MASKED: Final = "masked"
Mask = dict[str | int, Any]


def _json_differences(spec: CompareSpec, a_body: bytes, b_body: bytes) -> list[Difference] | None:
    """Leaf differences, or None when either body is not JSON (compare as bytes then)."""
    # Python's == differs from JSON equality only where a boolean meets a number (True == 1,
    # 0 == False); 1 == 1.0 is JSON's too. Without a `true` or `false` literal in either
    # body there are no booleans, and the plain parse (all in C, no hook per number) is
    # exact. The byte test is conservative: a string that contains "true" only costs the
    # tagged parse.
    tagged = any(lit in body for body in (a_body, b_body) for lit in (b"true", b"false"))
    ok_a, a = _parse(a_body, tagged=tagged)
    ok_b, b = _parse(b_body, tagged=tagged)
    if not (ok_a and ok_b):
        return None
    if a == b:
        return []
    try:
        mask: Mask = {}
        # Shape-only queries (names, indices, wildcards, slices, `..`) run on the documents
        # as parsed; a query with a filter reads values, so it gets plain ones.
        for query in spec._shape_queries:
            for doc in (a, b):
                if _add_to_mask(mask, (node.location for node in query.find(doc))):
                    return []
        if spec._value_queries:
            for doc, body in ((a, a_body), (b, b_body)):
                plain = _parse(body, tagged=False)[1] if tagged else doc
                for query in spec._value_queries:
                    if _add_to_mask(mask, (node.location for node in query.find(plain))):
                        return []
        found: Found = []
        _walk(a, b, [], mask or None, found)
    except (JSONPathError, RecursionError):  # too deep to walk: the bytes still differ
        return None
    patterns = spec._patterns
    # Differences are built (paths normalized, values encoded) only for the locations the
    # patterns leave: an ignored timestamp or id costs a tuple, not two json.dumps.
    return [
        _difference(loc, va, vb)
        for loc, va, vb in found
        if not any(pattern_masks(p, loc) for p in patterns)
    ]


def _add_to_mask(mask: Mask, locations: Iterable[tuple[str | int, ...]]) -> bool:
    """Add locations to the trie; True when the root itself is ignored."""
    for location in locations:
        if not location:
            return True
        node = mask
        for step in location[:-1]:
            child = node.get(step)
            if child is _MASKED:
                break  # an ancestor is already removed
            if child is None:
                child = node[step] = {}
            node = child
        else:
            node[location[-1]] = _MASKED
    return False


# A differing location with the value on each side (_ABSENT: not on that side).
Found = list[tuple[tuple[str | int, ...], Any, Any]]
_ABSENT: Final = object()


def _walk(a: Any, b: Any, path: list[str | int], mask: Mask | None, out: Found) -> None:
    if a == b:  # exact JSON equality (see _NUMBER); masked nodes can only remove differences
        return
    if type(a) is dict and type(b) is dict:
        for key, value in a.items():
            sub = mask.get(key) if mask else None
            if sub is _MASKED:
                continue
            other = b.get(key, _ABSENT)
            if other is not _ABSENT and value == other:
                continue  # equal subtree: one C-speed comparison, no call
            path.append(key)
            if other is not _ABSENT:
                _walk(value, other, path, sub, out)
            else:
                out.append((tuple(path), value, _ABSENT))
            path.pop()
        for key, value in b.items():
            if key in a or (mask and mask.get(key) is _MASKED):
                continue
            path.append(key)
            out.append((tuple(path), _ABSENT, value))
            path.pop()
        return
    if type(a) is list and type(b) is list:
        na, nb = len(a), len(b)
        for i in range(max(na, nb)):
            sub = mask.get(i) if mask else None
            if sub is _MASKED:
                continue
            if i < na and i < nb:
                if a[i] == b[i]:
                    continue
                path.append(i)
                _walk(a[i], b[i], path, sub, out)
            else:
                path.append(i)
                out.append((tuple(path), a[i] if i < na else _ABSENT, b[i] if i < nb else _ABSENT))
            path.pop()
        return
    out.append((tuple(path), a, b))


def _difference(location: tuple[str | int, ...], a: Any, b: Any) -> Difference:
    """A body Difference at `location`; a value _ABSENT on one side is None in it."""
    return Difference(
        kind="body",
        where=normalized_path(location),
        primary=None if a is _ABSENT else _encode(_plain(a)),
        canary=None if b is _ABSENT else _encode(_plain(b)),
    )


def _encode(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    if len(text) > MAX_VALUE_CHARS:
        return text[: MAX_VALUE_CHARS - len(TRUNCATION_MARKER)] + TRUNCATION_MARKER
    return text


_ESCAPES: Final[Mapping[str, str]] = MappingProxyType(
    {"\b": "\\b", "\f": "\\f", "\n": "\\n", "\r": "\\r", "\t": "\\t", "'": "\\'", "\\": "\\\\"}
)


def normalized_path(location: Iterable[str | int]) -> str:
    """The RFC 9535 normalized path (section 2.7) of a location: `$['items'][0]['price']`."""
    parts = ["$"]
    for step in location:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        else:
            parts.append("['" + "".join(_escape_char(ch) for ch in step) + "']")
    return "".join(parts)


def _escape_char(ch: str) -> str:
    if ch in _ESCAPES:
        return _ESCAPES[ch]
    if ch < " ":
        return f"\\u{ord(ch):04x}"
    return ch
