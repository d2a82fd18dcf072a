"""The routing table: docs/rules.md "How the routing table decides", steps 1-3."""

from __future__ import annotations

import json
import random
from dataclasses import replace

import pytest

from sidecar.model.compare import CompareSpec
from sidecar.model.config import (
    Config,
    DropHeader,
    PauseSpec,
    PrimarySpec,
    RateSpec,
    RewritePath,
    SetHeader,
    SourceFile,
)
from sidecar.model.endpoint import Endpoint
from sidecar.routing import table as routing
from sidecar.routing.request import RequestView
from sidecar.routing.rule_index import regex_prefix
from sidecar.routing.table import INDEX_MIN_RULES, RoutingTable, Tee, compile_table
from tests.support.routing import CANARIES, canary, config, load_text, or_, req, rule, t

API = t("path", "^=", "/api/")
GET = t("method", "==", "GET")


def tees(table: RoutingTable, **kw: object) -> list[tuple[str, str]]:
    return [(x.canary, x.rule) for x in table.decide(req(**kw))]  # type: ignore[arg-type]


# --- step 1: loop guard ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "mirrored"),
    [
        ([], True),
        ([("X-Mirror", "1")], False),
        ([("x-mirror", "1")], False),  # header names in any case
        ([("X-Mirror", "2")], True),  # another value does not count
        ([("X-Mirror", "1 ")], True),  # exactly that value
        ([("X-Mirror", "0"), ("X-Mirror", "1")], False),  # any line
        ([("X-Shadow", "yes")], False),  # the other canary's mark
        ([("X-Shadow", "1")], True),
    ],
)
def test_loop_guard_exact_mark(headers: list[tuple[str, str]], mirrored: bool) -> None:
    cfg = config(
        [rule("all", ["a", "b"])],
        canaries=[canary("a"), canary("b", mark=("X-Shadow", "yes"))],
    )
    assert bool(compile_table(cfg).decide(req(headers=headers))) is mirrored


def test_loop_guard_counts_a_canary_that_no_rule_uses() -> None:
    cfg = config(
        [rule("all", ["a"])], canaries=[canary("a", mark=None), canary("idle", ("X-Idle", "1"))]
    )
    table = compile_table(cfg)
    assert table.decide(req()) == (Tee("a", "all"),)
    assert table.decide(req(headers=[("X-Idle", "1")])) == ()


def test_mark_off_has_no_guard() -> None:
    cfg = config([rule("all", ["a"])], canaries=[canary("a", mark=None)])
    assert compile_table(cfg).decide(req(headers=[("X-Mirror", "1")])) == (Tee("a", "all"),)


# --- step 2: excludes -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "mirrored"),
    [
        ({"path": "/api/x"}, True),
        ({"path": "/admin/x"}, False),
        ({"path": "/api/x", "client": "10.9.1.1"}, False),
        ({"path": "/api/x", "client": "10.8.1.1"}, True),
        ({"path": "/api/x", "headers": [("X-Debug", "1")]}, False),
    ],
)
def test_any_exclude_stops_everything(kw: dict[str, object], mirrored: bool) -> None:
    cfg = config(
        [rule("all", ["a"]), rule("api", ["b"], when=API)],
        excludes=[
            or_(t("path", "^=", "/admin"), t("client", "in", "10.9.0.0/16")),
            t("header", "exists", key="x-debug"),
        ],
    )
    assert bool(compile_table(cfg).decide(req(**kw))) is mirrored  # type: ignore[arg-type]


# --- step 3: rules in order, one tee per canary ---------------------------------------


def test_rules_in_order_first_rule_wins_each_canary() -> None:
    cfg = config(
        [
            rule("reads", ["v2"], when=GET),
            rule("api", ["v2", "v3"], when=API),
            rule("all", ["v3", "v4"]),
        ]
    )
    table = compile_table(cfg)
    assert tees(table, method="GET", path="/api/x") == [
        ("v2", "reads"),
        ("v3", "api"),
        ("v4", "all"),
    ]
    assert tees(table, method="POST", path="/api/x") == [
        ("v2", "api"),
        ("v3", "api"),
        ("v4", "all"),
    ]
    assert tees(table, method="POST", path="/") == [("v3", "all"), ("v4", "all")]


