"""`sidecar lsp`: the language server for `.mirror` files, over standard input and output.

An editor starts it and speaks LSP 3.17 on its stdin and stdout; nothing else is
ever written to stdout. Logs go to stderr (`--log-level`). It runs until the
editor sends `exit` or closes stdin.
"""

from __future__ import annotations

import argparse
import logging
import sys


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--stdio",
        action="store_true",
        help="talk LSP over stdin/stdout (the default and only transport; editors pass it)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="warning",
        help="what to log on stderr (default warning)",
    )


def _not_a_refusal(record: logging.LogRecord) -> bool:
    from pygls.exceptions import JsonRpcInvalidParams

    return not (record.exc_info and isinstance(record.exc_info[1], JsonRpcInvalidParams))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        stream=sys.stderr,
        level=getattr(logging, args.log_level.upper()),
        format="sidecar lsp: %(levelname)s: %(message)s",
    )
    from sidecar.tools.lsp.server import server  # pygls: not for `sidecar --help`

    # A refused request (rename to an existing name...) is an answer to the editor, not a
    # fault of the server: pygls would log each with a traceback.
    logging.getLogger("pygls.protocol").addFilter(_not_a_refusal)
    server.start_io()
    return 0
