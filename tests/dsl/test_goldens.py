"""Golden files: one bad rule file per diagnostic code and its rendered `check` output.

A case is named after its code: `<code>.mirror`, or `<code>.<slip>.mirror` for more
cases of one code (the common slips a new user makes, each with its own message).
`pytest --regen-goldens` rewrites the `.expected` files from the current output;
review the diff before committing it.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import pytest

from sidecar.cli import main
from sidecar.dsl.validate import CODES

HERE = Path(__file__).resolve().parent
CASES = sorted((HERE / "cases").glob("*.mirror"))
# Codes that one rule file cannot produce: they are about paths, permissions or bugs,
# and are covered in test_cli.py instead.
NOT_FROM_A_FILE = {
    "no-such-path",
    "no-rule-files",
    "unreadable-file",
    "internal-error",
    "file-too-large",
}


def run_check(rel: str) -> tuple[int, str]:
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(HERE)  # so that file names in the output are `cases/<code>.mirror`
    try:
        with contextlib.redirect_stdout(out):
            code = main(["check", rel])
    finally:
        os.chdir(cwd)
    return code, out.getvalue()


@pytest.mark.parametrize("case", CASES, ids=lambda p: p.stem)
def test_golden(case: Path, regen_goldens: bool) -> None:
    code, output = run_check(f"cases/{case.name}")
    expected_file = case.with_suffix(".expected")
    if regen_goldens or not expected_file.exists():
        expected_file.write_text(output, encoding="utf-8")
    assert output == expected_file.read_text(encoding="utf-8")
    assert f"[{_code(case)}]" in output, "the case must produce the code it is named after"
    is_warning = "warning:" in output and "error:" not in output
    assert code == (0 if is_warning else 1)


def _code(case: Path) -> str:
    return case.stem.split(".", 1)[0]


def test_every_code_has_a_golden_case() -> None:
    have = {_code(p) for p in CASES}
    assert set(CODES) - NOT_FROM_A_FILE <= have
    assert have <= set(CODES)