def test_no_rules_no_tees() -> None:
    assert compile_table(Config()).decide(req()) == ()


def test_rule_without_when_matches_everything() -> None:
    table = compile_table(config([rule("all", ["a"])]))
    assert tees(table, method="DELETE", path="/anything") == [("a", "all")]


def test_a_rule_that_samples_out_leaves_its_canaries_to_later_rules() -> None:
    never = iter(lambda: 0.99, None)
    cfg = config([rule("few", ["a"], rate=0.01), rule("all", ["a"])])
    table = compile_table(cfg, random=lambda: next(never))
    assert tees(table) == [("a", "all")]


def test_decide_stops_once_every_canary_is_chosen() -> None:
    draws: list[int] = []

    def rnd() -> float:
        draws.append(1)
        return 0.0

    cfg = config([rule("first", ["a"]), rule("later", ["a"], rate=0.5)])
    assert tees(compile_table(cfg, random=rnd)) == [("a", "first")]
    assert draws == []  # the later rule could add nothing: it was not even sampled


def test_trace_agrees_with_decide() -> None:
    rules = [
        rule("r0", ["a"], when=GET, rate=0.5),
        rule("r1", ["a", "b"], when=API, rate=0.5, by="header", key="x-user"),
        rule("r2", ["c"], when=or_(GET, t("query", "exists", key="debug")), rate=0.3),
        rule("r3", ["b", "c"]),
    ]
    cfg = config(rules, excludes=[t("path", "^=", "/admin")])
    requests = [
        req(method=m, path=p, query=q, headers=h)
        for m in ("GET", "POST")
        for p in ("/", "/api/x", "/admin")
        for q in ("", "debug")
        for h in ([], [("X-User", "u1")], [("X-User", "u2")], [("X-Mirror", "1")])
    ]
    for seed in range(20):
        for view in requests:
            decided = compile_table(cfg, random=random.Random(seed).random).decide(view)
            traced = compile_table(cfg, random=random.Random(seed).random).trace(view)
            assert traced.tees == decided


def test_trace_says_why() -> None:
    cfg = config(
        [rule("reads", ["a"], when=GET), rule("api", ["a", "b"], when=API)],
        excludes=[t("path", "^=", "/admin")],
    )
    table = compile_table(cfg)
    trace = table.trace(req(method="POST", path="/api/x"))
    assert [(r.rule, r.failing_clause, r.sampled) for r in trace.rules] == [
        ("reads", "method == GET", None),
        ("api", None, True),
    ]
    assert trace.rules[1].tees == (Tee("a", "api"), Tee("b", "api"))
    assert table.trace(req(headers=[("X-Mirror", "1")])).loop_guard == ("x-mirror", "1")
    excluded = table.trace(req(path="/admin/x")).excluded_by
    assert excluded is not None and excluded.when.text == 'path ^= "/admin"'


# --- the compiled table as data -------------------------------------------------------


def test_canaries_mapping_and_config() -> None:
    cfg = config([rule("all", ["a", "b"])])
    table = compile_table(cfg)
    assert table.config is cfg
    assert list(table.canaries) == ["a", "b"]
    assert table.canaries["b"].name == "b"
    with pytest.raises(TypeError):
        table.canaries["c"] = canary("c")  # type: ignore[index]


