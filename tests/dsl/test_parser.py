"""Parsing: every construct of the rule language (docs/rules.md) into the AST, units, and the error catalogue."""

from __future__ import annotations

import pytest

from sidecar.dsl import ast, units
from sidecar.dsl.errors import CATALOGUE, HINT_CODES, hint_for
from sidecar.dsl.grammar import get_parser
from sidecar.dsl.parser import parse


def one(src: str) -> ast.TopLevel:
    file, diags = parse(src, "t.mirror")
    assert diags == [] and file is not None
    assert len(file.statements) == 1
    return file.statements[0]


def canary_stmt(body: str) -> ast.CanaryStatement:
    node = one("canary c { " + body + " }")
    assert isinstance(node, ast.Canary)
    assert len(node.statements) == 1
    return node.statements[0]


def when(expr: str) -> ast.Expr:
    node = one("exclude when " + expr)
    assert isinstance(node, ast.Exclude)
    return node.expr


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("workers 8", "Workers"),
        ("queue 0", "Queue"),
        ("timeout 250ms", "Timeout"),
        ("max_body 1MiB", "MaxBody"),
        ("body off", "Body"),
        ("body on", "Body"),
        ('mark "X-Mirror" "1"', "Mark"),
        ("mark off", "Mark"),
        ("rate 200/s", "RateLimit"),
        ("rate 50/m", "RateLimit"),
        ("host preserve", "Host"),
        ('host "v2.internal"', "Host"),
        ('set header "X-Shadow" "true"', "SetHeader"),
        ('drop header "Authorization", "Cookie"', "DropHeader"),
        ('rewrite path "^/api/v1/" "/api/v2/"', "RewritePath"),
        ("server http://10.0.0.7:8080 weight 2", "Server"),
    ],
)
def test_canary_statements(body: str, expected: str) -> None:
    assert type(canary_stmt(body)).__name__ == expected


def test_values_keep_raw_text_and_meaning() -> None:
    t = canary_stmt("timeout 1.5s")
    assert isinstance(t, ast.Timeout) and t.duration == ast.Duration(
        raw="1.5s", seconds=1.5, span=t.duration.span
    )
    m = canary_stmt("max_body 1MiB")
    assert isinstance(m, ast.MaxBody) and (m.size.raw, m.size.bytes) == ("1MiB", 1 << 20)
    r = canary_stmt("rate 50/m")
    assert isinstance(r, ast.RateLimit) and (r.count.value, r.per) == (50, "m")
    s = canary_stmt('set header "X-A" "say \\"hi\\" \\\\o/"')
    assert isinstance(s, ast.SetHeader) and s.value.value == 'say "hi" \\o/'
    w = canary_stmt("server http://a:1")
    assert isinstance(w, ast.Server) and w.weight is None


def test_top_level_statements() -> None:
    assert one("listen [::1]:8080") == ast.Listen(
        address_raw="[::1]:8080", span=one("listen [::1]:8080").span
    )
    admin = one("admin off")
    assert isinstance(admin, ast.Admin) and admin.address_raw is None
    primary = one("primary http://127.0.0.1:8081 { timeout 30s }")
    assert isinstance(primary, ast.Primary) and primary.url == "http://127.0.0.1:8081"
    assert primary.statements[0].duration.seconds == 30
    bare = one("primary http://127.0.0.1:8081")
    assert isinstance(bare, ast.Primary) and bare.statements == ()


def test_mirror_rule() -> None:
    rule = one('mirror r { when path ^= "/a" sample 12.5% by header "X-U" to v2, v3 }')
    assert isinstance(rule, ast.MirrorRule) and rule.name.value == "r"
    w, s, t = rule.statements
    assert isinstance(w, ast.When)
    assert isinstance(s, ast.Sample) and (s.rate.value, s.by, s.key and s.key.value) == (
        0.125,
        "header",
        "X-U",
    )
    assert isinstance(t, ast.To) and [n.value for n in t.canaries] == ["v2", "v3"]
    for src, by in [
        ("by client", "client"),
        ('by cookie "s"', "cookie"),
        ('by query "u"', "query"),
        ("", None),
    ]:
        r = one(f"mirror r {{ sample 0.1 {src} to a }}")
        assert isinstance(r, ast.MirrorRule) and isinstance(r.statements[0], ast.Sample)
        assert r.statements[0].by == by


