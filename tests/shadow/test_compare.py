"""sidecar.shadow.compare: capture, judge, noise and the diff record, as plain functions."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.model.compare import (
    DEFAULT_MAX_BODY_BYTES,
    MAX_RECORD_DIFFERENCES,
    MAX_VALUE_CHARS,
    PRIMARY_FAILED,
    CaptureError,
    CompareError,
    CompareSpec,
    CompareSpecError,
    jsonpath_problem,
)
from sidecar.shadow.compare.capture import Capture, Captured
from sidecar.shadow.compare.judge import Difference, Verdict, judge, normalized_path
from sidecar.shadow.compare.record import RequestInfo, diff_record, format_time

JSON = CompareSpec(body="json")
BYTES = CompareSpec(body="bytes")


def capture(
    spec: CompareSpec,
    body: bytes | str | Any = b"",
    *,
    status: int = 200,
    headers: list[tuple[bytes, bytes]] | None = None,
    chunk: int = 7,
    complete: bool = True,
) -> Captured:
    if not isinstance(body, bytes | str):
        body = json.dumps(body)
    data = body.encode() if isinstance(body, str) else body
    cap = Capture(spec)
    cap.start(status, headers or [])
    for i in range(0, len(data), chunk):
        cap.feed(data[i : i + chunk])
    return cap.finish() if complete else cap.incomplete()


def body_diffs(spec: CompareSpec, a: Any, b: Any) -> list[tuple[str, str | None, str | None]]:
    verdict = judge(spec, capture(spec, a), capture(spec, b))
    return [(d.where, d.primary, d.canary) for d in verdict.differences]


# --- JSON rules, table-driven -------------------------------------------------------------------

CASES: list[tuple[str, tuple[str, ...], Any, Any, list[tuple[str, str | None, str | None]]]] = [
    ("equal", (), {"a": 1}, {"a": 1}, []),
    ("key order ignored", (), '{"a":1,"b":2}', '{"b":2,"a":1}', []),
    ("1 == 1.0", (), '{"n":1}', '{"n":1.0}', []),
    ("1e2 == 100", (), "[1e2]", "[100]", []),
    ("true != 1", (), '{"f":true}', '{"f":1}', [("$['f']", "true", "1")]),
    ("false != 0", (), "[false]", "[0]", [("$[0]", "false", "0")]),
    ("null != missing", (), '{"a":null}', "{}", [("$['a']", "null", None)]),
    ("string != number", (), '{"a":"1"}', '{"a":1}', [("$['a']", '"1"', "1")]),
    (
        "leaf",
        (),
        {"items": [{"price": 9.5}]},
        {"items": [{"price": 9.05}]},
        [("$['items'][0]['price']", "9.5", "9.05")],
    ),
    (
        "nested missing key on canary",
        (),
        {"a": {"b": {"c": 1, "d": 2}}},
        {"a": {"b": {"c": 1}}},
        [("$['a']['b']['d']", "2", None)],
    ),
    (
        "nested missing key on primary",
        (),
        {"a": {}},
        {"a": {"x": [1]}},
        [("$['a']['x']", None, "[1]")],
    ),
    ("arrays in order", (), [1, 2], [2, 1], [("$[0]", "1", "2"), ("$[1]", "2", "1")]),
    (
        "canary array longer",
        (),
        {"l": [1]},
        {"l": [1, 2, 3]},
        [("$['l'][1]", None, "2"), ("$['l'][2]", None, "3")],
    ),
    ("primary array longer", (), [1, {"k": 2}], [1], [("$[1]", '{"k":2}', None)]),
    ("type change object vs array", (), {"a": {}}, {"a": []}, [("$['a']", "{}", "[]")]),
    ("ignore name", ("$.ts",), {"ts": 1, "v": 1}, {"ts": 2, "v": 1}, []),
    ("ignore only in primary", ("$.debug",), {"debug": 1}, {}, []),
    ("ignore only in canary", ("$.debug",), {}, {"debug": {"x": 1}}, []),
    (
        "ignore wildcard",
        ("$.items[*].id",),
        {"items": [{"id": 1, "p": 1}, {"id": 2, "p": 2}]},
        {"items": [{"id": 7, "p": 1}, {"id": 8, "p": 3}]},
        [("$['items'][1]['p']", "2", "3")],
    ),
    (
        "ignore descendant",
        ("$..etag",),
        {"a": {"etag": 1}, "b": [{"etag": 2}]},
        {"a": {"etag": 3}, "b": [{"etag": 4}]},
        [],
    ),
    (
        "ignore filter, selects in primary",
        ("$.items[?@.volatile == true]",),
        {"items": [{"volatile": True, "v": 1}, {"v": 2}]},
        {"items": [{"volatile": False, "v": 9}, {"v": 3}]},
        [("$['items'][1]['v']", "2", "3")],
    ),
    (
        "ignore filter, selects in canary only",
        ("$.items[?@.v > 5]",),
        {"items": [{"v": 1}]},
        {"items": [{"v": 9}]},
        [],
    ),
    ("ignore negative index", ("$.l[-1]",), {"l": [1, 2, 3]}, {"l": [1, 2, 4]}, []),
    ("ignore slice", ("$.l[1:]",), {"l": [1, 2, 3]}, {"l": [1, 5, 6, 7]}, []),
    ("ignore root", ("$",), {"a": 1}, {"b": 2}, []),
    ("ignore name does not select an index", ("$['0']",), [1], [2], [("$[0]", "1", "2")]),
    ("escaped names", (), {"it's\n\\": 1}, {"it's\n\\": 2}, [("$['it\\'s\\n\\\\']", "1", "2")]),
    ("unicode kept", (), {"é": "ü"}, {"é": "ö"}, [("$['é']", '"ü"', '"ö"')]),
]


@pytest.mark.parametrize(
    ("ignore", "primary", "canary", "expected"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_json_rules(
    ignore: tuple[str, ...], primary: Any, canary: Any, expected: list[tuple[str, Any, Any]]
) -> None:
    spec = CompareSpec(body="json", ignore=ignore)
    assert body_diffs(spec, primary, canary) == expected
    verdict = judge(spec, capture(spec, primary), capture(spec, canary))
    assert verdict.result == ("diff" if expected else "match")


def test_not_json_falls_back_to_bytes() -> None:
    spec = CompareSpec(body="json")
    diffs = body_diffs(spec, "<html>oops</html>", {"a": 1})
    assert diffs == [("$", '"<html>oops</html>"', '"{\\"a\\": 1}"')]
    assert body_diffs(spec, "not json", "not json") == []
    assert body_diffs(spec, "[NaN]", "[1]")[0][0] == "$"  # Python's json extensions are not JSON


def test_json_whitespace_only_difference_is_a_match() -> None:
    assert body_diffs(JSON, '{"a": [1, 2]}', '{\n  "a" : [1,2]\n}\n') == []


def test_bytes_mode_compares_length_and_sha256() -> None:
    diffs = body_diffs(BYTES, '{"a":1}', '{"a": 1}')
    digest = hashlib.sha256(b'{"a":1}').hexdigest()
    assert diffs == [
        ("$", json.dumps({"length": 7, "sha256": digest}, separators=(",", ":")), diffs[0][2])
    ]
    assert body_diffs(BYTES, b"same", b"same") == []


def test_values_cut_to_256_characters_with_marker() -> None:
    verdict = judge(JSON, capture(JSON, {"s": "x" * 1000}), capture(JSON, {"s": "y"}))
    (d,) = verdict.differences
    assert d.primary is not None and len(d.primary) == MAX_VALUE_CHARS
    assert d.primary.endswith("…") and d.primary.startswith('"xxx')
    assert d.canary == '"y"'


# --- status and headers ---------------------------------------------------------------------------


def test_status_and_headers() -> None:
    spec = CompareSpec(status=True, headers=("Content-Type", "Set-Cookie", "Location"))
    p = capture(
        spec,
        status=200,
        headers=[(b"content-type", b"text/html"), (b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")],
    )
    c = capture(
        spec,
        status=404,
        headers=[(b"Content-Type", b"text/html"), (b"set-cookie", b"b=2"), (b"set-cookie", b"a=1")],
    )
    assert p.headers["Set-Cookie"] == ("a=1", "b=2") and p.headers["Location"] == ()
    verdict = judge(spec, p, c)
    assert [(d.kind, d.where, d.primary, d.canary) for d in verdict.differences] == [
        ("status", "status", "200", "404"),
        ("header", "Set-Cookie", '["a=1","b=2"]', '["b=2","a=1"]'),
    ]


def test_headers_absent_on_both_sides_match_and_str_pairs_work() -> None:
    spec = CompareSpec(headers=("ETag",))
    c1 = Capture(spec)
    c1.start(200, [("etag", '"x"')])
    assert c1.finish().headers == {"ETag": ('"x"',)}
    assert judge(spec, capture(spec), capture(spec, status=500)).result == "match"


def test_differences_sorted_status_header_body() -> None:
    spec = CompareSpec(status=True, headers=("A",), body="json")
    p = capture(spec, {"z": 1, "a": 1}, status=200, headers=[(b"a", b"1")])
    c = capture(spec, {"z": 2, "a": 2}, status=201, headers=[(b"a", b"2")])
    assert [d.where for d in judge(spec, p, c).differences] == ["status", "A", "$['z']", "$['a']"]


# --- capture and skips ----------------------------------------------------------------------------


def test_too_large_releases_the_buffer_at_once() -> None:
    spec = CompareSpec(body="json", max_body_bytes=100)
    cap = Capture(spec)
    cap.start(200, [])
    for _ in range(9):
        cap.feed(b"x" * 10)
    assert cap.kept_bytes == 90 and not cap.too_large
    cap.feed(b"y" * 11)
    assert cap.too_large and cap.kept_bytes == 0 and cap._chunks is None
    for _ in range(1000):
        cap.feed(b"z" * 1000)
    assert cap.kept_bytes == 0
    big = cap.finish()
    assert big.too_large and big.json is None and big.length == 1_000_101
    small = capture(spec, b"[]")
    assert judge(spec, small, big) == Verdict.skipped("too_large")
    assert judge(spec, big, small).reason == "too_large"


def test_exactly_max_body_is_kept_and_bytes_mode_keeps_nothing() -> None:
    spec = CompareSpec(body="json", max_body_bytes=10)
    over = capture(spec, b"01234567890")
    assert over.too_large and over.json is None
    ten = capture(spec, b"0123456789")
    assert ten.json == b"0123456789" and not ten.too_large
    by = capture(BYTES, b"x" * 5000)
    assert by.json is None and not by.too_large and by.length == 5000


def test_capture_hashes_every_mode_and_copies_mutable_chunks() -> None:
    spec = CompareSpec(status=True)
    cap = capture(spec, b"hello world", chunk=3)
    assert cap.length == 11 and cap.sha256 == hashlib.sha256(b"hello world").hexdigest()
    c = Capture(JSON)
    c.start(200, [])
    buf = bytearray(b"[1]")
    c.feed(buf)
    buf[1:2] = b"2"
    assert c.finish().json == b"[1]"


def test_capture_misuse_raises() -> None:
    cap = Capture(JSON)
    with pytest.raises(CaptureError):
        cap.feed(b"x")
    cap.start(200, [])
    with pytest.raises(CaptureError):
        cap.start(200, [])
    cap.finish()
    with pytest.raises(CaptureError):
        cap.feed(b"x")
    with pytest.raises(CaptureError):
        cap.finish()


def test_primary_incomplete_and_failed() -> None:
    p = capture(JSON, {"a": 1}, complete=False)
    assert judge(JSON, p, capture(JSON, {"a": 2})) == Verdict.skipped("primary_incomplete")
    assert Verdict.skipped(PRIMARY_FAILED).reason == "primary_failed"
    with pytest.raises(CompareError):
        judge(JSON, capture(JSON, {}), capture(JSON, {}, complete=False))


# --- noise ----------------------------------------------------------------------------------------


def test_noise_moves_baseline_differences_apart() -> None:
    spec = CompareSpec(status=True, body="json")
    primary = capture(spec, {"ts": 1, "price": 9.5, "id": "a"})
    canary = capture(spec, {"ts": 2, "price": 9.05, "id": "b"})
    baseline = capture(spec, {"ts": 3, "price": 9.5, "id": "c"})
    verdict = judge(spec, primary, canary, baseline)
    assert verdict.result == "diff"
    assert [d.where for d in verdict.differences] == ["$['price']"]
    assert [d.where for d in verdict.noise] == ["$['ts']", "$['id']"]
    assert verdict.noise_kinds == {"body"} and verdict.difference_kinds == {"body"}


def test_all_noise_is_a_match_and_unusable_baseline_is_ignored() -> None:
    spec = CompareSpec(body="json", max_body_bytes=64)
    primary = capture(spec, {"ts": 1})
    canary = capture(spec, {"ts": 2})
    verdict = judge(spec, primary, canary, capture(spec, {"ts": 3}))
    assert verdict.result == "match" and len(verdict.noise) == 1
    assert judge(spec, primary, canary, None).result == "diff"
    cut = capture(spec, {"ts": 3}, complete=False)
    assert judge(spec, primary, canary, cut).result == "diff"
    huge = capture(spec, {"ts": "x" * 100})
    assert judge(spec, primary, canary, huge).result == "diff"


# --- diff record ----------------------------------------------------------------------------------


def test_diff_record_shape_and_cap() -> None:
    spec = CompareSpec(status=True, body="json")
    primary = capture(spec, {f"k{i:02d}": i for i in range(30)}, status=200)
    canary = capture(spec, {f"k{i:02d}": -i - 1 for i in range(30)}, status=500)
    verdict = judge(spec, primary, canary)
    record = diff_record(
        verdict,
        rule="api_reads",
        request=RequestInfo(method="GET", path="/api/items", query="page=2", id="ab" * 16),
        primary=primary,
        canary_name="v2",
        canary=canary,
        now=1796580000.1234,
    )
    assert list(record) == [
        "time", "rule", "request", "primary", "canary", "differences", "more"
    ]  # fmt: skip
    assert record["time"] == "2026-12-06T18:00:00.123Z"
    assert record["request"] == {
        "method": "GET", "path": "/api/items", "query": "page=2", "id": "ab" * 16
    }  # fmt: skip
    assert record["primary"] == {"status": 200, "length": primary.length, "sha256": primary.sha256}
    assert record["canary"]["name"] == "v2" and record["canary"]["status"] == 500
    assert len(record["differences"]) == MAX_RECORD_DIFFERENCES
    assert record["more"] == 31 - MAX_RECORD_DIFFERENCES
    assert record["differences"][0] == {
        "kind": "status", "where": "status", "primary": "200", "canary": "500"
    }  # fmt: skip
    assert record["differences"][1]["where"] == "$['k00']"
    json.dumps(record)  # JSON-ready


def test_diff_record_noise_and_only_for_diff() -> None:
    spec = CompareSpec(body="json")
    p, c, b = (capture(spec, {"ts": t, "v": v}) for t, v in ((1, 1), (2, 2), (3, 1)))
    verdict = judge(spec, p, c, b)
    req = RequestInfo(method="GET", path="/")
    record = diff_record(
        verdict, rule="r", request=req, primary=p, canary_name="v2", canary=c, now=0
    )
    assert record["noise"] == [{"kind": "body", "where": "$['ts']", "primary": "1", "canary": "2"}]
    assert record["noise_more"] == 0 and record["request"]["id"] is None
    with pytest.raises(CompareError):
        diff_record(
            judge(spec, p, p), rule="r", request=req, primary=p, canary_name="v", canary=p, now=0
        )


def test_format_time() -> None:
    assert format_time(0) == "1970-01-01T00:00:00.000Z"
    assert format_time(1.9999) == "1970-01-01T00:00:01.999Z"


# --- spec validation ------------------------------------------------------------------------------

SPEC_ERRORS: list[tuple[dict[str, Any], str]] = [
    ({}, "at least one"),
    ({"status": True, "ignore": ("$.a",)}, "ignore needs body json"),
    ({"body": "json", "ignore": ("$.",)}, "invalid JSONPath"),
    ({"body": "json", "ignore": ("$.a", "$.a")}, "twice"),
    ({"headers": ("A", "a")}, "named twice"),
    ({"headers": ("bad name",)}, "invalid header name"),
    ({"body": "json", "max_body_bytes": 0}, "positive"),
    ({"body": "json", "sample_rate": 0.0}, "sample"),
    ({"body": "json", "sample_rate": 1.5}, "sample"),
    ({"body": "text"}, "bytes or json"),
    ({"status": True, "baseline": ""}, "baseline"),
]


@pytest.mark.parametrize(("kwargs", "message"), SPEC_ERRORS)
def test_spec_invariants(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(CompareSpecError, match=message):
        CompareSpec(**kwargs)


def test_spec_defaults() -> None:
    spec = CompareSpec(status=True)
    assert spec.max_body_bytes == DEFAULT_MAX_BODY_BYTES == 1 << 20
    assert spec.sample_rate == 1.0 and spec.baseline is None and spec.body is None


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("$.", "unexpected end of expression (at the end)"),
        ("$.a b", "found 'b' (at character 5)"),
        ("$..", "'..' must be followed by a name"),
        ("$[", "a '[' is not closed"),
        ("", "empty query"),
        ("items[0]", "a JSONPath starts with '$'"),
        ("$[?@.* == 1]", "only a singular query"),
        ("$[?length(@.*) < 3]", "argument of length() has the wrong type"),
        ("$[?nope(@)]", "function 'nope' is not defined"),
        ("$['a]", "unclosed string"),
    ],
)
def test_jsonpath_problem_messages(text: str, fragment: str) -> None:
    problem = jsonpath_problem(text)
    assert problem is not None and fragment in problem
    assert problem.startswith(f"invalid JSONPath {json.dumps(text)}: ")
    assert "bald" not in problem and "Type" not in problem


@pytest.mark.parametrize("text", ["$", "$.a", "$['a'][0]", "$..x", "$.a[?@.b > 1]", "$[1:2]"])
def test_jsonpath_valid(text: str) -> None:
    assert jsonpath_problem(text) is None


def test_normalized_path() -> None:
    assert normalized_path(["items", 0, "price"]) == "$['items'][0]['price']"
    assert normalized_path([]) == "$"
    assert normalized_path(["\x01\t'"]) == "$['\\u0001\\t\\'']"


def test_difference_and_verdict_invariants() -> None:
    with pytest.raises(CompareError):
        Verdict(result="diff")
    with pytest.raises(CompareError):
        Verdict(result="skipped")
    d = Difference(kind="body", where="$", primary=None, canary="1")
    assert d.to_json() == {"kind": "body", "where": "$", "primary": None, "canary": "1"}


# --- judge(x, x) is a match for any JSON value ------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**60), max_value=2**60)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=25,
)


def _reordered(value: Any) -> Any:
    """The same JSON value written differently: keys reversed, integral numbers as floats."""
    if isinstance(value, dict):
        return {k: _reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [_reordered(v) for v in value]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) < 2**53:
        return float(value)
    return value


@settings(max_examples=300, deadline=None)
@given(json_values)
def test_judge_x_x_is_always_match(value: Any) -> None:
    spec = CompareSpec(status=True, body="json", ignore=("$.a[*]",))
    a = capture(spec, json.dumps(value))
    b = capture(spec, json.dumps(_reordered(value), indent=1))
    assert judge(spec, a, a).result == "match"
    verdict = judge(spec, a, b)
    assert verdict.result == "match", verdict.differences


def _leaves(value: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    """Paths of the scalars and of the empty containers."""
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))]
    if isinstance(value, list) and value:
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))]
    return [path]


def _replaced(value: Any, path: tuple[str | int, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value) if isinstance(value, dict) else list(value)
    copy[path[0]] = _replaced(value[path[0]], path[1:], new)  # type: ignore[index]
    return copy


@settings(max_examples=300, deadline=None)
@given(json_values, st.data())
def test_one_changed_leaf_is_one_difference_at_its_path(value: Any, data: st.DataObject) -> None:
    path = data.draw(st.sampled_from(_leaves(value)))
    old = value
    for step in path:
        old = old[step]
    new = data.draw(
        json_values.filter(
            lambda v: json.dumps(v) != json.dumps(old) and not isinstance(v, dict | list)
        )
    )
    if (
        isinstance(old, int | float)
        and not isinstance(old, bool)
        and isinstance(new, int | float)
        and not isinstance(new, bool)
        and old == new
    ):
        return  # 1 and 1.0: the same JSON number
    spec = CompareSpec(body="json")
    verdict = judge(
        spec,
        capture(spec, json.dumps(value)),
        capture(spec, json.dumps(_replaced(value, path, new))),
    )
    assert [d.where for d in verdict.differences] == [normalized_path(path)]
    ignoring = CompareSpec(body="json", ignore=(normalized_path(path),))
    assert (
        judge(
            ignoring,
            capture(spec, json.dumps(value)),
            capture(spec, json.dumps(_replaced(value, path, new))),
        ).result
        == "match"
    )