def test_to_json() -> None:
    a = replace(
        canary("a"),
        rate=RateSpec(burst=200.0, per_second=200.0),
        host="canary.internal",
        body=False,
        transforms=(
            SetHeader(name="X-Shadow", value="true"),
            DropHeader(names=("Authorization", "Cookie")),
            RewritePath(pattern="^/api/v1/", replacement="/api/v2/"),
        ),
    )
    cfg = replace(
        config(
            [
                rule("api", ["a"], when=API, rate=0.1, by="header", key="x-user", line=7),
                rule("all", ["a"], line=9),
            ],
            canaries=[a],
            excludes=[t("path", "^=", "/admin")],
        ),
        listen="0.0.0.0:8080",
        admin=None,
        primary=PrimarySpec(endpoint=Endpoint.parse("http://127.0.0.1:8081"), timeout_s=30.0),
        sources=(SourceFile(path="rules/a.mirror", sha256="ab" * 32),),
        sha256="cd" * 32,
    )
    data = compile_table(cfg).to_json()
    assert json.loads(json.dumps(data)) == data  # plain JSON data
    assert data["listen"] == "0.0.0.0:8080"
    assert data["admin"] is None
    assert data["primary"] == {
        "url": "http://127.0.0.1:8081",
        "timeout_s": 30.0,
        "idle_timeout_s": 60.0,
        "tls": None,
    }
    assert data["listen_tls"] is None
    assert data["canaries"] == [
        {
            "name": "a",
            "servers": [{"url": "http://127.0.0.1:9000", "weight": 1}],
            "workers": 8,
            "queue": 256,
            "timeout_s": 10.0,
            "max_body_bytes": 1 << 20,
            "body": False,
            "mark": {"header": "X-Mirror", "value": "1"},
            "rate": {"burst": 200.0, "per_second": 200.0},
            "host": "canary.internal",
            "transforms": [
                {"set_header": {"name": "X-Shadow", "value": "true"}},
                {"drop_header": ["Authorization", "Cookie"]},
                {"rewrite_path": {"pattern": "^/api/v1/", "replacement": "/api/v2/"}},
            ],
            "compare": None,
            "pause": None,
            "tls": None,
        }
    ]
    assert data["diff_log"] is None
    assert data["request_id"] is None
    assert data["rules"] == [
        {
            "name": "api",
            "when": 'path ^= "/api/"',
            "sample": {"rate": 0.1, "by": "header", "key": "x-user"},
            "to": ["a"],
            "source": "test.mirror:7",
        },
        {"name": "all", "when": None, "sample": None, "to": ["a"], "source": "test.mirror:9"},
    ]
    assert data["excludes"] == [{"when": 'path ^= "/admin"', "source": "test.mirror:1"}]
    assert data["sources"] == [{"path": "rules/a.mirror", "sha256": "ab" * 32}]
    assert data["hash"] == "cd" * 32


def test_to_json_compare_and_diff_log() -> None:
    compared = replace(
        canary("a"),
        compare=CompareSpec(
            status=True,
            headers=("Content-Type",),
            body="json",
            ignore=("$.ts",),
            max_body_bytes=4096,
            sample_rate=0.25,
            baseline="b",
        ),
    )
    cfg = replace(
        config([rule("all", ["a", "b"])], canaries=[compared, canary("b")]),
        diff_log="/var/log/sidecar/diffs.jsonl",
        request_id="x-request-id",
    )
    cfg = replace(
        cfg,
        canaries=(
            cfg.canaries[0],
            replace(cfg.canaries[1], pause=PauseSpec(failures=3, duration_s=0.5)),
        ),
    )
    data = compile_table(cfg).to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["diff_log"] == "/var/log/sidecar/diffs.jsonl"
    assert data["request_id"] == "x-request-id"
    assert data["canaries"][0]["pause"] is None
    assert data["canaries"][1]["pause"] == {"failures": 3, "duration_s": 0.5}
    assert data["canaries"][0]["compare"] == {
        "status": True,
        "headers": ["Content-Type"],
        "body": "json",
        "ignore": ["$.ts"],
        "max_body_bytes": 4096,
        "sample": 0.25,
        "baseline": "b",
    }
    assert data["canaries"][1]["compare"] is None


# --- rule text, end to end ----------------------------------------------------------------