@pytest.mark.parametrize(
    ("src", "subject", "key", "op", "args"),
    [
        ("method == GET", "method", None, "==", ["GET"]),
        ("method != GET", "method", None, "!=", ["GET"]),
        ("method in (GET, HEAD)", "method", None, "in", ["GET", "HEAD"]),
        ('path == "/a"', "path", None, "==", ["/a"]),
        ('path != "/a"', "path", None, "!=", ["/a"]),
        ('path ^= "/a"', "path", None, "^=", ["/a"]),
        ('host $= ".com"', "host", None, "$=", [".com"]),
        ('host *= "ex"', "host", None, "*=", ["ex"]),
        ('path ~ "^/a"', "path", None, "~", ["^/a"]),
        ('path !~ "^/a"', "path", None, "!~", ["^/a"]),
        ('path in ("/a", "/b")', "path", None, "in", ["/a", "/b"]),
        ('header "X-A" exists', "header", "X-A", "exists", []),
        ('query "debug" == ""', "query", "debug", "==", [""]),
        ('cookie "s" ~ "x"', "cookie", "s", "~", ["x"]),
        ('client in ("10.0.0.0/8", "::1/128")', "client", None, "in", ["10.0.0.0/8", "::1/128"]),
    ],
)
def test_predicate_tests(src: str, subject: str, key: str | None, op: str, args: list[str]) -> None:
    t = when(src)
    assert isinstance(t, ast.Test)
    assert (t.subject, t.key.value if t.key else None, t.op) == (subject, key, op)
    assert [a.value for a in t.args] == args
    assert t.text == src


def test_precedence_or_and_not_and_groups() -> None:
    e = when('not path == "/a" and path == "/b" or path == "/c"')
    assert isinstance(e, ast.Or) and len(e.operands) == 2
    left = e.operands[0]
    assert isinstance(left, ast.And) and isinstance(left.operands[0], ast.Not)
    g = when('path == "/a" and (path == "/b" or path == "/c")')
    assert isinstance(g, ast.And) and isinstance(g.operands[1], ast.Group)
    assert isinstance(g.operands[1].inner, ast.Or)
    flat = when('path == "/a" and path == "/b" and path == "/c"')
    assert isinstance(flat, ast.And) and len(flat.operands) == 3


def test_spans_are_one_based_and_cover_the_statement() -> None:
    file, _ = parse("\n  canary v2 {\n    workers 8\n  }\n", "f.mirror")
    assert file is not None
    c = file.statements[0]
    assert (c.span.file, c.span.line, c.span.column, c.span.end_line, c.span.end_column) == (
        "f.mirror",
        2,
        3,
        4,
        4,
    )
    assert isinstance(c, ast.Canary) and (c.name.span.line, c.name.span.column) == (2, 10)


def test_comments_are_kept_with_positions() -> None:
    file, _ = parse("# head\nlisten 127.0.0.1:1  # trailing\n", "f.mirror")
    assert file is not None
    assert [(c.text, c.trailing, c.span.line, c.span.column) for c in file.comments] == [
        ("# head", False, 1, 1),
        ("# trailing", True, 2, 21),
    ]


def test_empty_and_comment_only_files_are_valid() -> None:
    for src in ["", "\n\n", "# nothing\n"]:
        file, diags = parse(src, "e.mirror")
        assert diags == [] and file is not None and file.statements == ()


@pytest.mark.parametrize(
    ("raw", "seconds"),
    [("250ms", 0.25), ("1.5s", 1.5), ("2m", 120), ("1h", 3600), ("10x", None), ("10", None)],
)
def test_durations(raw: str, seconds: float | None) -> None:
    assert units.parse_duration(raw) == seconds


@pytest.mark.parametrize(
    ("raw", "size"),
    [
        ("0B", 0),
        ("1KB", 1000),
        ("1KiB", 1024),
        ("2MB", 2_000_000),
        ("1MiB", 1 << 20),
        ("1GiB", 1 << 30),
        ("1.5MB", None),
        ("1mb", None),
    ],
)
def test_sizes(raw: str, size: int | None) -> None:
    assert units.parse_size(raw) == size


