"""The rule language: `load(paths)` / `loads(text)` -> LoadResult (config + diagnostics).

    from sidecar.dsl import load, loads, LoadResult
    result = load(["rules/"])
    if result.config is None: ...  # result.diagnostics says why

Pipeline: loader (files) -> parser (lark: grammar.py, errors.py) -> transform
(AST) -> validate (every diagnostic, then the `sidecar.model` Config).

This layer turns text into the model: it imports `sidecar.model`,
`sidecar.http.syntax` (header names) and `sidecar.diagnostics`, nothing above
them; routing is its independent sibling.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["LoadResult", "load", "loads"]

if TYPE_CHECKING:
    from sidecar.dsl.loader import LoadResult, load, loads


def __getattr__(name: str) -> Any:
    # Lazy: `fmt`, `explain` and `serve` import `sidecar.dsl.ast` or `values`, which runs
    # this __init__; the loader imports lark, which `sidecar --help` should not pay for.
    if name in __all__:
        from sidecar.dsl import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'sidecar.dsl' has no attribute {name!r}")
