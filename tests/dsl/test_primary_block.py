"""The `primary` block's two clocks: `timeout` (until the response head) and `idle_timeout`
(the longest pause in either body): parsing, validation, defaults, fmt and /rules."""

from __future__ import annotations

import pytest

from sidecar.dsl import ast, loads
from sidecar.dsl.parser import parse
from sidecar.model import config as cfg
from sidecar.routing.table import compile_table
from sidecar.tools.fmt import format_text


def primary(src: str) -> cfg.PrimarySpec:
    result = loads(src, "p.mirror")
    assert result.config is not None, result.diagnostics
    assert result.config.primary is not None
    return result.config.primary


def codes(src: str) -> list[str]:
    return [d.code for d in loads(src, "p.mirror").diagnostics]


@pytest.mark.parametrize(
    ("src", "timeout_s", "idle_s"),
    [
        ("primary http://127.0.0.1:1", 60.0, 60.0),
        ("primary http://127.0.0.1:1 { }", 60.0, 60.0),
        ("primary http://127.0.0.1:1 { timeout 5s }", 5.0, 60.0),
        ("primary http://127.0.0.1:1 { idle_timeout 300ms }", 60.0, 0.3),
        ("primary http://127.0.0.1:1 { idle_timeout 2m timeout 1.5s }", 1.5, 120.0),
        ("primary http://127.0.0.1:1 {\n  timeout 1h\n  idle_timeout 1h\n}", 3600.0, 3600.0),
    ],
)
def test_values_and_defaults(src: str, timeout_s: float, idle_s: float) -> None:
    p = primary(src)
    assert (p.timeout_s, p.idle_timeout_s) == (timeout_s, idle_s)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("idle_timeout 1s idle_timeout 2s", ["duplicate-statement"]),
        ("timeout 1s idle_timeout 2s timeout 3s", ["duplicate-statement"]),
        ("idle_timeout 0s", ["invalid-duration"]),
        ("idle_timeout 10x", ["invalid-duration"]),
        ("idle_timeout 10", ["syntax-error"]),
        ("idle_timeout", ["syntax-error"]),
        ("idletimeout 1s", ["syntax-error"]),
        ("workers 8", ["syntax-error"]),  # a canary statement, not a primary one
    ],
)
def test_diagnostics(body: str, expected: list[str]) -> None:
    assert codes(f"primary http://127.0.0.1:1 {{ {body} }}") == expected


def test_duplicate_names_the_first_occurrence() -> None:
    diags = loads(
        "primary http://127.0.0.1:1 {\n  idle_timeout 1s\n  idle_timeout 2s\n}\n", "p.mirror"
    ).diagnostics
    assert len(diags) == 1
    assert "`idle_timeout` may appear only once (already given at p.mirror:2)" in diags[0].message
    assert (diags[0].span.line, diags[0].span.column) == (3, 3)


def test_the_ast_keeps_the_statement_kind_and_span() -> None:
    tree, diags = parse("primary http://127.0.0.1:1 { timeout 1s idle_timeout 250ms }")
    assert tree is not None, diags
    (node,) = tree.statements
    assert isinstance(node, ast.Primary)
    first, second = node.statements
    assert isinstance(first, ast.PrimaryTimeout) and first.duration.raw == "1s"
    assert isinstance(second, ast.PrimaryIdleTimeout) and second.duration.seconds == 0.25
    assert (second.span.line, second.span.column) == (1, 41)


def test_fmt_is_canonical_and_keeps_the_order() -> None:
    out, diags = format_text("primary http://p:1 {idle_timeout   2m\n timeout 5s}")
    assert out == "primary http://p:1 {\n    idle_timeout 2m\n    timeout 5s\n}\n", diags
    again, _ = format_text(out)
    assert again == out


def test_rules_json_shows_both() -> None:
    config = loads("primary http://127.0.0.1:1 { idle_timeout 90s }", "p.mirror").config
    assert config is not None
    assert compile_table(config).to_json()["primary"] == {
        "url": "http://127.0.0.1:1",
        "timeout_s": 60.0,
        "idle_timeout_s": 90.0,
        "tls": None,
    }


def test_primary_spec_refuses_non_positive_timeouts() -> None:
    endpoint = cfg.Endpoint.parse("http://127.0.0.1:1")
    with pytest.raises(ValueError):
        cfg.PrimarySpec(endpoint=endpoint, idle_timeout_s=0.0)
    with pytest.raises(ValueError):
        cfg.PrimarySpec(endpoint=endpoint, timeout_s=-1.0)
