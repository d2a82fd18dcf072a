"""`sidecar check` end to end: main(argv) in process and the installed script by subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.cli import main

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "sidecar"
GOOD = "primary http://127.0.0.1:8081\ncanary v2 { server http://127.0.0.1:8091 }\nmirror a { to v2 }\n"
WARN = GOOD + "canary v3 { server http://127.0.0.1:8092 }\n"
BAD = GOOD + "mirror b { to v9 }\n"


def check(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["check", *args])
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, name: str, data: str | bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data.encode() if isinstance(data, str) else data)
    return str(p)


def test_project_rules_pass(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = check([str(ROOT / "rules")], capsys)
    assert code == 0
    assert out.strip() == "0 errors, 0 warnings in 4 files"


@pytest.mark.parametrize(
    ("content", "strict", "exit_code"),
    [(GOOD, False, 0), (WARN, False, 0), (WARN, True, 1), (BAD, False, 1), (GOOD, True, 0)],
)
def test_exit_codes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, strict: bool, exit_code: int
) -> None:
    path = write(tmp_path, "a.mirror", content)
    code, _, _ = check([path, *(["--strict"] if strict else [])], capsys)
    assert code == exit_code


def test_text_output_has_caret_and_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "a.mirror", BAD)
    code, out, _ = check([path], capsys)
    lines = out.splitlines()
    assert code == 1
    assert (
        lines[0] == f'{path}:4:15: error: unknown canary "v9" (did you mean "v2"?) [unknown-canary]'
    )
    assert lines[1] == "    4 | mirror b { to v9 }"
    assert lines[2] == "      |               ^^"
    assert lines[-1] == "1 error, 0 warnings in 1 file"


def test_json_is_one_document(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "a.mirror", BAD.replace("mirror b", "canary v4 { } mirror b"))
    code, out, _ = check(["--format", "json", path], capsys)
    doc = json.loads(out)
    assert code == 1 and isinstance(doc, list)
    assert {d["code"] for d in doc} == {"unknown-canary", "missing-server", "unused-canary"}
    assert set(doc[0]) == {
        "file",
        "line",
        "column",
        "end_line",
        "end_column",
        "severity",
        "code",
        "message",
    }


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = check([str(tmp_path / "nope")], capsys)
    assert (code, out) == (2, "") and "no such file or directory" in err
    code, out, _ = check(["--format", "json", str(tmp_path / "nope")], capsys)
    assert code == 2 and json.loads(out)[0]["code"] == "no-such-path"
    assert main(["check", "--format", "xml"]) == 2
    assert main(["bogus-command"]) == 2
    assert main([]) == 2
    capsys.readouterr()


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("sidecar ")
    assert main(["--help"]) == 0
    assert "check" in capsys.readouterr().out
    assert main(["check", "--help"]) == 0


def test_default_path_is_rules(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    code, out, _ = check([], capsys)
    assert code == 0 and out.endswith("in 4 files\n")


@pytest.mark.parametrize(
    ("data", "expected_code"),
    [
        (b"", None),
        (b"\xff\xfe\x00garbage\x80\x81", "invalid-utf8"),
        (bytes(range(256)) * 4, "invalid-utf8"),
        (b"\x00\x01\x02 binary but valid utf-8", "syntax-error"),
        (b"\xef\xbb\xbf" + GOOD.encode(), None),  # a BOM is tolerated
    ],
)
def test_odd_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], data: bytes, expected_code: str | None
) -> None:
    path = write(tmp_path, "x.mirror", data)
    code, out, _ = check(["--format", "json", path], capsys)
    codes = {d["code"] for d in json.loads(out)}
    if expected_code is None:
        assert "syntax-error" not in codes and all(c in {"no-primary"} for c in codes)
    else:
        assert expected_code in codes and code == 1


def test_empty_directory_and_directory_named_mirror(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, _ = check([str(empty)], capsys)
    assert code == 1 and "[no-rule-files]" in out
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "a.mirror").write_text(GOOD)
    (conf / "b.mirror").mkdir()  # a directory where a rule file should be: unreadable
    (conf / "notes.txt").write_text("ignored")
    code, out, _ = check([str(conf)], capsys)
    assert code == 1 and "[unreadable-file]" in out and out.endswith("in 2 files\n")


@pytest.mark.skipif(os.geteuid() == 0, reason="root can read a chmod 000 file")
def test_unreadable_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, "a.mirror", GOOD)
    os.chmod(path, 0)
    code, out, _ = check([path], capsys)
    assert code == 1 and "[unreadable-file]" in out


def test_ten_megabyte_file_is_refused_quickly(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "big.mirror", ("# " + "x" * 97 + "\n") * 105_000)
    code, out, _ = check([path], capsys)
    assert code == 1 and "[file-too-large]" in out


def test_internal_errors_become_a_diagnostic(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sidecar.dsl.loader as loader

    def boom(*args: object, **kwargs: object) -> object:
        raise RuntimeError("kaboom")

    monkeypatch.setattr(loader, "validate", boom)
    path = write(tmp_path, "a.mirror", GOOD)
    code, out, _ = check([path], capsys)
    assert code == 1 and "[internal-error]" in out and "kaboom" in out and "Traceback" not in out


def run_script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd, timeout=60)


def test_script_exit_codes_and_json(tmp_path: Path) -> None:
    ok = run_script("check", str(ROOT / "rules"))
    assert ok.returncode == 0 and ok.stdout.endswith("0 errors, 0 warnings in 4 files\n")
    bad = run_script("check", "--format", "json", write(tmp_path, "b.mirror", BAD))
    assert bad.returncode == 1 and json.loads(bad.stdout)[0]["code"] == "unknown-canary"
    missing = run_script("check", str(tmp_path / "missing"))
    assert missing.returncode == 2 and missing.stdout == ""
    assert run_script("--version").returncode == 0


def test_script_never_prints_a_traceback(tmp_path: Path) -> None:
    garbage = write(tmp_path, "g.mirror", bytes(range(256)) * 64)
    empty = write(tmp_path, "e.mirror", b"")
    big = write(tmp_path, "big.mirror", os.urandom(10 * 1024 * 1024))
    for path in (garbage, empty, big):
        proc = run_script("check", path)
        assert proc.returncode in (0, 1)
        assert "Traceback" not in proc.stdout + proc.stderr


def test_diagnostics_follow_the_configuration_order_not_file_names(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The files are taken in the order given. z1 is given first, so its
    # problems come first, although "a1" sorts before "z1".
    syn = write(tmp_path, "z1.mirror", "canary v2 {\n")
    sem = write(tmp_path, "a1.mirror", 'mirror m { when path ~ "(" to v2 }\n')
    code, out, _ = check([syn, sem], capsys)
    heads = [line for line in out.splitlines() if ": error: " in line]
    assert code == 1 and [h.split(":")[0] for h in heads] == [syn, sem], out
    code, out, _ = check(["--format", "json", syn, sem], capsys)
    assert [d["file"] for d in json.loads(out)] == [syn, sem]


def test_unused_canaries_in_two_files_follow_the_order_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    z = write(tmp_path, "z.mirror", GOOD + "canary z3 { server http://127.0.0.1:1 }\n")
    a = write(tmp_path, "a.mirror", "canary a3 { server http://127.0.0.1:1 }\n")
    _, out, _ = check([z, a], capsys)
    heads = [line for line in out.splitlines() if "[unused-canary]" in line]
    assert [h.split(":")[0] for h in heads] == [z, a], out


def test_only_the_chosen_command_is_imported() -> None:
    """`sidecar --help` imports no command module; `check` imports neither serve nor demo."""
    script = (
        "import sys\n"
        "from sidecar.cli import main\n"
        "main(sys.argv[1:])\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('sidecar.'))))\n"
    )
    helped = subprocess.run(
        [sys.executable, "-c", script, "--help"], capture_output=True, text=True, check=True
    ).stdout.split()
    assert not [m for m in helped if m.startswith(("sidecar.tools", "sidecar.serve"))]
    checked = subprocess.run(
        [sys.executable, "-c", script, "check", str(ROOT / "rules")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert "sidecar.tools.check" in checked
    assert not [m for m in checked if m.startswith(("sidecar.serve", "sidecar.demo"))]
