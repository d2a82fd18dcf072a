"""`sidecar check --expect`: the shipped cases pass; failures, unknown canaries, bad case files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.tools.expect import BadCase, Case, CaseFileError, load_cases

ROOT = Path(__file__).resolve().parents[2]
RULES = str(ROOT / "rules")


def check(capsys: pytest.CaptureFixture[str], cases: Path | str, *extra: str) -> tuple[int, str]:
    code = main(["check", RULES, "--expect", str(cases), *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cases.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_cases_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = check(capsys, ROOT / "rules" / "cases.yaml")
    lines = out.splitlines()
    assert code == 0, out
    assert lines[0] == "0 errors, 0 warnings in 4 files"
    assert lines[-1] == f"{len(lines) - 2} passed, 0 failed"


def test_a_wrong_case_fails_with_expected_actual_and_trace(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cases = write(
        tmp_path,
        "- name: reads go to v3 (wrong)\n"
        "  request: GET /api/items\n"
        "  headers: {X-User-Id: 29}\n"
        "  expect: [v3]\n"
        "- name: admin is not shadowed\n"
        "  request: POST /admin/users\n"
        "  expect: []\n",
    )
    code, out = check(capsys, cases)
    assert code == 1
    assert f"FAIL reads go to v3 (wrong) ({cases}:1)" in out
    assert "  expected: [v3]\n  actual:   [v2]\n" in out
    assert "rule api_reads (" in out and 'sample 10% by key "29" at 0.0339: in; -> v2' in out
    assert "ok   admin is not shadowed" in out
    assert out.splitlines()[-1] == "1 passed, 1 failed"


def test_expect_is_a_set(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    cases = write(
        tmp_path,
        "- name: writes\n  request: POST /api/v1/orders/1\n  client: 10.0.0.7\n  expect: [v3, v2]\n",
    )
    assert check(capsys, cases)[0] == 0


def test_unknown_canary_in_expect_is_an_error_of_that_case(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cases = write(
        tmp_path,
        "- name: typo\n  request: GET /admin\n  expect: [v9]\n"
        "- name: fine\n  request: GET /admin\n  expect: []\n",
    )
    code, out = check(capsys, cases)
    assert code == 1
    assert "FAIL typo" in out and "error: unknown canary 'v9' in expect" in out
    assert out.splitlines()[-1] == "1 passed, 1 failed"


def test_json_is_one_document_with_every_case(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cases = write(
        tmp_path,
        "- name: a\n  request: GET /admin\n  expect: []\n"
        "- name: b\n  request: GET /admin\n  expect: [v2]\n",
    )
    code, out = check(capsys, cases, "--format", "json")
    doc = json.loads(out)
    assert code == 1
    assert (doc["passed"], doc["failed"], doc["diagnostics"]) == (1, 1, [])
    assert [(c["name"], c["passed"]) for c in doc["cases"]] == [("a", True), ("b", False)]
    assert doc["cases"][1]["trace"]["excluded_by"].endswith("90-exclude.mirror:2")


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("- name: a\n  request: GET /\n  expect: [v2\n", ":4:1:", "invalid YAML"),
        ("- name: a\n\trequest: GET /\n", ":2:1:", "invalid YAML"),
        ("name: a\n", ":1:1:", "must be a YAML list"),
    ],
)
def test_a_bad_cases_file_is_a_positioned_diagnostic(
    text: str, where: str, message: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cases = write(tmp_path, text)
    with pytest.raises(CaseFileError) as info:
        load_cases(text, str(cases))
    assert message in info.value.diagnostic.message
    code, out = check(capsys, cases)
    assert code == 1
    assert f"{cases}{where} error: " in out and message in out
    assert out.splitlines()[-1] == "0 passed, 0 failed"
    # the summary counts the cases file's problem (4 rule files and the cases file)
    assert out.splitlines()[-2] == "1 error, 0 warnings in 5 files"


GOOD = "- name: good\n  request: GET /admin\n  expect: []\n"


@pytest.mark.parametrize(
    ("text", "name", "where", "message"),
    [
        ("- just a string\n", "case 1", ":1:3:", "must be a mapping"),
        ("- name: a\n  requst: GET /\n  expect: []\n", "a", ":2:3:", "unknown key 'requst'"),
        ("- name: a\n  expect: []\n", "a", ":1:3:", "no 'request'"),
        ("- name: a\n  request: GET /\n", "a", ":1:3:", "no 'expect'"),
        ("- name: a\n  request: GET /\n  expect: v2\n", "a", ":3:11:", "expect must be a list"),
        ("- name: a\n  request: fetch it\n  expect: []\n", "a", ":2:12:", "invalid method"),
        (
            "- name: a\n  request: GET /\n  client: here\n  expect: []\n",
            "a",
            ":3:11:",
            "IP address",
        ),
        (
            "- name: a\n  request: GET /\n  headers: [X]\n  expect: []\n",
            "a",
            ":3:12:",
            "mapping",
        ),
        (
            "- name: a\n  request: GET /\n  headers: {B d: 1}\n  expect: []\n",
            "a",
            ":3:13:",
            "Name: value",
        ),
        (
            "- {name: a, request: GET /, expect: []}\n- {name: a, request: GET /, expect: []}\n",
            "a",
            ":2:3:",
            "duplicate case name",
        ),
    ],
)
def test_a_bad_case_fails_and_the_others_run(
    text: str,
    name: str,
    where: str,
    message: str,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    cases = write(tmp_path, text + GOOD)
    loaded = load_cases(text + GOOD, str(cases))
    bad = [c for c in loaded if isinstance(c, BadCase)]
    assert len(bad) == 1 and message in bad[0].diagnostic.message
    assert isinstance(loaded[-1], Case) and loaded[-1].name == "good"
    code, out = check(capsys, cases)
    assert code == 1
    assert f"FAIL {name} ({cases}:" in out
    assert f"{cases}{where} error: " in out and message in out
    assert "ok   good" in out
    lines = out.splitlines()
    assert lines[0] == "0 errors, 0 warnings in 4 files"  # the cases are not configuration
    passed = sum(line.startswith("ok ") for line in lines)
    assert lines[-1] == f"{passed} passed, 1 failed" and passed >= 1


def test_a_bad_case_in_json_is_a_failed_case_with_its_diagnostic(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cases = write(tmp_path, "- name: b\n  requst: GET /\n  expect: []\n" + GOOD)
    code, out = check(capsys, cases, "--format", "json")
    doc = json.loads(out)
    assert code == 1
    assert (doc["passed"], doc["failed"], doc["diagnostics"]) == (1, 1, [])
    bad, good = doc["cases"]
    assert (bad["name"], bad["passed"], bad["trace"]) == ("b", False, None)
    assert bad["diagnostic"]["code"] == "invalid-case" and bad["diagnostic"]["line"] == 2
    assert "unknown key 'requst'" in bad["errors"][0]
    assert (good["name"], good["passed"], good["diagnostic"]) == ("good", True, None)


@pytest.mark.parametrize("text", ["", "\n", "# no cases yet\n", "[]\n"])
def test_a_cases_file_without_cases_passes_with_nothing_run(
    text: str, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert load_cases(text, "c.yaml") == []
    code, out = check(capsys, write(tmp_path, text))
    assert code == 0
    assert out.splitlines()[-2:] == ["0 errors, 0 warnings in 4 files", "0 passed, 0 failed"]


def test_missing_cases_file_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code = main(["check", RULES, "--expect", str(tmp_path / "nope.yaml")])
    _, err = capsys.readouterr()
    assert code == 2 and "cannot read" in err


def test_cases_do_not_run_against_a_broken_configuration(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.mirror"
    bad.write_text("mirror m { to nowhere }\n")
    cases = write(tmp_path, "- name: a\n  request: GET /\n  expect: []\n")
    code = main(["check", str(bad), "--expect", str(cases)])
    out = capsys.readouterr().out
    assert code == 1
    assert "[unknown-canary]" in out and "1 cases not run" in out


def test_scalars_are_taken_as_written() -> None:
    (case,) = load_cases(
        "- name: 7\n  request: GET /x\n  headers: {X-Id: 007, X-On: yes, X-Many: [1, 2]}\n"
        "  expect: []\n",
        "c.yaml",
    )
    assert isinstance(case, Case) and case.name == "7"
    assert case.headers == ("X-Id: 007", "X-On: yes", "X-Many: 1", "X-Many: 2")
    assert case.client == "127.0.0.1" and case.where == "c.yaml:1"
