"""sidecar: a request-shadowing reverse proxy, and the same engine as an ASGI middleware.

from sidecar import Mirror, Outcome, MirrorInfo, Upstream, Compare
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Compare", "Mirror", "MirrorInfo", "Outcome", "Upstream", "__version__"]

if TYPE_CHECKING:
    from sidecar.shadow.mirror import Compare, Mirror, MirrorInfo, Outcome, Upstream


def __getattr__(name: str) -> Any:
    # Lazy, so that `sidecar check` does not import asyncio machinery it never uses.
    if name in ("Compare", "Mirror", "MirrorInfo", "Outcome", "Upstream"):
        from sidecar.shadow import mirror

        return getattr(mirror, name)
    raise AttributeError(f"module 'sidecar' has no attribute {name!r}")
