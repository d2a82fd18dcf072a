"""docs/rules.md and README.md stay true to the code.

- every diagnostic code of the validator's catalogue is documented (table and section);
- every ```mirror block is a configuration that passes check; every ```mirror-invalid block
  gives the code of the section it is in;
- the `check` output shown for each bad example is what check prints today
  (`pytest --regen-goldens tests/test_docs.py` rewrites it);
- the README's quick start is the two commands, and CI runs the test one; its rule
  examples pass check; it names every command and every metric.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

from sidecar.cli import COMMANDS
from sidecar.cli import main as cli_main
from sidecar.dsl import loads
from sidecar.dsl.validate import CODES

ROOT = Path(__file__).resolve().parent.parent
RULES_MD = ROOT / "docs" / "rules.md"
README = ROOT / "README.md"

FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)
SECTION = re.compile(r"^### `([a-z0-9-]+)`$", re.MULTILINE)


def blocks(path: Path, lang: str) -> list[tuple[int, str]]:
    """(line number, text) of every fenced block with this info string."""
    text = path.read_text(encoding="utf-8")
    return [
        (text.count("\n", 0, m.start()) + 1, m.group(2))
        for m in FENCE.finditer(text)
        if m.group(1) == lang
    ]


def diagnostics_part(text: str) -> tuple[int, str]:
    """(offset, text) of the "## Diagnostics" chapter: its `### \\`code\\`` headings."""
    offset = text.index("\n## Diagnostics\n")
    return offset, text[offset:]


def section_of(path: Path, line: int) -> str | None:
    """The diagnostic section (`### \\`code\\``) holding `line`, if any."""
    text = path.read_text(encoding="utf-8")
    offset, _ = diagnostics_part(text)
    code = None
    for m in SECTION.finditer(text, offset):
        if text.count("\n", 0, m.start()) + 1 > line:
            break
        code = m.group(1)
    return code


def assert_valid(text: str, where: str) -> None:
    result = loads(text, where)
    errors = [d for d in result.diagnostics if d.severity == "error"]
    assert result.config is not None and not errors, f"{where}: {errors}"


# The route test cases' codes (sidecar/tools/expect.py, `check --expect`): not the
# validator's, documented in the same table and chapter.
CASE_CODES = {
    "case-syntax": "a route test cases file (`check --expect`) is not valid YAML",
    "invalid-case": "a route test case (`check --expect`) is malformed, or the cases file is not a list of cases",
}


def test_every_code_has_a_row_and_a_section() -> None:
    text = RULES_MD.read_text(encoding="utf-8")
    sections = SECTION.findall(diagnostics_part(text)[1])
    assert sorted(sections) == sorted({**CODES, **CASE_CODES})
    for code, description in {**CODES, **CASE_CODES}.items():
        severity = "warning" if description.startswith("warning: ") else "error"
        row = f"| [`{code}`](#{code}) | {severity} | {description.removeprefix('warning: ')} |"
        assert row in text, f"docs/rules.md: the table row of {code} differs from CODES"


VALID = blocks(RULES_MD, "mirror")
INVALID = blocks(RULES_MD, "mirror-invalid")


@pytest.mark.parametrize(("line", "text"), VALID, ids=[f"line{n}" for n, _ in VALID])
def test_valid_examples_pass_check(line: int, text: str) -> None:
    assert_valid(text, f"docs/rules.md:{line}")
    code = section_of(RULES_MD, line)
    if code is not None:  # a "Fixed" example no longer gives its section's diagnostic
        result = loads(text, f"docs/rules.md:{line}")
        assert code not in {d.code for d in result.diagnostics}


@pytest.mark.parametrize(("line", "text"), INVALID, ids=[f"line{n}" for n, _ in INVALID])
def test_invalid_examples_give_their_code(line: int, text: str) -> None:
    code = section_of(RULES_MD, line)
    assert code is not None, f"docs/rules.md:{line}: a bad example outside a code section"
    result = loads(text, f"docs/rules.md:{line}")
    assert code in {d.code for d in result.diagnostics}


CASE_EXAMPLE = re.compile(
    r"^Bad[^\n]*:\n\n```yaml\n(?P<bad>.*?)^```\n\n```text\n"
    r"\$ sidecar check rules/ --expect bad\.yaml\n(?P<out>.*?)^```\n\nFixed:\n\n```yaml\n(?P<fixed>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)


@pytest.mark.parametrize("code", sorted(CASE_CODES))
def test_case_code_examples(code: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Each case code's section: the bad cases file gives the output shown (the lines shown
    appear in order in the real output) and the fixed one passes."""
    _, part = diagnostics_part(RULES_MD.read_text(encoding="utf-8"))
    section = part.split(f"### `{code}`\n", 1)[1].split("\n### ", 1)[0]
    m = CASE_EXAMPLE.search(section)
    assert m is not None, code
    (tmp_path / "rules").mkdir()
    for f in (ROOT / "rules").glob("*.mirror"):
        (tmp_path / "rules" / f.name).write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # so that the output names `bad.yaml` and `rules/`
    try:
        (tmp_path / "bad.yaml").write_text(m["bad"], encoding="utf-8")
        assert cli_main(["check", "rules/", "--expect", "bad.yaml"]) == 1
        out = capsys.readouterr().out
        assert f"[{code}]" in out
        assert m["out"] in out, out
        (tmp_path / "bad.yaml").write_text(m["fixed"], encoding="utf-8")
        assert cli_main(["check", "rules/", "--expect", "bad.yaml"]) == 0
    finally:
        os.chdir(cwd)


