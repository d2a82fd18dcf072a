"""`sidecar explain`: golden traces against the example rules/, usage errors, the trace itself."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.dsl import loads
from sidecar.routing.table import compile_table
from sidecar.tools.explain import always_in, explain, request_view, to_json, to_text

ROOT = Path(__file__).resolve().parents[2]
CASES = Path(__file__).resolve().parent / "explain" / "cases"
RULES = str(ROOT / "rules")

# name -> explain arguments (after the rules path)
REQUESTS: dict[str, list[str]] = {
    "api-read-sampled-user": ["--request", "GET /api/items?page=2", "-H", "X-User-Id: 29"],
    "api-read-unsampled-user": ["--request", "GET /api/items", "-H", "X-User-Id: 42"],
    "api-read-random-draw": ["--request", "GET /api/items"],
    "api-read-debug": ["--request", "GET /api/items", "-H", "X-Debug: 1", "-H", "X-User-Id: 29"],
    "api-write-both-canaries": ["--request", "POST /api/v1/orders/1", "--client", "10.0.0.7"],
    "api-write-oversize-body": [
        "--request",
        "POST /api/v1/carts/9",
        "--client",
        "10.0.0.7",
        "--body-size",
        "2000000",
    ],
    "api-write-unsampled": ["--request", "PUT /api/v1/orders/1", "--client", "10.0.0.5"],
    "search-beta": [
        "--request",
        "GET /search?q=a",
        "-H",
        "Host: shop.example.com:8443",
        "-H",
        "Cookie: beta=1",
    ],
    "search-no-cookie": ["--request", "GET /search", "-H", "Host: shop.example.com"],
    "admin-excluded": ["--request", "GET /admin/users"],
    "client-excluded": ["--request", "GET /api/items", "--client", "10.9.1.1"],
    "static-excluded": ["--request", "GET /api/app.css", "-H", "X-User-Id: 29"],
    "loop-guard": ["--request", "GET /api/items", "-H", "X-Mirror: 1"],
    "other-mark-value": ["--request", "GET /api/items", "-H", "X-Mirror: 2", "-H", "X-User-Id: 29"],
}


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["explain", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_golden_trace(name: str, capsys: pytest.CaptureFixture[str], regen_goldens: bool) -> None:
    code, text, err = run(capsys, RULES, *REQUESTS[name])
    assert (code, err) == (0, "")
    code, doc, err = run(capsys, RULES, *REQUESTS[name], "--format", "json")
    assert (code, err) == (0, "")
    parsed = json.loads(doc)
    assert set(parsed) == {"loop_guard", "excluded_by", "rules", "canaries"}
    got = (
        text.replace(RULES + "/", "rules/") + "--- json ---\n" + doc.replace(RULES + "/", "rules/")
    )
    golden = CASES / f"{name}.expected"
    if regen_goldens:
        golden.write_text(got, encoding="utf-8")
    assert got == golden.read_text(encoding="utf-8")


def test_json_shape_is_spec_8() -> None:
    result = loads(
        "primary http://p:1\ncanary v2 { server http://c:1 }\n"
        'mirror api_reads { when path ^= "/api/" sample 10% by header "X-User-Id" to v2 }\n'
    )
    assert result.config is not None
    table = compile_table(result.config, random=always_in)
    view = request_view("GET /api/items", ["X-User-Id: 29"])
    doc = to_json(explain(table, view))
    assert doc == {
        "loop_guard": False,
        "excluded_by": None,
        "rules": [
            {
                "name": "api_reads",
                "matched": True,
                "failed_clause": None,
                "sampling": {"rate": 0.1, "key": "29", "position": 0.033911, "in": True},
            }
        ],
        "canaries": [
            {"name": "v2", "rule": "api_reads", "admission": "dispatched", "compare": None}
        ],
    }


def test_says_whether_each_tee_is_compared() -> None:
    result = loads(
        "canary v1 { server http://c:1 compare { status } }\n"
        "canary v2 { server http://c:2 compare { body json sample 10% baseline v1 } }\n"
        "canary v3 { server http://c:3 }\n"
        "canary v4 { server http://c:4 max_body 1KiB compare { status } }\n"
        "mirror all { to v1, v2, v3, v4 }\n"
    )
    assert result.config is not None
    table = compile_table(result.config, random=always_in)
    e = explain(table, request_view("POST /x"), body_size=2048)
    assert to_text(e)[-4:] == [
        "canary v1 (rule all): dispatched; compared (100%)",
        "canary v2 (rule all): dispatched; compared 10% of completed tees, noise baseline v1",
        "canary v3 (rule all): dispatched; not compared",
        "canary v4 (rule all): dropped_oversize; not compared (not dispatched)",
    ]
    compare = {c["name"]: c["compare"] for c in to_json(e)["canaries"]}
    assert compare == {
        "v1": {"sample": 1.0, "baseline": None},
        "v2": {"sample": 0.1, "baseline": "v1"},
        "v3": None,
        "v4": {"sample": 1.0, "baseline": None},
    }


def test_body_off_is_dispatched_whatever_the_size(capsys: pytest.CaptureFixture[str]) -> None:
    # v3 has `body off`, v2 `max_body 1MiB`: only v2 drops the oversize body.
    args = ["--request", "POST /api/v1/orders/1", "--client", "10.0.0.7", "--format", "json"]
    code, out, _ = run(capsys, RULES, *args, "--body-size", str((1 << 20) + 1))
    assert code == 0
    admissions = {c["name"]: c["admission"] for c in json.loads(out)["canaries"]}
    assert admissions == {"v2": "dropped_oversize", "v3": "dispatched"}
    code, out, _ = run(capsys, RULES, *args, "--body-size", str(1 << 20))
    assert {c["admission"] for c in json.loads(out)["canaries"]} == {"dispatched"}


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--request", "GET"], "METHOD /path?query"),
        (["--request", "get /x"], "invalid method"),
        (["--request", "GET x"], "must start with '/'"),
        (["--request", "GET /x", "-H", "no colon"], '"Name: value"'),
        (["--request", "GET /x", "-H", "Bad Name: v"], '"Name: value"'),
        (["--request", "GET /x", "--client", "nowhere"], "IP address"),
        (["--request", "GET /x", "--body-size", "-1"], "--body-size"),
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, RULES, *argv)
    assert code == 2 and out == ""
    assert message in err and "Traceback" not in err


def test_missing_path_is_a_usage_error(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = run(capsys, str(tmp_path / "nope"), "--request", "GET /")
    assert code == 2 and "no such file" in err


def test_configuration_errors_print_diagnostics(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.mirror"
    bad.write_text("mirror m { to nowhere }\n")
    code, out, _ = run(capsys, str(bad), "--request", "GET /")
    assert code == 1
    assert "unknown canary" in out and "[unknown-canary]" in out and out.endswith("in 1 file\n")
    code, out, _ = run(capsys, str(bad), "--request", "GET /", "--format", "json")
    assert code == 1 and "unknown-canary" in {d["code"] for d in json.loads(out)}


def test_host_header_comes_from_h() -> None:
    view = request_view("GET /", ["Host: Shop.Example.COM:8080"])
    assert view.host == "shop.example.com"
    assert request_view("GET /").host == ""


def test_rules_after_every_canary_is_chosen_are_not_evaluated() -> None:
    result = loads(
        "canary a { server http://c:1 }\n"
        "mirror first { to a }\n"
        'mirror later { when path ^= "/x" sample 50% by header "K" to a }\n'
    )
    assert result.config is not None
    table = compile_table(result.config, random=always_in)
    trace = table.trace(request_view("GET /x", ["K: 29"]))
    later = trace.rules[1]
    assert not later.evaluated and later.failing_clause is None and later.tees == ()
    assert later.sample is not None and later.sample.sampled_in is True  # keyed: exact anyway
    doc = to_json(explain(table, request_view("GET /y")))
    assert doc["rules"][1]["failed_clause"] == 'path ^= "/x"'


def test_failed_clause_keeps_the_parentheses_of_a_group() -> None:
    # The source text of the first clause that failed, here the whole group.
    result = loads(
        "canary a { server http://c:1 }\n"
        'mirror r1 { when method == GET and (path == "/a" or path == "/b") to a }\n'
    )
    assert result.config is not None
    table = compile_table(result.config, random=always_in)
    doc = to_json(explain(table, request_view("GET /c")))
    assert doc["rules"][0]["failed_clause"] == '(path == "/a" or path == "/b")'


def test_large_tables_trace_through_the_index() -> None:
    rules = "".join(f'mirror r{i} {{ when path == "/p{i}" to a }}\n' for i in range(40))
    result = loads("canary a { server http://c:1 }\n" + rules)
    assert result.config is not None
    table = compile_table(result.config, random=always_in)
    for path in ("/p0", "/p17", "/p39", "/none"):
        view = request_view(f"GET {path}")
        trace = table.trace(view)
        assert trace.tees == table.decide(request_view(f"GET {path}"))
        matched = [r.rule for r in trace.rules if r.failing_clause is None]
        assert matched == ([] if path == "/none" else [f"r{path[2:]}"])


def test_a_canary_with_pause_says_what_a_pause_does() -> None:
    result = loads(
        "canary v1 { server http://c:1 pause after 5 failures for 30s }\n"
        "canary v2 { server http://c:2 }\n"
        "mirror all { to v1, v2 }\n"
    )
    assert result.config is not None
    e = explain(compile_table(result.config, random=always_in), request_view("GET /x"))
    assert to_text(e)[-2:] == [
        "canary v1 (rule all): dispatched (dropped_paused while paused: after 5 failures"
        " for 30s); not compared",
        "canary v2 (rule all): dispatched; not compared",
    ]