@pytest.mark.parametrize(
    ("raw", "ratio"),
    [("12.5%", 0.125), ("0.125", 0.125), ("100%", 1.0), ("10", 10.0), ("1x", None)],
)
def test_ratios(raw: str, ratio: float | None) -> None:
    assert units.parse_ratio(raw) == ratio


@pytest.mark.parametrize(
    ("hint", "example"), [(h, ex) for h, exs in CATALOGUE.items() for ex in exs]
)
def test_each_catalogue_entry_still_fires(hint: str, example: str) -> None:
    file, diags = parse(example, "c.mirror")
    assert file is None and len(diags) == 1
    assert diags[0].code == HINT_CODES.get(hint, "syntax-error")
    assert diags[0].message.endswith(": " + hint), diags[0].message
    assert "expected " in diags[0].message and ", found " in diags[0].message


def test_hint_needs_same_state_and_token() -> None:
    from lark import UnexpectedInput

    try:
        get_parser().parse("mirrr a {}")
    except UnexpectedInput as exc:
        assert hint_for(exc) is None  # a top-level typo is not "belongs inside a canary"
    else:
        raise AssertionError("should not parse")


@pytest.mark.parametrize(
    ("src", "line", "column", "fragment"),
    [
        ("canary a { wokers 8 }", 1, 12, 'found "wokers" (did you mean "workers"?)'),
        ("mirrr a {}", 1, 1, '(did you mean "mirror"?)'),
        ("canary a {\n", 1, 11, "not closed before the end of the file"),
        ("\x00", 1, 1, "found '\\x00'"),
        ('exclude when path == "/a\n"', 1, 22, 'found "/a: the string is not closed on its line'),
    ],
)
def test_syntax_error_positions(src: str, line: int, column: int, fragment: str) -> None:
    _, diags = parse(src, "s.mirror")
    assert (diags[0].span.line, diags[0].span.column) == (line, column)
    assert fragment in diags[0].message


@pytest.mark.parametrize(
    ("src", "message"),
    [
        ("canary a {", "`canary a {` opened at line 1 is not closed before the end of the file"),
        (
            "mirror a { to b",
            "`mirror a {` opened at line 1 is not closed before the end of the file",
        ),
        (
            "primary http://127.0.0.1:1 {\n",
            "`primary http://127.0.0.1:1 {` opened at line 1 is not closed before the end",
        ),
        (
            "canary a {\n  compare { status\n\nmirror m { to a }",
            "`compare {` opened at line 2",  # the innermost open block
        ),
        (
            'canary a {  # {\n  set header "{" "x"\nmirror m { to a }',
            "`canary a {` opened at line 1 is not closed before `mirror` at line 3",
        ),
    ],
)
def test_an_unclosed_block_is_named_with_its_line(src: str, message: str) -> None:
    _, diags = parse(src, "u.mirror")
    assert len(diags) == 1 and diags[0].code == "syntax-error"
    assert message in diags[0].message and diags[0].message.endswith("add its `}`")


@pytest.mark.parametrize(
    ("src", "hint"),
    [
        ('exclude when path ^= "/a" && method == GET', "with `and`, not `&&`"),
        ('exclude when path ^= "/a" || method == GET', "with `or`, not `||`"),
        ("exclude when !method == GET", "with `not`, not `!`"),
        ("canary a { workers 4; }", 'do not end in ";"'),
        ("listen 127.0.0.1:8080;", 'do not end in ";"'),
        ("exclude when path ^= '/a'", "write \"/a\", not '/a'"),
    ],
)
def test_characters_from_other_languages_get_a_hint(src: str, hint: str) -> None:
    _, diags = parse(src, "c.mirror")
    assert len(diags) == 1 and hint in diags[0].message, diags[0].message


def test_expected_lists_only_what_the_parser_takes_there() -> None:
    # The contextual lexer's list for this state also holds `)`, `admin`, `canary`...
    _, diags = parse('mirror m {\n when path ^= "/a" && method == GET\n to v2\n}', "e.mirror")
    assert diags[0].message.startswith('expected one of "and", "or", "sample", "to", "when" or "}"')
    assert '")"' not in diags[0].message and '"canary"' not in diags[0].message


