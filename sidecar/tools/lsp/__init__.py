"""`sidecar lsp`: a language server for `.mirror` files (LSP 3.17 over stdio, on pygls).

    command.py     the CLI entry (`configure`, `run`)
    server.py      the pygls server: which request is answered by what
    project.py     a document checked with the other files of its directory; ASTs for navigation
    checker.py     re-checks after changes, a burst of keystrokes coalesced into one check
    assist.py      completion and hover, from the grammar (`sidecar.dsl.cursor`)
    navigation.py  canary names: definition, references, rename; document symbols
    reference.py   what each keyword means: hover texts, generated into docs/rules.md
    positions.py   rule-file spans <-> LSP positions (UTF-16 by default)

It reuses the rule language's own loader, diagnostics, grammar and `fmt`; it
imports pygls and lsprotocol only in `server.py` and `command.py`'s `run`.
"""
