"""Validation, table-driven: which source gives which codes, and the Config it builds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sidecar.dsl import ast, load, loads
from sidecar.dsl.validate import CODES
from sidecar.model import config as cfg
from sidecar.model.compare import CompareSpec

OK = """
primary http://127.0.0.1:8081
canary v2 { server http://127.0.0.1:8091 }
mirror all { when method == DELETE to v2 }
"""


def codes(src: str) -> list[str]:
    return [d.code for d in loads(src, "v.mirror").diagnostics]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ("", []),
        ("listen 127.0.0.1:1 listen 127.0.0.1:2", ["duplicate-statement"]),
        ("admin off admin 127.0.0.1:2", ["duplicate-statement"]),
        ("primary http://127.0.0.1:2", ["duplicate-statement"]),
        ("listen [::1]:8080 admin off", []),
        ("listen localhost:0", ["invalid-address"]),
        ("listen [zz]:80", ["invalid-address"]),
        ("canary v2 { server http://127.0.0.1:1 }", ["duplicate-canary"]),
        ("mirror all { to v2 }", ["duplicate-mirror"]),
        ("mirror x { to v2, v2 }", ["duplicate-target"]),
        ("mirror x { when method == GET to v9 }", ["unknown-canary"]),
        ("mirror x { when method == GET }", ["missing-to"]),
        ('mirror x { when method == GET when path == "/" to v2 }', ["duplicate-statement"]),
        ("mirror x { sample 1% sample 2% to v2 }", ["duplicate-statement"]),
        ("mirror x { when method == GET to v2 to v2 }", ["duplicate-statement"]),
        ("canary v3 { workers 2 } mirror x { when method == GET to v3 }", ["missing-server"]),
        ("canary v3 { server http://127.0.0.1:1 } ", ["unused-canary"]),
        ("mirror x { when method == GET sample 0% to v2 }", ["sample-out-of-range"]),
        ("mirror x { when method == GET sample 100% to v2 }", []),
        ("mirror x { when method == GET sample 1.0 to v2 }", []),
        ("mirror x { when method == GET sample 1.01 to v2 }", ["sample-out-of-range"]),
        ('mirror x { when header "a b" exists to v2 }', ["invalid-header-name"]),
        ('mirror x { when path ~ "(" to v2 }', ["invalid-regex"]),
        ('mirror x { when path !~ "[" to v2 }', ["invalid-regex"]),
        ('mirror x { when client in ("1.2.3.4", "10.0.0.0/8", "::1") to v2 }', []),
        ('mirror x { when client in ("1.2.3.400") to v2 }', ["invalid-cidr"]),
        ("mirror x { when method in (GET, M-SEARCH) to v2 }", []),
        ("mirror x { when method == get to v2 }", ["invalid-method"]),
        ('mirror x { to v2 } mirror y { when path == "/" to v2 }', ["unreachable-rule"]),
        ("mirror x { sample 100% to v2 } mirror y { to v2 }", ["unreachable-rule"]),
        ("mirror x { sample 50% to v2 } mirror y { to v2 }", []),
        ("mirror x { when method == GET to v2 } mirror y { to v2 }", []),
    ],
)
def test_codes(extra: str, expected: list[str]) -> None:
    assert codes(OK + extra) == expected


@pytest.mark.parametrize(
    ("stmt", "expected"),
    [
        ("workers 1", []),
        ("workers 1024", []),
        ("workers 0", ["workers-out-of-range"]),
        ("workers 1025", ["workers-out-of-range"]),
        ("workers 2.5", ["workers-out-of-range"]),
        ("queue 0", []),
        ("queue 1.5", ["invalid-number"]),
        ("timeout 0ms", ["invalid-duration"]),
        ("timeout 5d", ["invalid-duration"]),
        ("max_body 0B", []),
        ("max_body 1TB", ["invalid-size"]),
        ("rate 0/s", ["invalid-rate"]),
        ("rate 5/d", ["invalid-rate"]),
        ('host "v2.internal:8443"', []),
        ('host ""', ["invalid-host"]),
        ('set header "Keep-Alive" "x"', ["hop-by-hop-header"]),
        ('set header "TE" "x"', ["hop-by-hop-header"]),
        ('set header "Trailer" "x"', ["hop-by-hop-header"]),
        ('set header "Upgrade" "x"', ["hop-by-hop-header"]),
        ('set header "Proxy-Connection" "x"', ["hop-by-hop-header"]),
        ('set header "X-Ok" "a\\\\b"', []),
        ('drop header "Connection"', []),  # dropping one is harmless
        ('mark "Connection" "1"', ["hop-by-hop-header"]),
        ('mark "X-M" ""', []),
        ('rewrite path "(" "x"', ["invalid-regex"]),
        ("workers 2 workers 3", ["duplicate-statement"]),
        ("body off body on", ["duplicate-statement"]),
        ("mark off mark off", ["duplicate-statement"]),
        ("rate 1/s rate 2/s", ["duplicate-statement"]),
        ("host preserve host preserve", ["duplicate-statement"]),
        ("max_body 1B max_body 2B", ["duplicate-statement"]),
        ("queue 1 queue 2", ["duplicate-statement"]),
        ("timeout 1s timeout 2s", ["duplicate-statement"]),
        ("server ftp://127.0.0.1:1", ["invalid-url"]),
        ("server http://127.0.0.1:1?x=1", ["invalid-url"]),
        ("server https://:1", ["invalid-url"]),
        ("server http://127.0.0.1:1 weight 0", ["invalid-number"]),
    ],
)
def test_canary_statement_codes(stmt: str, expected: list[str]) -> None:
    src = f"primary http://127.0.0.1:8081\ncanary v2 {{ server http://127.0.0.1:8091 {stmt} }}\nmirror all {{ to v2 }}\n"
    assert codes(src) == expected


@pytest.mark.parametrize(
    ("stmt", "code"),
    [
        ("listen 256.0.0.1:8080", "invalid-address"),
        ("listen 999.1.1.1:80", "invalid-address"),
        ("listen 999.999.999.999:80", "invalid-address"),
        ("admin 1.2.3:80", "invalid-address"),
        ("listen -bad-:80", "invalid-address"),
        ("listen a..b:80", "invalid-address"),
        (f"listen {'a' * 64}.example:80", "invalid-address"),
        ("primary http://999.1.1.1:80", "invalid-url"),
        ("primary http://-x-:80", "invalid-url"),
        ("canary c { server http://999.1.1.1:80 } mirror c { to c }", "invalid-url"),
        ("canary c { server http://x-:80 } mirror c { to c }", "invalid-url"),
    ],
)
def test_invalid_hosts_are_errors_at_the_value(stmt: str, code: str) -> None:
    diags = loads(f"{stmt}\n", "h.mirror").diagnostics
    errors = [d for d in diags if d.severity == "error"]
    assert [d.code for d in errors] == [code]
    value = stmt.split()[1] if not stmt.startswith("canary") else stmt.split()[4]
    assert (errors[0].span.line, errors[0].span.column) == (1, stmt.index(value) + 1)


@pytest.mark.parametrize("stmt", ["admin 1.2.3.4", "listen nohost", "listen 8080"])
def test_a_port_less_address_is_an_invalid_address(stmt: str) -> None:
    diags = loads(f"{stmt}\n", "h.mirror").diagnostics
    assert [d.code for d in diags] == ["invalid-address"]
    assert diags[0].span.column == stmt.index(" ") + 2
    assert diags[0].span.end_column == len(stmt) + 1
    assert "port is required" in diags[0].message


@pytest.mark.parametrize(
    "stmt",
    [
        "listen 0.0.0.0:8080",
        "listen localhost:8080",
        "listen my-host.example.com:80",
        "listen [::1]:8080",
        f"listen {'a' * 63}.example:80",
        "primary http://255.255.255.255:80",
        "primary https://api.example.com",
        "primary http://[::1]:8081",
    ],
)
def test_valid_hosts_are_accepted(stmt: str) -> None:
    diags = loads(f"{stmt}\n", "h.mirror").diagnostics
    assert [d.code for d in diags if d.severity == "error"] == []


def test_all_problems_are_reported_not_just_the_first() -> None:
    src = (
        OK
        + 'canary bad { workers 0 queue 1.5 timeout 0s }\nmirror y { when path ~ "(" sample 0% to nope }\n'
    )
    got = set(codes(src))
    assert {"workers-out-of-range", "invalid-number", "invalid-duration", "missing-server"} <= got
    assert {"invalid-regex", "sample-out-of-range", "unknown-canary"} <= got


def test_no_primary_is_a_warning_and_config_still_builds() -> None:
    r = loads("canary v2 { server http://127.0.0.1:1 }\nmirror a { to v2 }", "n.mirror")
    assert [d.code for d in r.diagnostics] == ["no-primary"]
    assert r.config is not None and r.config.primary is None


def test_config_from_the_example_rules() -> None:
    r = load(["rules/"])
    assert r.diagnostics == [] and r.config is not None
    c = r.config
    assert c.listen == "127.0.0.1:8080" and c.admin == "127.0.0.1:9901"
    assert c.primary == cfg.PrimarySpec(
        endpoint=cfg.Endpoint.parse("http://127.0.0.1:8081"), timeout_s=30.0
    )
    v2, v3 = c.canaries
    assert [s.weight for s in v2.servers] == [1, 2]
    assert (v2.rate, v3.rate) == (
        cfg.RateSpec(burst=200, per_second=200),
        cfg.RateSpec(burst=600, per_second=10),
    )
    assert (v3.queue, v3.timeout_s, v3.body, v3.host) == (0, 2.5, False, "v3.internal")
    assert v2.compare == CompareSpec(
        status=True,
        headers=("Content-Type",),
        body="json",
        ignore=("$.generated_at",),
        sample_rate=0.5,
    )
    assert v3.compare is None and c.diff_log is None
    assert [rule.name for rule in c.rules] == ["api_reads", "api_writes", "search"]
    assert c.rules[0].sample == cfg.SampleSpec(rate=0.1, by="header", key="x-user-id")
    assert c.rules[1].to == ("v2", "v3")
    assert len(c.excludes) == 2
    digests = [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in r.files]
    assert [s.sha256 for s in c.sources] == digests
    assert len(c.sha256) == 64


def test_header_subjects_and_hosts_are_lower_cased_in_config() -> None:
    r = loads(
        OK.replace(
            "mirror all { when method == DELETE to v2 }",
            'mirror all { when header "X-Debug" == "On" and host == "Api.Example.COM" to v2 }',
        )
    )
    assert r.config is not None
    when = r.config.rules[0].when
    assert isinstance(when, ast.And)
    header, host = when.operands
    assert isinstance(header, ast.Test) and header.key is not None and header.key.value == "x-debug"
    assert header.args[0].value == "On"  # values stay as written
    assert isinstance(host, ast.Test) and host.args[0].value == "api.example.com"


def test_names_are_global_across_files(tmp_path: object) -> None:
    from pathlib import Path

    d = Path(str(tmp_path))
    (d / "a.mirror").write_text("mirror r { to v2 }\n")
    (d / "b.mirror").write_text(
        "primary http://127.0.0.1:1\ncanary v2 { server http://127.0.0.1:2 }\n"
    )
    r = load([d])
    assert r.diagnostics == [] and r.config is not None
    assert r.files == [str(d / "a.mirror"), str(d / "b.mirror")]


def test_a_syntax_error_elsewhere_does_not_cascade_into_unknown_canaries(tmp_path: object) -> None:
    from pathlib import Path

    d = Path(str(tmp_path))
    (d / "a.mirror").write_text("mirror r { to v2 }\n")
    (d / "b.mirror").write_text("canary v2 { server http://127.0.0.1:2 oops }\n")
    assert [x.code for x in load([d]).diagnostics] == ["syntax-error"]


def test_code_catalogue_is_kebab_case_with_descriptions() -> None:
    import re

    for code, text in CODES.items():
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", code)
        assert text and "\n" not in text


@pytest.mark.parametrize(
    ("canaries", "target", "suggestion"),
    [
        (["A"], "a", ' (did you mean "A"?)'),
        (["Canary_V2", "canary_v3"], "canary_v2", ' (did you mean "Canary_V2"?)'),
        (["v2"], "v3", ' (did you mean "v2"?)'),
        (["shadow"], "zz", ""),
    ],
)
def test_unknown_canary_did_you_mean_tries_a_case_only_difference_first(
    canaries: list[str], target: str, suggestion: str
) -> None:
    defined = "".join(f"canary {c} {{ server http://127.0.0.1:1 }}\n" for c in canaries)
    uses = "".join(f"mirror m{i} {{ when method == GET to {c} }}\n" for i, c in enumerate(canaries))
    src = f"{OK}{defined}{uses}mirror typo {{ when method == GET to {target} }}\n"
    diags = [d for d in loads(src, "d.mirror").diagnostics if d.code == "unknown-canary"]
    assert [d.message for d in diags] == [f'unknown canary "{target}"{suggestion}']


# --- compare blocks and diff_log ---------------------------------------------------------

COMPARED = """
primary http://127.0.0.1:8081
canary v1 {{ server http://127.0.0.1:8090 }}
canary v2 {{ server http://127.0.0.1:8091 compare {{ {block} }} }}
mirror all {{ to v2, v1 }}
"""


def compare_codes(block: str) -> list[str]:
    return codes(COMPARED.format(block=block))


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ("status", []),
        ('header "Content-Type"', []),
        ("body bytes", []),
        ('body json ignore "$.a", "$..etag", "$.items[?@.volatile == true]" max_body 1B', []),
        ("status sample 100%", []),
        ("status sample 0.001", []),
        ("status baseline v1", []),
        ("", ["empty-compare"]),
        ("sample 10% max_body 1MiB baseline v1", ["empty-compare"]),
        ('status ignore "$.a"', ["ignore-without-json"]),
        ('body bytes ignore "$.a"', ["ignore-without-json"]),
        ('body json ignore "$.items["', ["invalid-jsonpath"]),
        ('body json ignore "items"', ["invalid-jsonpath"]),
        ('body json ignore "$.a", "$.a"', ["duplicate-entry"]),
        ('header "A", "a"', ["duplicate-entry"]),
        ('header "A B"', ["invalid-header-name"]),
        ("status sample 0%", ["sample-out-of-range"]),
        ("status sample 101%", ["sample-out-of-range"]),
        ("status sample 50", ["sample-out-of-range"]),
        ("body json max_body 0B", ["invalid-size"]),
        ("body json max_body 1.5MiB", ["invalid-size"]),
        ("status status", ["duplicate-statement"]),
        ('header "A" header "B"', ["duplicate-statement"]),
        ("body json body bytes", ["duplicate-statement"]),
        ('body json ignore "$.a" ignore "$.b"', ["duplicate-statement"]),
        ("body json max_body 1MiB max_body 2MiB", ["duplicate-statement"]),
        ("status sample 1% sample 2%", ["duplicate-statement"]),
        ("status baseline v1 baseline v1", ["duplicate-statement"]),
        ("status baseline v2", ["self-baseline"]),
        ("status baseline v9", ["unknown-canary"]),
    ],
)
def test_compare_codes(block: str, expected: list[str]) -> None:
    assert compare_codes(block) == expected


def test_a_repeated_compare_block_is_a_duplicate_statement() -> None:
    src = COMPARED.format(block="status } compare { status")
    assert codes(src) == ["duplicate-statement"]


def test_compare_spec_in_config() -> None:
    block = (
        'status header "Content-Type", "Location" body json ignore "$.ts", "$.items[*].id" '
        "max_body 2MiB sample 12.5% baseline v1"
    )
    r = loads(COMPARED.format(block=block), "c.mirror")
    assert r.diagnostics == [] and r.config is not None
    v1, v2 = r.config.canaries
    assert v1.compare is None
    assert v2.compare == CompareSpec(
        status=True,
        headers=("Content-Type", "Location"),
        body="json",
        ignore=("$.ts", "$.items[*].id"),
        max_body_bytes=2 << 20,
        sample_rate=0.125,
        baseline="v1",
    )
    r = loads(COMPARED.format(block="status"), "c.mirror")
    assert r.config is not None
    assert r.config.canaries[1].compare == CompareSpec(status=True)


def test_compare_diagnostics_point_at_the_offending_string() -> None:
    src = COMPARED.format(block='body json ignore "$.ok", "$.items["')
    (d,) = loads(src, "c.mirror").diagnostics
    line = src.splitlines()[d.span.line - 1]
    assert line[d.span.column - 1 : d.span.end_column - 1] == '"$.items["'
    assert d.message == "invalid JSONPath \"$.items[\": a '[' is not closed (at the end)"
    src = COMPARED.format(block='status ignore "$.a"')
    (d,) = loads(src, "c.mirror").diagnostics
    line = src.splitlines()[d.span.line - 1]
    assert line[d.span.column - 1 : d.span.end_column - 1] == "ignore"
    src = COMPARED.format(block="status baseline v2")
    (d,) = loads(src, "c.mirror").diagnostics
    line = src.splitlines()[d.span.line - 1]
    assert line[d.span.column - 1 : d.span.end_column - 1] == "v2"
    src = COMPARED.format(block="")
    (d,) = loads(src, "c.mirror").diagnostics
    line = src.splitlines()[d.span.line - 1]
    assert line[d.span.column - 1 : d.span.end_column - 1] == "compare"


def test_unknown_baseline_has_a_did_you_mean() -> None:
    src = COMPARED.format(block="status baseline V1")
    (d,) = loads(src, "c.mirror").diagnostics
    assert (d.code, d.message) == ("unknown-canary", 'unknown canary "V1" (did you mean "v1"?)')


def test_baselines_do_not_chain() -> None:
    src = (
        "primary http://127.0.0.1:8081\n"
        "canary v0 { server http://127.0.0.1:8089 }\n"
        "canary v1 { server http://127.0.0.1:8090 compare { status baseline v0 } }\n"
        "canary v2 { server http://127.0.0.1:8091 compare { status baseline v1 } }\n"
        "mirror all { to v2, v1, v0 }\n"
    )
    (d,) = loads(src, "c.mirror").diagnostics
    assert d.code == "baseline-chain" and (d.span.line, d.span.column) == (4, 68)
    assert 'canary "v1" cannot be a baseline' in d.message and '"v0" at c.mirror:3' in d.message


def test_a_rule_that_sends_to_a_compared_canary_but_not_its_baseline_is_warned() -> None:
    reads = "mirror reads { when method == GET to v2 }"
    src = COMPARED.format(block="status baseline v1").replace("mirror all", reads + "\nmirror all")
    r = loads(src, "c.mirror")
    assert [(d.code, d.severity) for d in r.diagnostics] == [("baseline-not-sent", "warning")]
    assert r.config is not None
    (d,) = r.diagnostics
    assert (d.span.line, d.span.column) == (5, reads.index("v2") + 1)  # at `to v2`
    assert 'mirror rule "reads" sends to "v2" but not to its baseline "v1"' in d.message
    # without a baseline, or with it in the same `to`, there is nothing to say
    assert (
        codes(COMPARED.format(block="status").replace("mirror all", reads + "\nmirror all")) == []
    )


def test_a_syntax_error_elsewhere_does_not_make_baselines_unknown(tmp_path: Path) -> None:
    (tmp_path / "a.mirror").write_text(
        "primary http://127.0.0.1:1\n"
        "canary v2 { server http://127.0.0.1:2 compare { status baseline v1 } }\n"
        "mirror r { to v2 }\n"
    )
    (tmp_path / "b.mirror").write_text("canary v1 { server http://127.0.0.1:3 oops }\n")
    assert [x.code for x in load([tmp_path]).diagnostics] == ["syntax-error"]


def test_diff_log_is_resolved_against_the_rule_file(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    rules = tmp_path / "rules"
    rules.mkdir()
    base = (
        "primary http://127.0.0.1:1\ncanary v2 { server http://127.0.0.1:2 }\nmirror r { to v2 }\n"
    )
    (rules / "a.mirror").write_text(base + 'diff_log "../logs/diffs.jsonl"\n')
    r = load([rules])
    assert r.diagnostics == [] and r.config is not None
    assert r.config.diff_log == str(tmp_path / "logs" / "diffs.jsonl")
    absolute = tmp_path / "abs.jsonl"
    (rules / "a.mirror").write_text(base + f'diff_log "{absolute}"\n')
    assert load([rules]).config.diff_log == str(absolute)  # type: ignore[union-attr]
    (rules / "a.mirror").write_text(base + "diff_log stderr\n")
    assert load([rules]).config.diff_log == "stderr"  # type: ignore[union-attr]
    (rules / "a.mirror").write_text(base)
    assert load([rules]).config.diff_log is None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ('"nowhere/diffs.jsonl"', 'directory "RULES/nowhere" does not exist'),
        ('"/nonexistent-sidecar-dir/diffs.jsonl"', 'directory "/nonexistent-sidecar-dir" does'),
        ('"."', '"." is a directory'),
        ('"sub/"', '"sub/" is a directory'),
        ('""', "needs a file name"),
    ],
)
def test_bad_diff_log_paths_are_errors_at_the_string(
    tmp_path: Path, value: str, message: str
) -> None:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "a.mirror").write_text(
        "primary http://127.0.0.1:1\ncanary v2 { server http://127.0.0.1:2 }\n"
        f"mirror r {{ to v2 }}\ndiff_log {value}\n"
    )
    r = load([rules])
    (d,) = r.diagnostics
    assert d.code == "invalid-diff-log" and r.config is None
    assert (d.span.line, d.span.column, d.span.end_column) == (4, 10, 10 + len(value))
    assert message.replace("RULES", str(rules)) in d.message


def test_a_repeated_diff_log_is_a_duplicate_statement(tmp_path: Path) -> None:
    (tmp_path / "a.mirror").write_text(OK + "diff_log stderr\n")
    (tmp_path / "b.mirror").write_text('diff_log "d.jsonl"\n')
    assert [d.code for d in load([tmp_path]).diagnostics] == ["duplicate-statement"]


@pytest.mark.parametrize(
    ("src", "expected"),
    [
        ("canary v2 { server http://c:1 pause after 3 failures for 500ms }", []),
        ("canary v2 { server http://c:1 pause after 1 failures for 1h }", []),
        ("canary v2 { server http://c:1 pause after 0 failures for 5s }", ["invalid-pause"]),
        ("canary v2 { server http://c:1 pause after 1.5 failures for 5s }", ["invalid-pause"]),
        ("canary v2 { server http://c:1 pause after 3 failures for 0s }", ["invalid-duration"]),
        ("canary v2 { server http://c:1 pause after 3 failures for 5x }", ["invalid-duration"]),
        ('request_id "X-Request-Id"', []),
        ('request_id "X Request"', ["invalid-header-name"]),
        ('request_id "Transfer-Encoding"', ["hop-by-hop-header"]),
        ('request_id "X-Request-Id" request_id "X-Trace"', ["duplicate-statement"]),
    ],
)
def test_pause_and_request_id_codes(src: str, expected: list[str]) -> None:
    text = src if src.startswith("request_id") else src + " mirror all { to v2 }"
    if src.startswith("request_id"):
        text += "\ncanary v2 { server http://c:1 } mirror all { to v2 }"
    assert codes("primary http://p:1\n" + text) == expected


def test_pause_and_request_id_in_config() -> None:
    result = loads(
        'primary http://p:1\nrequest_id "X-Request-ID"\n'
        "canary v2 { server http://c:1 pause after 3 failures for 500ms }\n"
        "canary v3 { server http://c:2 }\n"
        "mirror all { to v2, v3 }\n"
    )
    assert result.config is not None
    assert result.config.request_id == "x-request-id"  # header names are case-insensitive
    v2, v3 = result.config.canaries
    assert v2.pause == cfg.PauseSpec(failures=3, duration_s=0.5)
    assert v3.pause is None
    assert loads(OK).config.request_id is None  # type: ignore[union-attr]
