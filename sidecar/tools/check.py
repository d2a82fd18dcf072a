"""`sidecar check [PATH...]`: validate a configuration like `nginx -t`.

Prints every diagnostic (source line and caret) and a summary line, or with
`--format json` exactly one JSON document (a list of diagnostics) on stdout.
Exit 0: no error; 1: an error (or a warning under --strict); 2: usage error.

`--expect CASES` then runs route test cases against the configuration
(sidecar/tools/expect.py): a line per case, the failures with their trace, and a
last line `N passed, M failed`; any failing case exits 1. A malformed case
fails with its diagnostic (file:line:col and a caret) and the other cases still
run. A cases file that is not valid YAML or not a list is reported like a rule
diagnostic and exits 1, as a broken rule file does; a CASES path that cannot be
read is a usage error (2). With `--format json` and `--expect` the output is one
object, not a list: {"diagnostics": [...], "cases": [...], "passed": N, "failed": M}.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING

from sidecar.model.config import DEFAULT_RULES

if TYPE_CHECKING:
    from sidecar.dsl.loader import LoadResult


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help=f"rule files or directories (default {DEFAULT_RULES})",
    )
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default text)"
    )
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 1)")
    parser.add_argument(
        "--expect",
        metavar="CASES",
        help="a YAML file of route test cases to run (with --format json: one object, "
        '{"diagnostics", "cases", "passed", "failed"})',
    )


def run(args: argparse.Namespace) -> int:
    from sidecar import diagnostics
    from sidecar.diagnostics import Diagnostic, Span
    from sidecar.dsl import load  # lark: `sidecar --help` does not pay for it

    paths: list[str] = list(args.paths) or [DEFAULT_RULES]
    result = load(paths)
    if result.usage_error is not None:
        print(f"sidecar check: error: {result.usage_error}", file=sys.stderr)
        if args.format == "json":
            span = Span(file=paths[0], line=1, column=1, end_line=1, end_column=1)
            usage = Diagnostic(
                span=span, severity="error", code="no-such-path", message=result.usage_error
            )
            print(json.dumps([usage.to_json()], indent=2))
        return 2
    diags = result.diagnostics
    if args.expect is not None:
        return _run_expect(args, result)
    if args.format == "json":
        print(diagnostics.to_json(diags, result.files))
    else:
        print(result.report(always=True))
    return 1 if diagnostics.has_errors(diags, strict=args.strict) else 0


def _run_expect(args: argparse.Namespace, result: LoadResult) -> int:
    """`check --expect`: the configuration's diagnostics as usual, then the cases."""
    # Only `check --expect` needs the routing table and the cases (YAML): not imported for
    # a plain `check` or `--help`.
    from sidecar import diagnostics
    from sidecar.routing.table import compile_table
    from sidecar.tools import expect
    from sidecar.tools.explain import always_in

    try:
        with open(args.expect, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not valid UTF-8"
        print(f"sidecar check: error: cannot read {args.expect}: {reason}", file=sys.stderr)
        return 2
    diags = list(result.diagnostics)
    sources = dict(result.sources)
    results: list[expect.CaseResult] = []
    files = len(result.files)
    cases: list[expect.Case | expect.BadCase] = []
    try:
        cases = expect.load_cases(text, args.expect)
    except expect.CaseFileError as exc:
        diags.append(exc.diagnostic)
        sources[args.expect] = text
        files += 1  # the summary counts the cases file's problem, and the file
    if result.config is not None and not diagnostics.has_errors(diags):
        table = compile_table(result.config, random=always_in)
        results = [expect.run_case(table, case) for case in cases]
    failed = diagnostics.has_errors(diags, strict=args.strict) or not all(r.passed for r in results)
    order = [*result.files, args.expect]
    if args.format == "json":
        doc = {
            "diagnostics": [d.to_json() for d in diagnostics.sort(diags, order)],
            **expect.to_json(results),
        }
        print(json.dumps(doc, indent=2))
    else:
        if diags:
            print(diagnostics.render_all(diags, sources, order))
        print(diagnostics.summary(diags, files))
        if cases and not results:
            print(f"{len(cases)} cases not run: the configuration has errors")
        print("\n".join(expect.to_text(results, text)))
    return 1 if failed else 0
