"""`sidecar check [PATH...]`: validate a configuration like `nginx -t` (SPEC section 2).

Prints every diagnostic (source line and caret) and a summary line, or with
`--format json` exactly one JSON document (a list of diagnostics) on stdout.
Exit 0: no error; 1: an error (or a warning under --strict); 2: usage error.
"""

from __future__ import annotations

import argparse
import json
import sys

DEFAULT_PATH = "rules/"


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "paths",
        nargs="*",
        metavar="PATH",
        help=f"rule files or directories (default {DEFAULT_PATH})",
    )
    parser.add_argument(
        "--format", choices=("text", "json"), default="text", help="output format (default text)"
    )
    parser.add_argument("--strict", action="store_true", help="treat warnings as errors (exit 1)")


def run(args: argparse.Namespace) -> int:
    from sidecar import diagnostics
    from sidecar.diagnostics import Diagnostic, Span
    from sidecar.dsl import load
    from sidecar.dsl.loader import LoadResult, internal_error

    paths: list[str] = list(args.paths) or [DEFAULT_PATH]
    try:
        result = load(paths)
    except Exception as exc:  # load() does not raise; if it ever does, say so as a diagnostic
        result = LoadResult(
            config=None, diagnostics=[internal_error(paths[0], exc)], sources={}, files=[]
        )
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
    if args.format == "json":
        print(diagnostics.to_json(diags))
    else:
        if diags:
            print(diagnostics.render_all(diags, result.sources))
        print(diagnostics.summary(diags, len(result.files)))
    return 1 if diagnostics.has_errors(diags, strict=args.strict) else 0
