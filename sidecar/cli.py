"""`sidecar` command line: main(argv) -> exit code.

Each command lives in its own module exposing `configure(parser)` and
`run(args) -> int`. Only the chosen command's module is imported (the help line of
every command is here), and modules import heavy things inside `run()`, so that
`sidecar --help` and `sidecar check` start fast. This is the process edge: argparse's exits become
return codes (usage errors: 2), and an unexpected exception becomes one
`internal-error` line instead of a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Callable, Sequence
from typing import Protocol, cast

from sidecar import __version__

# (name, module, help). Command owners add their one line here.
COMMANDS: tuple[tuple[str, str, str], ...] = (
    ("check", "sidecar.tools.check", "validate rule files, like nginx -t"),
    ("serve", "sidecar.serve.command", "run the proxy with the rules in PATH"),
    ("explain", "sidecar.tools.explain", "show how the rules route one request"),
    ("fmt", "sidecar.tools.fmt", "rewrite rule files in the canonical layout"),
    ("diffs", "sidecar.tools.diffs", "report diff records from files, stdin or admin URLs"),
    (
        "lsp",
        "sidecar.tools.lsp.command",
        "a language server for .mirror files, for editors (stdio)",
    ),
    (
        "demo",
        "sidecar.demo.command",
        "run a loopback demo: a primary, three canaries, the proxy, traffic",
    ),
)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _Command(Protocol):
    def configure(self, parser: argparse.ArgumentParser) -> None: ...
    def run(self, args: argparse.Namespace) -> int: ...


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser for `argv`: every command listed, the one `argv` names configured."""
    parser = argparse.ArgumentParser(
        prog="sidecar",
        description="A request-shadowing reverse proxy: tees sampled requests to canaries.",
        epilog="Every command and flag: docs/cli.md. The rule language: docs/rules.md.",
    )
    parser.add_argument("--version", action="version", version=f"sidecar {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    for name, module_name, help_text in COMMANDS:
        cmd_parser = sub.add_parser(
            name, help=help_text, description=help_text, epilog=f"See docs/cli.md#sidecar-{name}."
        )
        if name != chosen:
            continue  # not imported: argparse never reaches this command's parser
        try:
            module = cast(_Command, importlib.import_module(module_name))
            module.configure(cmd_parser)
            run: Callable[[argparse.Namespace], int] = module.run
        except Exception as exc:  # one broken command must not take the others down
            run = _unavailable(name, exc)
            cmd_parser.add_argument("rest", nargs=argparse.REMAINDER)
        cmd_parser.set_defaults(_run=run)
    return parser


def _unavailable(name: str, exc: Exception) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        print(
            f"sidecar {name}: error: internal error: {type(exc).__name__}: {exc} [internal-error]",
            file=sys.stderr,
        )
        return EXIT_FAILURE

    return run


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit status (never raises, never prints a traceback)."""
    args_list = sys.argv[1:] if argv is None else argv
    try:
        parser = build_parser(args_list)
        args = parser.parse_args(args_list)
        if getattr(args, "_run", None) is None:
            parser.print_help(sys.stderr)
            return EXIT_USAGE
        return int(args._run(args))
    except SystemExit as exc:  # argparse: --help/--version (0) and usage errors (2)
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `sidecar check | head`: the reader left; not our error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so the exit-time flush is silent
        return EXIT_FAILURE
    except Exception as exc:
        print(
            f"sidecar: error: internal error: {type(exc).__name__}: {exc} (please report this) [internal-error]",
            file=sys.stderr,
        )
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
