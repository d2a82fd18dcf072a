"""sidecar/dsl/cursor.py: what the grammar takes at a position, from lark's own tables; and
the loader's editor entry (unsaved buffers, the parse cache)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.dsl import cursor
from sidecar.dsl.loader import ParseCache, load


def accepts(text: str) -> set[str]:
    found = cursor.expected_at(text, len(text))
    assert found is not None, text
    return {cursor.literals().get(t, t) for t in found.accepts}


@pytest.mark.parametrize(
    ("text", "present", "absent"),
    [
        ("", {"listen", "canary", "mirror", "exclude", "primary", "server"}, {"workers", "to"}),
        ("primary http://a:1 { ", {"timeout", "idle_timeout", "}"}, {"workers"}),
        ("canary a { ", {"server", "workers", "compare", "pause", "}"}, {"status", "listen"}),
        ("canary a { compare { ", {"status", "body", "baseline"}, {"server"}),
        ("mirror m { ", {"when", "sample", "to", "}"}, {"server"}),
        ("mirror m { when ", {"method", "path", "header", "not", "("}, {"to"}),
        ('exclude when header "X" ', {"exists", "^=", "in"}, {"to"}),
        ("exclude when path ", {"^=", "~", "in"}, {"exists"}),
        ("canary a { timeout ", {"DURATION"}, {"NUMBER"}),
        ("canary a { max_body ", {"SIZE"}, set()),
        ("canary a { rate ", {"RATE"}, set()),
        ("mirror m { sample ", {"PERCENT", "NUMBER"}, set()),
        ("mirror m { to a, ", {"NAME"}, set()),
    ],
)
def test_expected_at(text: str, present: set[str], absent: set[str]) -> None:
    got = accepts(text)
    assert present <= got
    assert not absent & got


def test_an_earlier_error_is_skipped() -> None:
    # The unfinished `timeout 25` and `max_body 2` do not hide the compare block.
    text = "canary v4 {\n    timeout 25\n    max_body 2\n    compare {\n        "
    assert {"status", "baseline"} <= accepts(text)
    # An error in an earlier top-level block: the cursor's own statement is parsed alone.
    text = "canary a {\n    workers eight\n}\nmirror m {\n    "
    assert {"when", "to"} <= accepts(text)
    assert "workers" not in accepts(text)


def test_rules_started_by_tells_blocks_apart() -> None:
    def rule(text: str, keyword: str) -> list[str]:
        found = cursor.expected_at(text, len(text))
        assert found is not None
        return [r.rule for r in cursor.rules_started_by(found, keyword)]

    assert rule("primary http://a:1 { ", "timeout") == ["primary_timeout"]
    assert rule("canary a { ", "timeout") == ["timeout"]
    assert rule("canary a { compare { ", "body") == ["compare_body"]
    assert rule("canary a { ", "body") == ["body"]
    assert rule("canary a { compare { ", "sample") == ["compare_sample"]
    assert rule("mirror m { ", "sample") == ["sample"]
    assert rule("mirror m { when ", "header") == ["test"]
    assert rule("mirror m { ", "workers") == []  # not accepted there


def test_keyword_rules_come_from_the_grammar() -> None:
    found = {(r.rule, r.keyword) for r in cursor.keyword_rules()}
    assert {("listen", "listen"), ("timeout", "timeout"), ("primary_timeout", "timeout")} <= found
    assert ("test", "method") in found
    assert not any(rule.startswith("_") for rule, _ in found)


def test_tokens_of_a_broken_text() -> None:
    toks = cursor.tokens("canary a {\n  workers ;\n}\ncanary b {")
    assert [t.type for t in toks if t.type in ("CANARY", "NAME")] == [
        "CANARY",
        "NAME",
        "CANARY",
        "NAME",
    ]


def test_load_reads_buffers_instead_of_files(tmp_path: Path) -> None:
    (tmp_path / "a.mirror").write_text("canary v2 {\n    server http://127.0.0.1:1\n}\n")
    rules = tmp_path / "b.mirror"
    rules.write_text("mirror m {\n    to v2\n}\n")
    buffer = str(tmp_path / "a.mirror")
    result = load(
        [buffer, str(rules)], buffers={buffer: "canary v9 {\n    server http://127.0.0.1:1\n}\n"}
    )
    assert {d.code for d in result.diagnostics} >= {"unknown-canary", "unused-canary"}
    # A buffer that is not on disk is a file all the same.
    new = str(tmp_path / "c.mirror")
    result = load([buffer, new], buffers={new: "primary http://127.0.0.1:8081\n"})
    assert result.files == [buffer, new] and result.usage_error is None


def test_a_buffer_has_the_size_limit_of_a_file() -> None:
    big = "# " + "x" * (1 << 20) + "\n"
    result = load(["big.mirror"], buffers={"big.mirror": big})
    assert [d.code for d in result.diagnostics] == ["file-too-large"]


def test_the_parse_cache_reparses_only_changed_texts() -> None:
    cache = ParseCache()
    first, _ = cache.parse("listen 127.0.0.1:1\n", "a")
    again, _ = cache.parse("listen 127.0.0.1:1\n", "a")
    assert again is first
    changed, _ = cache.parse("listen 127.0.0.1:2\n", "a")
    assert changed is not first
    broken, errors = cache.parse("listen\n", "a")
    assert broken is None and [e.code for e in errors] == ["syntax-error"]
    cache.retain(["a"])
    assert cache.parse("listen\n", "a")[0] is None
    kept, _ = cache.parse("listen 127.0.0.1:1\n", "b")
    cache.retain(["a"])  # b is forgotten: the same text gives a new parse
    assert cache.parse("listen 127.0.0.1:1\n", "b")[0] is not kept


def test_reading_only_the_statement_is_reading_the_whole_prefix() -> None:
    """At every space and line start of the example rules, the statement-only parse accepts
    what a parse of the whole text before it accepts."""
    root = Path(__file__).resolve().parents[2]
    text = "\n".join(p.read_text() for p in sorted((root / "rules").glob("*.mirror")))
    offsets = [i + 1 for i, c in enumerate(text) if c in " \n"]
    checked = 0
    for offset in offsets[::3]:
        whole = cursor._scan(text[:offset])
        if whole is None:  # inside a comment or a string: not a token boundary
            continue
        found = cursor.expected_at(text, offset)
        assert found is not None and found.accepts == whole.accepts, text[:offset][-60:]
        checked += 1
    assert checked > 100