def test_rule_text_end_to_end() -> None:
    cfg = load_text(
        CANARIES
        + """
        mirror reads { when method in (GET, HEAD) and path ^= "/api/" to v2 }
        mirror beta  { when cookie "beta" == "on" or query "beta" exists to v2, v3 }
        mirror rest  { to a }
        exclude when path ^= "/admin" or client in ("10.9.0.0/16")
        exclude when header "X-Debug" exists
        """
    )
    table = compile_table(cfg)
    assert tees(table, path="/api/x") == [("v2", "reads"), ("a", "rest")]
    assert tees(table, path="/x", query="beta") == [("v2", "beta"), ("v3", "beta"), ("a", "rest")]
    assert tees(table, path="/x", headers=[("Cookie", "beta=on")]) == [
        ("v2", "beta"),
        ("v3", "beta"),
        ("a", "rest"),
    ]
    assert tees(table, path="/admin/x") == []
    assert tees(table, client="10.9.0.1") == []
    assert tees(table, headers=[("x-debug", "")]) == []
    assert tees(table, headers=[("X-Mirror", "1")]) == []  # the default mark
    assert tees(table, method="POST", path="/api/x") == [("a", "rest")]


# --- the candidate index of large tables ----------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "prefix"),
    [
        ("^/api/v1/", "/api/v1/"),
        (r"^/items/\d+$", "/items/"),
        ("^/ab*c", "/a"),  # b* may be absent
        ("^/ab?", "/a"),
        ("^/ab{2}", "/a"),
        ("^/ab+", "/ab"),
        ("^/a.c", "/a"),
        ("^/a|^/b", ""),  # alternation
        ("/api", ""),  # unanchored
        ("^(?:/a)", ""),
        ("^[/]a", ""),
    ],
)
def test_regex_prefix(pattern: str, prefix: str) -> None:
    assert regex_prefix(pattern) == prefix


def _big_rules() -> str:
    kinds = [
        'method in (GET, HEAD) and path ^= "/svc{i}/"',
        'header "X-Tenant" == "t{i}"',
        'path ~ "^/items/{i}/[0-9]+$"',
        'query "shard" == "{i}" or cookie "exp" in ("c{i}", "d{i}")',
        'host == "h{i}.example.com" and path *= "/p{i % 7}/"',
        'not path ^= "/svc{i}/"',  # not indexable: a candidate for every request
        'method == POST and path == "/exact/{i}"',
        'path $= ".{i}"',
        'header "X-Tenant" ~ "^t{i}$" or path ^= "/p{i % 7}/"',
    ]
    rules = []
    for i in range(120):
        when_ = kinds[i % len(kinds)].format(i=i, **{"i % 7": i % 7})
        sample = " sample 50%" if i % 4 == 0 else ""
        rules.append(f"mirror r{i} {{ when {when_}{sample} to {['a', 'b', 'c', 'd'][i % 4]} }}")
    return CANARIES + "\n".join(rules) + '\nmirror last { when path ^= "/" to v2 }\n'


def _big_requests() -> list[RequestView]:
    out = []
    for i in range(0, 120, 5):
        out += [
            req(method="GET", path=f"/svc{i}/x"),
            req(method="POST", path=f"/exact/{i}"),
            req(path=f"/items/{i}/42", headers=[("X-Tenant", f"t{i}")]),
            req(path=f"/items/{i}/x", query=f"shard={i}"),
            req(path=f"/q/p{i % 7}/z.{i}", headers=[("Host", f"h{i}.example.com:80")]),
            req(path="/", headers=[("Cookie", f"exp=d{i}"), ("X-Tenant", "none")]),
        ]
    return out


def test_index_agrees_with_a_full_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = load_text(_big_rules())
    assert len(cfg.rules) >= INDEX_MIN_RULES
    indexed = compile_table(cfg)
    assert indexed._index is not None
    monkeypatch.setattr(routing, "INDEX_MIN_RULES", 10**9)
    scanned = compile_table(cfg)
    assert scanned._index is None
    for seed in range(3):
        a = compile_table(cfg, random=random.Random(seed).random)
        monkeypatch.setattr(routing, "INDEX_MIN_RULES", 0)
        b = compile_table(cfg, random=random.Random(seed).random)
        monkeypatch.setattr(routing, "INDEX_MIN_RULES", 10**9)
        assert a._index is None and b._index is not None
        for view in _big_requests():
            assert b.decide(view) == a.decide(view), view
    # Sanity: the generated requests do reach indexed rules, not only the catch-all.
    assert any(len(indexed.decide(v)) > 1 for v in _big_requests())
