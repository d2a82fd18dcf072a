"""`sidecar fmt`: canonical layout, comments in place, idempotence, same table; the command."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.cli import main
from sidecar.dsl import loads
from sidecar.dsl.parser import parse
from sidecar.tools.fmt import format_text, quote
from tests.support.spans import without_spans

ROOT = Path(__file__).resolve().parents[2]
FILES = sorted((ROOT / "rules").glob("*.mirror")) + sorted(
    (ROOT / "tests" / "dsl" / "cases").glob("*.mirror")
)


def fmt(text: str) -> str:
    out, diags = format_text(text)
    assert out is not None, diags
    return out


def comments(text: str) -> list[str]:
    tree, _ = parse(text)
    assert tree is not None
    return [c.text.rstrip() for c in tree.comments]


def assert_same_meaning(before: str, after: str) -> None:
    a, b = loads(before), loads(after)
    assert [d.code for d in a.diagnostics] == [d.code for d in b.diagnostics]
    assert (a.config is None) == (b.config is None)
    if a.config is not None and b.config is not None:
        assert without_spans(a.config) == without_spans(b.config)
    assert comments(before) == comments(after)


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_files_format_idempotently_to_the_same_configuration(
    path: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:  # tests/dsl/cases/invalid-utf8.mirror: reported, left alone
        copy = tmp_path / path.name
        copy.write_bytes(path.read_bytes())
        code, _, err = run(capsys, str(copy))
        assert code == 1 and "[invalid-utf8]" in err, err
        assert copy.read_bytes() == path.read_bytes()
        return
    once, diags = format_text(text, path.name)
    if once is None:
        assert [d.code for d in diags] == ["syntax-error"]
        return
    assert fmt(once) == once
    assert_same_meaning(text, once)


def test_layout_and_comments_in_place() -> None:
    messy = (
        "# head comment\n"
        "\n\n\n"
        "listen   0.0.0.0:8080     # trailing on listen\n"
        "admin off\n"
        "canary v2 {   # on the opening line\n"
        "  # own line inside, first\n"
        "\n"
        "        server http://h:1 weight 2\n"
        "max_body 1MiB rate 200/s # after rate\n"
        '  drop header "A","B"\n'
        "  # last inside\n"
        "}   # after the brace\n"
        'mirror m{when method in(GET,HEAD)and(path^="/a\\\\b\\""  # mid-expression\n'
        '   or not header "X"exists) sample 12.5% by client to v2}\n'
        'exclude when path ~ "\\\\.css$"\n'
        "# at the end\n"
    )
    expected = (
        "# head comment\n"
        "\n"
        "listen 0.0.0.0:8080  # trailing on listen\n"
        "admin off\n"
        "\n"
        "canary v2 {  # on the opening line\n"
        "    # own line inside, first\n"
        "\n"
        "    server http://h:1 weight 2\n"
        "    max_body 1MiB\n"
        "    rate 200/s  # after rate\n"
        '    drop header "A", "B"\n'
        "    # last inside\n"
        "}  # after the brace\n"
        "\n"
        "mirror m {\n"
        '    when method in (GET, HEAD) and (path ^= "/a\\\\b\\""  # mid-expression\n'
        '        or not header "X" exists)\n'
        "    sample 12.5% by client\n"
        "    to v2\n"
        "}\n"
        "\n"
        'exclude when path ~ "\\\\.css$"\n'
        "# at the end\n"
    )
    assert fmt(messy) == expected
    assert fmt(expected) == expected
    assert_same_meaning(messy, expected)


def test_parentheses_are_kept_as_written() -> None:
    text = 'exclude when ((path == "/a")) or not (method == GET and (host == "h"))\n'
    assert fmt(text) == text


def test_end_of_line_comments_inside_an_expression_stay_at_the_end_of_their_line() -> None:
    # Every comment kept where it was. The expression is broken where the
    # source broke it with a comment, the operator leading the continuation line.
    text = 'exclude when path == "/a"  # one\n  or path == "/b"  # two\n'
    out = fmt(text)
    assert out == 'exclude when path == "/a"  # one\n    or path == "/b"  # two\n'
    assert fmt(out) == out
    rule = (
        "mirror m {\n"
        "    when method == GET  # reads\n"
        '        and path ^= "/api"  # api\n'
        "    to v2\n"
        "}\n"
    )
    assert fmt(rule) == rule
    messy = (
        "mirror m { when method == GET and  # reads\n"
        "# own line inside\n"
        'path ^= "/api" or (host == "a"  # in a group\n'
        'or host == "b") and path == "/x" to v2 }\n'
    )
    expected = (
        "mirror m {\n"
        "    when method == GET  # reads\n"
        "        # own line inside\n"
        '        and path ^= "/api" or (host == "a"  # in a group\n'
        '        or host == "b") and path == "/x"\n'
        "    to v2\n"
        "}\n"
    )
    assert fmt(messy) == expected
    assert fmt(expected) == expected
    assert_same_meaning(messy, expected)
    # a line break without a comment is still joined: one statement per line
    assert fmt('exclude when path == "/a"\n  or path == "/b"\n') == (
        'exclude when path == "/a" or path == "/b"\n'
    )


def test_a_comment_right_after_a_closing_brace_stays_attached() -> None:
    text = "canary a {\n    server http://h:1\n}  # after close\n# final comment\n"
    assert fmt(text) == text
    two = "canary a {\n}\n# about a\nmirror m {\n    to a\n}\n"
    out = fmt(two)
    assert out == "canary a {\n}\n# about a\n\nmirror m {\n    to a\n}\n"
    assert fmt(out) == out
    # with a blank line in between it is the next block's comment, as before
    spaced = "canary a {\n}\n\n# about m\nmirror m {\n    to a\n}\n"
    assert fmt(spaced) == spaced


def test_empty_and_comment_only_files() -> None:
    assert fmt("") == ""
    assert fmt("\n\n  \n") == ""
    assert fmt("  # only\n\n\n# comments   \n") == "# only\n\n# comments\n"


def test_primary_braces_follow_the_source() -> None:
    assert fmt("primary http://p:1\n") == "primary http://p:1\n"
    assert fmt("primary http://p:1 {}\n") == "primary http://p:1 {\n}\n"
    assert (
        fmt("primary http://p:1 { timeout 1.5s }") == "primary http://p:1 {\n    timeout 1.5s\n}\n"
    )


# --- the command ------------------------------------------------------------------------

MESSY = 'listen   0.0.0.0:8080\nexclude when path^="/a"\n'
TIDY = 'listen 0.0.0.0:8080\nexclude when path ^= "/a"\n'


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["fmt", *argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def test_compare_block_is_nested_one_level_deeper_with_its_comments() -> None:
    messy = (
        'diff_log   "d.jsonl"  # records\n'
        "canary v2 { server http://127.0.0.1:1\n"
        "  compare {   # judge\n"
        '  status header "A" ,"B"\n'
        "       # the body\n"
        '  body json ignore "$.a"  sample 10%\n'
        "\n\n"
        "  baseline v1 max_body 2MiB\n"
        "  # last\n"
        "  }  # end\n"
        "}\n"
        "canary v1 { server http://127.0.0.1:2 compare { } }\n"
        "diff_log stderr\n"
    )
    expected = (
        'diff_log "d.jsonl"  # records\n'
        "\n"
        "canary v2 {\n"
        "    server http://127.0.0.1:1\n"
        "    compare {  # judge\n"
        "        status\n"
        '        header "A", "B"\n'
        "        # the body\n"
        "        body json\n"
        '        ignore "$.a"\n'
        "        sample 10%\n"
        "\n"
        "        baseline v1\n"
        "        max_body 2MiB\n"
        "        # last\n"
        "    }  # end\n"
        "}\n"
        "\n"
        "canary v1 {\n"
        "    server http://127.0.0.1:2\n"
        "    compare {\n"
        "    }\n"
        "}\n"
        "\n"
        "diff_log stderr\n"
    )
    assert fmt(messy) == expected
    assert fmt(expected) == expected
    assert comments(messy) == comments(expected)


def test_rewrites_in_place(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "a.mirror").write_text(MESSY)
    (tmp_path / "b.mirror").write_text(TIDY)
    assert run(capsys, str(tmp_path)) == (0, "", "")
    assert (tmp_path / "a.mirror").read_text() == TIDY
    assert run(capsys, str(tmp_path), "--check") == (0, "", "")


def test_check_lists_files_that_would_change(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "a.mirror").write_text(MESSY)
    (tmp_path / "b.mirror").write_text(TIDY)
    code, out, _ = run(capsys, str(tmp_path), "--check")
    assert (code, out) == (1, f"{tmp_path / 'a.mirror'}\n")
    assert (tmp_path / "a.mirror").read_text() == MESSY


def test_diff_prints_a_unified_diff_and_changes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    path = tmp_path / "a.mirror"
    path.write_text(MESSY)
    code, out, _ = run(capsys, str(path), "--diff")
    assert code == 0
    assert out.startswith(f"--- {path}\n+++ {path}\n@@ ")
    assert '-exclude when path^="/a"\n+listen 0.0.0.0:8080\n+exclude when path ^= "/a"\n' in out
    assert path.read_text() == MESSY


def test_syntax_errors_leave_the_file_alone_and_the_others_formatted(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    broken = "listen   0.0.0.0:8080\nmirror m { when path == }\n"
    (tmp_path / "a.mirror").write_text(broken)
    (tmp_path / "b.mirror").write_text(MESSY)
    code, _, err = run(capsys, str(tmp_path))
    assert code == 1
    assert f"{tmp_path / 'a.mirror'}:2:" in err and "[syntax-error]" in err
    assert (tmp_path / "a.mirror").read_text() == broken
    assert (tmp_path / "b.mirror").read_text() == TIDY


def test_semantic_errors_are_not_fmt_business(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    (tmp_path / "a.mirror").write_text("mirror m {to   nowhere}\n")
    assert run(capsys, str(tmp_path / "a.mirror")) == (0, "", "")
    assert (tmp_path / "a.mirror").read_text() == "mirror m {\n    to nowhere\n}\n"


def test_bad_paths_and_encodings(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert run(capsys, str(tmp_path / "nope"))[0] == 2
    (tmp_path / "bin.mirror").write_bytes(b"listen \xff:1\n")
    code, _, err = run(capsys, str(tmp_path / "bin.mirror"))
    assert code == 1 and "not valid UTF-8" in err
    # the same diagnostic as `check` prints: file:line:col, the code, the caret line
    head = f"{tmp_path / 'bin.mirror'}:1:8: error: file is not valid UTF-8"
    assert err.startswith(head) and err.splitlines()[0].endswith("[invalid-utf8]"), err
    assert err.splitlines()[1].startswith("    1 | listen ")
    assert (tmp_path / "bin.mirror").read_bytes() == b"listen \xff:1\n"


# --- generated configurations ----------------------------------------------------------

SEPARATORS = [" ", "  ", "\n", "\n\n  ", "\t", " \n\n\n"]
COMMENTS = ["#", "# c", "#  spaced  ", '# } { "x" \\', "#when"]


@st.composite
def separator(draw: st.DrawFn) -> str:
    sep = draw(st.sampled_from(SEPARATORS))
    if draw(st.integers(0, 9)) == 0:
        return f"{sep}{draw(st.sampled_from(COMMENTS))}\n{draw(st.sampled_from(SEPARATORS))}"
    return sep


STRINGS = st.text(alphabet='ab/."\\ é', max_size=6)
REGEXES = st.sampled_from(["^/a", "\\.css$", "(a|b)", "x\\\\y", 'a"b'])
HEADERS = st.sampled_from(["X-A", "x-b", "Cookie"])


def predicate_tests() -> st.SearchStrategy[list[str]]:
    method = st.lists(st.sampled_from(["GET", "HEAD", "POST"]), min_size=1, max_size=3)
    return st.one_of(
        method.map(lambda ms: ["method", "in", "(", *", ".join(ms).split(" "), ")"]),
        st.tuples(st.sampled_from(["==", "!="]), st.sampled_from(["GET", "PUT"])).map(
            lambda t: ["method", t[0], t[1]]
        ),
        st.tuples(
            st.sampled_from(["path", "host"]),
            st.sampled_from(["==", "!=", "^=", "$=", "*="]),
            STRINGS,
        ).map(lambda t: [t[0], t[1], quote(t[2])]),
        REGEXES.map(lambda r: ["path", "~", quote(r)]),
        st.tuples(st.sampled_from(["header", "query", "cookie"]), HEADERS).map(
            lambda t: [t[0], quote(t[1]), "exists"]
        ),
        st.tuples(HEADERS, st.lists(STRINGS, min_size=1, max_size=2)).map(
            lambda t: ["header", quote(t[0]), "in", "(", ", ".join(map(quote, t[1])), ")"]
        ),
        st.just(["client", "in", "(", '"10.0.0.0/8"', ",", '"::1/128"', ")"]),
    )


EXPRS = st.recursive(
    predicate_tests(),
    lambda inner: st.one_of(
        inner.map(lambda e: ["not", *e]),
        inner.map(lambda e: ["(", *e, ")"]),
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(lambda t: [*t[0], t[1], *t[2]]),
    ),
    max_leaves=6,
)


@st.composite
def configurations(draw: st.DrawFn) -> str:
    n = draw(st.integers(1, 3))
    canaries = [f"c{i}" for i in range(n)]
    stmts: list[list[str]] = [["primary", "http://127.0.0.1:1"]]
    for name in canaries:
        body = [["server", "http://127.0.0.1:2"]]
        body += draw(
            st.lists(
                st.sampled_from(
                    [
                        ["max_body", "1MiB"],
                        ["timeout", "2.5s"],
                        ["rate", "10/m"],
                        ["body", "off"],
                        ["mark", '"X-M"', '"a\\"b"'],
                        ["drop", "header", '"Authorization",', '"Cookie"'],
                        ["compare", "{", "status", "}"],
                        ["compare", "{", "body", "json", "ignore", '"$.a",', '"$.b[*].id"', "}"],
                        [
                            "compare",
                            "{",
                            "header",
                            '"A",',
                            '"B"',
                            "max_body",
                            "2MiB",
                            "sample",
                            "10%",
                            "}",
                        ],
                    ]
                ),
                unique_by=lambda s: s[0],
                max_size=3,
            )
        )
        stmts.append(["canary", name, "{", *[t for s in body for t in s], "}"])
    for i in range(draw(st.integers(0, 3))):
        body = []
        if draw(st.booleans()):
            body.append(["when", *draw(EXPRS)])
        if draw(st.booleans()):
            by = draw(st.sampled_from([[], ["by", "client"], ["by", "header", '"X-U"']]))
            body.append(["sample", draw(st.sampled_from(["10%", "0.5", "100%"])), *by])
        targets = draw(st.lists(st.sampled_from(canaries), min_size=1, unique=True))
        body.append(["to", ", ".join(targets)])
        stmts.append(["mirror", f"m{i}", "{", *[t for s in body for t in s], "}"])
    for _ in range(draw(st.integers(0, 2))):
        stmts.append(["exclude", "when", *draw(EXPRS)])
    if draw(st.booleans()):
        stmts.append(["diff_log", draw(st.sampled_from(["stderr", '"diffs.jsonl"']))])
    order = draw(st.permutations(range(len(stmts))))
    return "".join(draw(separator()).join(stmts[i]) + draw(separator()) for i in order)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configurations())
def test_generated_configurations_are_idempotent_and_keep_the_table(text: str) -> None:
    result = loads(text)
    assert result.config is not None, [d.headline() for d in result.diagnostics]
    once = fmt(text)
    assert fmt(once) == once
    assert_same_meaning(text, once)


def test_shipped_rule_files_are_already_canonical(capsys: pytest.CaptureFixture[str]) -> None:
    """rules/ and the compose rules are the examples people copy: `fmt --check` passes."""
    code = main(["fmt", "--check", str(ROOT / "rules"), str(ROOT / "deploy" / "compose-rules")])
    assert code == 0, capsys.readouterr().out


def test_pause_and_request_id_are_one_line_each() -> None:
    src = 'request_id   "X-Request-Id"\ncanary v2 {\nserver http://c:1\npause  after 3   failures for 500ms }\n'
    assert fmt(src) == (
        'request_id "X-Request-Id"\n\ncanary v2 {\n    server http://c:1\n'
        "    pause after 3 failures for 500ms\n}\n"
    )
