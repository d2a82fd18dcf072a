"""The operator's commands besides `serve`: check, explain, expect (route cases), fmt, diffs,
and lsp (the language server for editors, a package of its own).

Each module exposes `configure(parser)` and `run(args) -> int` for `sidecar.cli`
and imports its heavy parts (lark, rich, httpx) inside `run`, so `sidecar --help`
and `check` start fast. This layer may import every layer below it (serve,
shadow, routing, the rule language, the model, http); only the CLI imports it.
"""