def test_a_stray_operator_gets_no_not_hint() -> None:
    _, diags = parse('exclude when path "/a" != "/b"', "o.mirror")
    assert "not `!`" not in diags[0].message


def test_deep_nesting_is_a_diagnostic_not_a_crash() -> None:
    src = "exclude when " + "(" * 5000 + 'path == "/"' + ")" * 5000
    file, diags = parse(src, "deep.mirror")
    assert file is None and diags[0].code == "syntax-error"


def test_compare_block() -> None:
    node = canary_stmt(
        'compare { status header "Content-Type", "Location" body json '
        'ignore "$.ts", "$.items[*].id" max_body 2MiB sample 10% baseline v1 }'
    )
    assert isinstance(node, ast.Compare)
    status, header, body, ignore, max_body, sample, baseline = node.statements
    assert isinstance(status, ast.CompareStatus)
    assert isinstance(header, ast.CompareHeader)
    assert [n.value for n in header.names] == ["Content-Type", "Location"]
    assert isinstance(body, ast.CompareBody) and body.mode == "json"
    assert isinstance(ignore, ast.CompareIgnore)
    assert [p.value for p in ignore.paths] == ["$.ts", "$.items[*].id"]
    assert ignore.paths[0].span.column == ignore.span.column + len("ignore ")
    assert isinstance(max_body, ast.MaxBody) and max_body.size.bytes == 2 << 20
    assert isinstance(sample, ast.CompareSample) and sample.rate.value == 0.1
    assert isinstance(baseline, ast.CompareBaseline) and baseline.name.value == "v1"
    bytes_ = canary_stmt("compare { body bytes }")
    assert isinstance(bytes_, ast.Compare)
    assert bytes_.statements == (ast.CompareBody(mode="bytes", span=bytes_.statements[0].span),)
    empty = canary_stmt("compare { }")
    assert isinstance(empty, ast.Compare) and empty.statements == ()


def test_pause_and_request_id() -> None:
    rid = one('request_id "X-Request-Id"')
    assert isinstance(rid, ast.RequestId) and rid.header.value == "X-Request-Id"
    canary = one("canary a { server http://c:1 pause after 3 failures for 500ms }")
    assert isinstance(canary, ast.Canary)
    pause = canary.statements[1]
    assert isinstance(pause, ast.Pause)
    assert (pause.failures.value, pause.duration.seconds) == (3, 0.5)
    assert (pause.span.column, pause.span.end_column) == (30, 62)


def test_diff_log() -> None:
    to_file = one('diff_log "logs/diffs.jsonl"')
    assert isinstance(to_file, ast.DiffLog) and to_file.path is not None
    assert to_file.path.value == "logs/diffs.jsonl"
    to_stderr = one("diff_log stderr")
    assert isinstance(to_stderr, ast.DiffLog) and to_stderr.path is None
    quoted = one('diff_log "stderr"')  # a file named stderr
    assert isinstance(quoted, ast.DiffLog) and quoted.path is not None


@pytest.mark.parametrize("word", ["status", "baseline", "ignore", "json", "bytes", "stderr"])
def test_new_keywords_are_still_names_elsewhere(word: str) -> None:
    src = f"canary {word} {{ server http://a:1 compare {{ status baseline {word} }} }}\n"
    src += f"mirror {word} {{ to {word} }}"
    file, diags = parse(src, "k.mirror")
    assert diags == [] and file is not None


@pytest.mark.parametrize(
    ("src", "fragment"),
    [
        ("canary a { compare { body on } }", 'expected "bytes" or "json", found "on"'),
        ("canary a { compare { sample 10% by client } }", 'found "by"'),
        ("canary a { compare { compare { status } } }", 'found "compare"'),
        ('canary a { compare { status } diff_log "x" }', 'found "diff_log"'),
        ("mirror a { compare { status } }", 'found "compare"'),
    ],
)
def test_compare_syntax_errors(src: str, fragment: str) -> None:
    _, diags = parse(src, "s.mirror")
    assert len(diags) == 1 and diags[0].code == "syntax-error"
    assert fragment in diags[0].message
