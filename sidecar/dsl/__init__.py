"""The rule language: `load(paths)` / `loads(text)` -> LoadResult (config + diagnostics).

    from sidecar.dsl import load, loads, LoadResult
    result = load(["rules/"])
    if result.config is None: ...  # result.diagnostics says why

Pipeline: loader (files, SPEC section 2) -> parser (lark, errors.py) ->
transform (AST) -> validate (every diagnostic, then the Config).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["LoadResult", "load", "loads"]

if TYPE_CHECKING:
    from sidecar.dsl.loader import LoadResult, load, loads


def __getattr__(name: str) -> Any:
    # Lazy: `sidecar.model.config` imports `sidecar.dsl.ast`, which runs this package's
    # __init__; importing the loader (which imports config) here would be circular.
    if name in __all__:
        from sidecar.dsl import loader

        return getattr(loader, name)
    raise AttributeError(f"module 'sidecar.dsl' has no attribute {name!r}")
