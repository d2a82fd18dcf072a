"""Re-check groups after changes, folding a burst of changes into one check.

`touch(group)` marks a group for checking and returns at once. One task runs the
checks: it waits until something is marked, then `COALESCE_S` more (keystrokes
come faster than that), and checks every marked group once with the texts as
they are by then. Changes that arrive while a check runs mark the group again,
so the newest text is always checked last, and a document never waits for
more than one check behind it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

log = logging.getLogger("sidecar.lsp")

# A keystroke every ~100 ms is fast typing; changes closer together than this are one check.
COALESCE_S = 0.03


class Checker:
    def __init__(self, check: Callable[[str], None], *, coalesce_s: float = COALESCE_S) -> None:
        self._check = check
        self._coalesce_s = coalesce_s
        self._pending: dict[str, None] = {}  # insertion-ordered set of groups
        self._wake = asyncio.Event()
        self.checks = 0  # how many group checks ran (tests read it)

    def touch(self, group: str) -> None:
        self._pending[group] = None
        self._wake.set()

    async def run(self) -> None:
        """Check marked groups until cancelled."""
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._coalesce_s)
            self._wake.clear()
            pending, self._pending = list(self._pending), {}
            for group in pending:
                self.checks += 1
                try:
                    self._check(group)
                except Exception:  # a bug in one check must not end the checks to come
                    log.exception("checking %s failed", group)
            await asyncio.sleep(0)  # let the changes that came in during the checks be read
