"""Response comparison, the pure core: capture a response, judge two, build the diff record.

No asyncio, no network: the proxy, the mirror workers and the library wire this in.

How a caller uses it::

    spec = CompareSpec(status=True, headers=("Content-Type",), body="json",
                       ignore=("$.generated_at",))        # at load time: validates, compiles
    cap = Capture(spec)                                   # one per response (primary or canary)
    cap.start(status, headers)                            # ASGI/h11 (name, value) pairs
    for chunk in body: cap.feed(chunk)                    # as the body streams; never blocks
    primary = cap.finish()      # or cap.incomplete() when the client left / the body was cut
    verdict = judge(spec, primary, canary, baseline)      # baseline: the noise canary, or None
    if verdict.result == "diff":
        record = diff_record(verdict, rule="api", request=RequestInfo(...),
                             primary=primary, canary_name="v2", canary=canary, now=time.time())

`Captured` is immutable, so one primary capture is judged against every canary of
the request, from whichever task finishes last. When the proxy itself answered
the client 502/504, the caller does not judge: it records `Verdict.skipped(PRIMARY_FAILED)`.

Costs. Every capture keeps the length and sha256 of the body, whatever the spec
asks, because the diff record names both for the primary and the canary; sha256
costs about 0.6 us per KiB here (SHA-NI; see docs/compare.md), far below the
proxy's own cost per chunk, so a status-only spec is not worth a hashless path.
Only `body json` keeps bytes, and only up to `max_body_bytes`. Identical bodies
(same length and sha256) are never parsed: that is the common case of a canary
that matches.

JSON comparison walks both documents together. Objects compare key by key
(order ignored), arrays index by index, leaves by value with JSON's types:
numbers by value (1 == 1.0), but a boolean is never a number (true != 1). Nodes
an `ignore` path selects in either document are masked at their location in
both (array positions are not renumbered: renumbering by one side's selection
would misalign the other). Each differing leaf, and each value present on one
side only, is one `Difference` named by its RFC 9535 normalized path.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Literal

import jsonpath_rfc9535
from jsonpath_rfc9535 import JSONPathError, JSONPathQuery
from jsonpath_rfc9535.segments import JSONPathChildSegment
from jsonpath_rfc9535.selectors import (
    FilterSelector,
    IndexSelector,
    NameSelector,
    WildcardSelector,
)

from sidecar.http.syntax import is_token

# --- errors -----------------------------------------------------------------------------------


class CompareError(Exception):
    """Base of this module's errors."""


class CompareSpecError(CompareError, ValueError):
    """A `CompareSpec` that breaks an invariant (the rule checker reports these first)."""


class CaptureError(CompareError, RuntimeError):
    """A `Capture` used out of order (feed before start, feed after finish...)."""


# --- constants --------------------------------------------------------------------------------

# A json body is kept in memory up to this; past it the capture is `too_large`. 1 MiB holds
# any API response worth diffing leaf by leaf, and bounds memory at one MiB per in-flight
# compared response per side.
DEFAULT_MAX_BODY_BYTES: Final = 1 << 20
# The record lists at most this many differences (and as many noise entries); `more`
# counts the rest. Twenty is enough to see the pattern, and keeps a record under ~12 KiB.
MAX_RECORD_DIFFERENCES: Final = 20
# Each value in a Difference is JSON-encoded and cut to this many characters, the marker
# included, so a huge string or subtree never bloats a record or the /diffs buffer.
MAX_VALUE_CHARS: Final = 256
TRUNCATION_MARKER: Final = "…"

Result = Literal["match", "diff", "skipped"]
SkipReason = Literal["primary_failed", "primary_incomplete", "too_large"]
Kind = Literal["status", "header", "body"]
BodyMode = Literal["bytes", "json"]

PRIMARY_FAILED: Final[SkipReason] = "primary_failed"
PRIMARY_INCOMPLETE: Final[SkipReason] = "primary_incomplete"
TOO_LARGE: Final[SkipReason] = "too_large"

KIND_ORDER: Final[Mapping[str, int]] = MappingProxyType({"status": 0, "header": 1, "body": 2})
STATUS_WHERE: Final = "status"
ROOT_WHERE: Final = "$"


