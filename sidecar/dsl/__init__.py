"""The rule language: `load(paths)` / `loads(text)` -> LoadResult (config + diagnostics).

    from sidecar.dsl import load, loads, LoadResult
    result = load(["rules/"])
    if result.config is None: ...  # result.diagnostics says why

Pipeline: loader (files, SPEC section 2) -> parser (lark, errors.py) ->
transform (AST) -> validate (every diagnostic, then the Config).
"""

from __future__ import annotations

from sidecar.dsl.loader import LoadResult, load, loads

__all__ = ["LoadResult", "load", "loads"]
