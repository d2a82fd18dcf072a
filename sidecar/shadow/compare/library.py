"""Response comparison for the library: `Compare` (the settings) and the results' sink.

    mirror = Mirror(compare=Compare(status=True, headers=("Content-Type",), body="json",
                                    ignore=("$.ts",)),
                    on_diff=records.append)

`Compare` is the library's spelling of a rule file's `compare` block (no `baseline`: a
library canary is compared with the app's own response). Every canary of the Mirror is
compared with it. `LibraryResults` counts `match`, `diff` and `skipped` for
`Mirror.stats()` and hands each diff record (a dict, as `/diffs` serves them) to
`on_diff`, which must not block. A raising `on_diff` is logged with its traceback once, then
counted and summarized every `ERROR_SUMMARY_INTERVAL_S`, like a raising `observe` hook.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from sidecar.model.compare import DEFAULT_MAX_BODY_BYTES, CompareSpec, CompareSpecError
from sidecar.shadow.compare.rendezvous import CompareResult

log = logging.getLogger("sidecar.mirror")

OnDiff = Callable[[dict[str, Any]], None]
# A raising `on_diff` is summarized at most this often after its first traceback.
ERROR_SUMMARY_INTERVAL_S = 10.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Compare:
    """What to compare of each completed tee's response with the app's own response."""

    status: bool = True
    headers: tuple[str, ...] = ()
    body: Literal["bytes", "json"] | None = None
    ignore: tuple[str, ...] = ()
    max_body: int = DEFAULT_MAX_BODY_BYTES
    sample_rate: float = 1.0

    def spec(self) -> CompareSpec:
        """The engine's spec; raises ValueError naming the parameter that is wrong."""
        if isinstance(self.headers, str) or isinstance(self.ignore, str):
            raise ValueError("compare: headers and ignore are tuples of strings, not a string")
        try:
            return CompareSpec(
                status=self.status,
                headers=tuple(self.headers),
                body=self.body,
                ignore=tuple(self.ignore),
                max_body_bytes=self.max_body,
                sample_rate=self.sample_rate,
            )
        except CompareSpecError as exc:
            raise ValueError(f"compare: {exc}") from None


class LibraryResults:
    """The library's sink for comparison results (see the module docstring)."""

    __slots__ = ("_errors", "_last_summary", "_on_diff", "counts")

    def __init__(self, on_diff: OnDiff | None) -> None:
        self._on_diff = on_diff
        self.counts = {"match": 0, "diff": 0, "skipped": 0}
        self._errors = 0
        self._last_summary = 0.0

    def __call__(self, result: CompareResult) -> None:
        self.counts[result.verdict.result] += 1
        if result.record is None or self._on_diff is None:
            return
        try:
            self._on_diff(result.record)
        except Exception:
            self._on_diff_failed()

    def _on_diff_failed(self) -> None:
        now = time.monotonic()
        if self._errors == 0 and self._last_summary == 0.0:
            log.exception("Mirror on_diff raised (later errors are counted)")
            self._last_summary = now
            return
        self._errors += 1
        if now - self._last_summary >= ERROR_SUMMARY_INTERVAL_S:
            log.error(
                "Mirror on_diff raised %d more times in the last %.0f s",
                self._errors,
                now - self._last_summary,
            )
            self._errors = 0
            self._last_summary = now
