"""What a response comparison reads and ignores: `CompareSpec`, checked and compiled once.

Status, the named headers, and the body as bytes or as JSON, minus the `ignore`
JSONPath (RFC 9535) nodes. Construction validates (raising `CompareSpecError`
with a sentence fit for a diagnostic) and compiles the ignore paths; the engine
(`sidecar.shadow.compare`) captures and judges with it. Also the comparison's
error tree, its bounds and its result vocabulary.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final, Literal

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


def pattern_masks(pattern: _Pattern, location: tuple[str | int, ...]) -> bool:
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