def test_enough_examples() -> None:
    assert len(VALID) >= len(CODES)
    assert len(INVALID) >= 20


# --- README -------------------------------------------------------------------------------------


def test_quick_start_is_two_commands_and_ci_runs_the_tests() -> None:
    text = README.read_text(encoding="utf-8")
    quick = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = next(b for lang, b in FENCE.findall(quick) if lang == "sh")
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["./dev demo", "./dev test"]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "./dev test" in ci


@pytest.mark.parametrize(
    ("line", "text"),
    blocks(README, "mirror"),
    ids=[f"line{n}" for n, _ in blocks(README, "mirror")],
)
def test_readme_rule_examples_pass_check(line: int, text: str) -> None:
    assert_valid(text, f"README.md:{line}")


def test_readme_names_every_command_and_metric() -> None:
    text = README.read_text(encoding="utf-8")
    for name, _, _ in COMMANDS:
        assert f"sidecar {name}" in text, name
    from prometheus_client import CollectorRegistry

    from sidecar.prom import Metrics

    m = Metrics(CollectorRegistry())
    for collector in vars(m).values():
        name = getattr(collector, "_name", None)
        if isinstance(name, str) and name.startswith("sidecar_"):
            kind = getattr(collector, "_type", "")
            shown = f"{name}_total" if kind == "counter" else name
            assert f"`{shown}`" in text, shown


def test_readme_tour_is_rules_dir() -> None:
    """The tour's one block is rules/'s files one after another, each after a marker line."""
    text = README.read_text(encoding="utf-8")
    tour = text.split("## A tour of a rule file", 1)[1].split("\n## ", 1)[0]
    (block,) = [b for lang, b in FENCE.findall(tour) if lang == "mirror"]
    files = sorted((ROOT / "rules").glob("*.mirror"))
    expected = "\n".join(
        f"# ---- rules/{f.name} ----\n" + f.read_text(encoding="utf-8") for f in files
    )
    assert block == expected


CONSOLE_COMMAND = re.compile(r"^\$ sidecar (?P<args>.+)$", re.MULTILINE)


def test_readme_console_output_is_current(capsys: pytest.CaptureFixture[str]) -> None:
    """Each `$ sidecar check|explain ...` in the console blocks of README and docs/cli.md
    prints what follows it."""
    import shlex

    shown = 0
    text = README.read_text(encoding="utf-8") + (ROOT / "docs" / "cli.md").read_text("utf-8")
    for lang, block in FENCE.findall(text):
        if lang != "console":
            continue
        commands = list(CONSOLE_COMMAND.finditer(block))
        for i, m in enumerate(commands):
            args = shlex.split(m["args"])
            if args[0] not in ("check", "explain"):
                continue
            end = commands[i + 1].start() if i + 1 < len(commands) else len(block)
            expected = block[m.end() + 1 : end]
            cwd = os.getcwd()
            os.chdir(ROOT)  # the commands name rules/ relative to the checkout
            try:
                cli_main(args)
            finally:
                os.chdir(cwd)
            assert capsys.readouterr().out == expected, m["args"]
            shown += 1
    assert shown >= 4


# --- the documented `check` output --------------------------------------------------------------

OUTPUT = re.compile(
    r"^```mirror-invalid\n(?P<bad>.*?)^```\n\n```text\n\$ sidecar check bad\.mirror\n(?P<out>.*?)^```$",
    re.MULTILINE | re.DOTALL,
)


def check_output(text: str, where: Path) -> str:
    (where / "bad.mirror").write_text(text, encoding="utf-8")
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(where)  # so that the output names the file `bad.mirror`
    try:
        with contextlib.redirect_stdout(out):
            cli_main(["check", "bad.mirror"])
    finally:
        os.chdir(cwd)
    return out.getvalue()


def test_documented_check_output_is_current(tmp_path: Path, regen_goldens: bool) -> None:
    """Like the goldens: `pytest --regen-goldens tests/test_docs.py` rewrites the outputs."""
    text = RULES_MD.read_text(encoding="utf-8")
    matches = list(OUTPUT.finditer(text))
    assert len(matches) == len(INVALID)
    stale = []
    new = text
    for m in reversed(matches):
        actual = check_output(m["bad"], tmp_path)
        if actual != m["out"]:
            stale.append(text.count("\n", 0, m.start()) + 1)
            new = new[: m.start("out")] + actual + new[m.end("out") :]
    if regen_goldens and stale:
        RULES_MD.write_text(new, encoding="utf-8")
        return
    assert not stale, f"docs/rules.md: stale `check` output at lines {sorted(stale)}"