# --- the spec ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CompareSpec:
    """One canary's `compare` block, validated and compiled (ignore paths) at construction.

    `headers` keep the names as written (they name the differences); they compare
    case-insensitively. `sample_rate` is in (0, 1]; the caller does the sampling.
    """

    status: bool = False
    headers: tuple[str, ...] = ()
    body: BodyMode | None = None
    ignore: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    sample_rate: float = 1.0
    baseline: str | None = None
    _patterns: tuple[_Pattern, ...] = field(init=False, repr=False, compare=False)
    _shape_queries: tuple[JSONPathQuery, ...] = field(init=False, repr=False, compare=False)
    _value_queries: tuple[JSONPathQuery, ...] = field(init=False, repr=False, compare=False)
    _header_keys: tuple[bytes, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problem = _spec_problem(self)
        if problem is not None:
            raise CompareSpecError(problem)
        patterns: list[_Pattern] = []
        shape: list[JSONPathQuery] = []
        value: list[JSONPathQuery] = []
        for text in self.ignore:
            query = jsonpath_rfc9535.compile(text)
            pattern = _as_pattern(query)
            if pattern is not None:
                patterns.append(pattern)
            elif _reads_values(query):
                value.append(query)
            else:
                shape.append(query)
        object.__setattr__(self, "_patterns", tuple(patterns))
        object.__setattr__(self, "_shape_queries", tuple(shape))
        object.__setattr__(self, "_value_queries", tuple(value))
        keys = tuple(name.lower().encode("ascii") for name in self.headers)
        object.__setattr__(self, "_header_keys", keys)


# Most ignore paths are plain child steps (`$.generated_at`, `$.items[*].id`). Those are
# matched against the few differing locations instead of being run over both documents
# (the library's evaluation is most of judge's cost otherwise). A pattern is one set of
# steps per segment; None in place of a set is a wildcard.
_Pattern = tuple[frozenset[str | int] | None, ...]


def _as_pattern(query: JSONPathQuery) -> _Pattern | None:
    steps: list[frozenset[str | int] | None] = []
    for segment in query.segments:
        if not isinstance(segment, JSONPathChildSegment):
            return None
        keys: set[str | int] = set()
        wildcard = False
        for sel in segment.selectors:
            if isinstance(sel, WildcardSelector):
                wildcard = True
            elif isinstance(sel, NameSelector):
                keys.add(sel.name)
            elif isinstance(sel, IndexSelector) and sel.index >= 0:
                keys.add(sel.index)
            else:
                return None  # negative index, slice, filter: needs the document
        steps.append(None if wildcard else frozenset(keys))
    return tuple(steps)


def _pattern_masks(pattern: _Pattern, location: tuple[str | int, ...]) -> bool:
    """Whether the pattern selects `location` or one of its ancestors."""
    if len(pattern) > len(location):
        return False
    for keys, step in zip(pattern, location, strict=False):
        if keys is not None and step not in keys:
            return False
    # A name selects only in objects (str steps), an index only in arrays (int steps); the
    # sets hold both kinds apart, as "0" != 0. The node exists in the side that differs.
    return True


def _reads_values(query: JSONPathQuery) -> bool:
    """A query with a filter selector looks at values, not only at the document's shape."""
    return any(isinstance(sel, FilterSelector) for seg in query.segments for sel in seg.selectors)


def _spec_problem(spec: CompareSpec) -> str | None:
    if not (spec.status or spec.headers or spec.body is not None):
        return "compare needs at least one of status, header, body"
    if spec.body not in (None, "bytes", "json"):
        return f"body must be bytes or json, not {spec.body!r}"
    seen: set[str] = set()
    for name in spec.headers:
        if not is_token(name):
            return f"invalid header name {name!r}"
        if name.lower() in seen:
            return f"header {name!r} is named twice"
        seen.add(name.lower())
    if spec.ignore and spec.body != "json":
        return "ignore needs body json"
    for path in spec.ignore:
        problem = jsonpath_problem(path)
        if problem is not None:
            return problem
    if len(set(spec.ignore)) != len(spec.ignore):
        return "an ignore path is given twice"
    if isinstance(spec.max_body_bytes, bool) or not isinstance(spec.max_body_bytes, int):
        return "max_body must be a whole number of bytes"
    if spec.max_body_bytes <= 0:
        return "max_body must be positive"
    if not 0.0 < spec.sample_rate <= 1.0:
        return "sample must be in (0%, 100%]"
    if spec.baseline is not None and not spec.baseline:
        return "baseline needs a canary name"
    return None


# The library's messages are mostly clear; these few are not, for someone writing a rule.
_FRIENDLIER: Final[tuple[tuple[re.Pattern[str], str], ...]] = (
    (re.compile(r"^bald descendant segment$"), "'..' must be followed by a name, '*' or '[...]'"),
    (re.compile(r"^unbalanced brackets$"), "a '[' is not closed"),
    (re.compile(r"^expected '\$', found ''$"), "empty query: a JSONPath starts with '$'"),
    (re.compile(r"^expected '\$', found .*$"), "a JSONPath starts with '$'"),
    (
        re.compile(r"^non-singular query is not comparable$"),
        "only a singular query (no '*', '..', slices or filters) can be compared",
    ),
    (
        re.compile(r"^(\w+)\(\) argument (\d+) must be of (\w+)Type$"),
        "an argument of \\1() has the wrong type (\\3 expected)",
    ),
)


def jsonpath_problem(text: str) -> str | None:
    """Why `text` is not a valid RFC 9535 JSONPath query, or None when it is.

    The message names the query and, when known, the 1-based character where it goes wrong.
    """
    try:
        jsonpath_rfc9535.compile(text)
    except JSONPathError as exc:
        message = str(exc.args[0]) if exc.args else type(exc).__name__
        for pattern, friendly in _FRIENDLIER:
            if pattern.match(message):
                message = pattern.sub(friendly, message)
                break
        where = ""
        if exc.token is not None:
            _line, column = exc.token.position()
            where = " (at the end)" if column >= len(text) else f" (at character {column + 1})"
        return f"invalid JSONPath {json.dumps(text, ensure_ascii=False)}: {message}{where}"
    except (RecursionError, ValueError) as exc:  # a pathological query, not a library error
        return f"invalid JSONPath {json.dumps(text, ensure_ascii=False)}: {exc}"
    return None


# --- capturing --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Captured:
    """One response as the comparison sees it.

    `headers` maps each name the spec lists (as written) to its values in order (empty
    when absent). `json` holds the body bytes only for `body json` and only when not
    `too_large`. `complete` is False when the body did not arrive whole.
    """

    status: int
    headers: Mapping[str, tuple[str, ...]]
    length: int
    sha256: str
    json: bytes | None
    too_large: bool
    complete: bool


class Capture:
    """The incremental recorder of one response, fed as it streams.

    `start()` once, `feed()` per body chunk, then exactly one of `finish()` or
    `incomplete()`. Never raises on content; raises `CaptureError` on misuse. Memory:
    at most `max_body_bytes` of kept chunks (chunk objects are kept, not copied, when
    they are `bytes`), released the moment the body grows past it.
    """

    __slots__ = ("_chunks", "_done", "_hash", "_headers", "_kept", "_length", "_spec", "_status")

    def __init__(self, spec: CompareSpec) -> None:
        self._spec = spec
        self._status: int | None = None
        self._headers: dict[str, tuple[str, ...]] = {}
        self._hash = hashlib.sha256()
        self._length = 0
        self._chunks: list[bytes] | None = [] if spec.body == "json" else None
        self._kept = 0
        self._done = False

    def start(self, status: int, headers: Iterable[tuple[bytes | str, bytes | str]]) -> None:
        if self._status is not None or self._done:
            raise CaptureError("start() called twice")
        self._status = status
        spec = self._spec
        if not spec.headers:
            return
        wanted = spec._header_keys
        found: list[list[str]] = [[] for _ in wanted]
        for name, value in headers:
            key = (name.encode("latin-1") if isinstance(name, str) else name).lower()
            if key in wanted:
                text = value.decode("latin-1") if isinstance(value, bytes | bytearray) else value
                found[wanted.index(key)].append(text)
        self._headers = {n: tuple(v) for n, v in zip(spec.headers, found, strict=True)}

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._status is None or self._done:
            raise CaptureError("feed() outside start() .. finish()")
        if not chunk:
            return
        self._hash.update(chunk)
        self._length += len(chunk)
        if self._chunks is None:  # bytes mode, or json that is already too large
            return
        self._kept += len(chunk)
        if self._kept > self._spec.max_body_bytes:
            self._chunks = None  # release at once: memory stays bounded by max_body_bytes
            return
        # A bytearray or memoryview may be reused by its owner after this call: copy those.
        self._chunks.append(chunk if isinstance(chunk, bytes) else bytes(chunk))

    @property
    def too_large(self) -> bool:
        return self._spec.body == "json" and self._chunks is None

    @property
    def kept_bytes(self) -> int:
        """Bytes held for the JSON comparison right now (0 once too large)."""
        return 0 if self._chunks is None else self._kept

    def finish(self) -> Captured:
        """The whole response arrived."""
        return self._close(complete=True)

    def incomplete(self) -> Captured:
        """The body was cut (client left, idle_timeout): the result is judged `skipped`."""
        return self._close(complete=False)

    def _close(self, *, complete: bool) -> Captured:
        if self._status is None or self._done:
            raise CaptureError("finish()/incomplete() outside start() .. finish()")
        self._done = True
        too_large = self.too_large
        body = b"".join(self._chunks) if self._chunks is not None else None
        self._chunks = None
        headers = {n: self._headers.get(n, ()) for n in self._spec.headers}
        return Captured(
            status=self._status,
            headers=MappingProxyType(headers),
            length=self._length,
            sha256=self._hash.hexdigest(),
            json=body,
            too_large=too_large,
            complete=complete,
        )


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
    ok_a, a = _parse(a_body, tagged=True)
    ok_b, b = _parse(b_body, tagged=True)
    if not (ok_a and ok_b):
        return None
    if a == b:
        return []
    try:
        mask: Mask = {}
        # Shape-only queries (names, indices, wildcards, slices, `..`) run on the tagged
        # documents; a query with a filter reads values, so it gets plain ones.
        for query in spec._shape_queries:
            for doc in (a, b):
                if _add_to_mask(mask, (node.location for node in query.find(doc))):
                    return []
        if spec._value_queries:
            for body in (a_body, b_body):
                _ok, plain = _parse(body, tagged=False)
                for query in spec._value_queries:
                    if _add_to_mask(mask, (node.location for node in query.find(plain))):
                        return []
        found: Found = []
        _walk(a, b, [], mask or None, found)
    except (JSONPathError, RecursionError):  # too deep to walk: the bytes still differ
        return None
    patterns = spec._patterns
    return [d for loc, d in found if not any(_pattern_masks(p, loc) for p in patterns)]


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


Found = list[tuple[tuple[str | int, ...], Difference]]


def _walk(a: Any, b: Any, path: list[str | int], mask: Mask | None, out: Found) -> None:
    if a == b:  # exact JSON equality (see _NUMBER); masked nodes can only remove differences
        return
    if type(a) is dict and type(b) is dict:
        for key, value in a.items():
            sub = mask.get(key) if mask else None
            if sub is _MASKED:
                continue
            path.append(key)
            if key in b:
                _walk(value, b[key], path, sub, out)
            else:
                out.append((tuple(path), _one_sided(path, value, on_primary=True)))
            path.pop()
        for key, value in b.items():
            if key in a or (mask and mask.get(key) is _MASKED):
                continue
            path.append(key)
            out.append((tuple(path), _one_sided(path, value, on_primary=False)))
            path.pop()
        return
    if type(a) is list and type(b) is list:
        for i in range(max(len(a), len(b))):
            sub = mask.get(i) if mask else None
            if sub is _MASKED:
                continue
            path.append(i)
            if i < len(a) and i < len(b):
                _walk(a[i], b[i], path, sub, out)
            elif i < len(a):
                out.append((tuple(path), _one_sided(path, a[i], on_primary=True)))
            else:
                out.append((tuple(path), _one_sided(path, b[i], on_primary=False)))
            path.pop()
        return
    where = normalized_path(path)
    out.append(
        (
            tuple(path),
            Difference(
                kind="body", where=where, primary=_encode(_plain(a)), canary=_encode(_plain(b))
            ),
        )
    )


def _one_sided(path: list[str | int], value: Any, *, on_primary: bool) -> Difference:
    encoded = _encode(_plain(value))
    return Difference(
        kind="body",
        where=normalized_path(path),
        primary=encoded if on_primary else None,
        canary=None if on_primary else encoded,
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


# --- the diff record --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestInfo:
    """The request a record names. `query` is the raw query string ('' when none);
    `id` the request id (the `request_id` header's value) or None."""

    method: str
    path: str
    query: str = ""
    id: str | None = None


def format_time(epoch_s: float) -> str:
    """ISO 8601 UTC with milliseconds and `Z`: `2026-12-06T18:00:00.123Z`."""
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def diff_record(
    verdict: Verdict,
    *,
    rule: str,
    request: RequestInfo,
    primary: Captured,
    canary_name: str,
    canary: Captured,
    now: float,
) -> dict[str, Any]:
    """The diff record of a `diff` verdict: a JSON-ready dict (`now` is epoch seconds).

    At most MAX_RECORD_DIFFERENCES differences, `more` counts the rest; `noise` (and
    `noise_more`, its own overflow count) only when there is noise.
    """
    if verdict.result != "diff":
        raise CompareError("only a diff verdict has a diff record")
    shown = verdict.differences[:MAX_RECORD_DIFFERENCES]
    record: dict[str, Any] = {
        "time": format_time(now),
        "rule": rule,
        "request": {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "id": request.id,
        },
        "primary": {"status": primary.status, "length": primary.length, "sha256": primary.sha256},
        "canary": {
            "name": canary_name,
            "status": canary.status,
            "length": canary.length,
            "sha256": canary.sha256,
        },
        "differences": [d.to_json() for d in shown],
        "more": len(verdict.differences) - len(shown),
    }
    if verdict.noise:
        noise = verdict.noise[:MAX_RECORD_DIFFERENCES]
        record["noise"] = [d.to_json() for d in noise]
        record["noise_more"] = len(verdict.noise) - len(noise)
    return record
