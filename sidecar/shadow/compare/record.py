"""The diff record: one JSON-ready document per `diff` verdict (rule, request,
primary and canary captures, the differences), as `/diffs` and `diff_log` hold them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sidecar.model.compare import (
    MAX_RECORD_DIFFERENCES,
    CompareError,
)
from sidecar.shadow.compare.capture import Captured
from sidecar.shadow.compare.judge import Verdict

# --- the diff record --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestInfo:
    """The request a record names. `query` is the raw query string ('' when none);
    `id` the request id (the `request_id` header's value) or None."""

    method: str
    path: str
    query: str = ""
    id: str | None = None


def format_time(epoch_s: float) -> str:
    """ISO 8601 UTC with milliseconds and `Z`: `2026-12-06T18:00:00.123Z`."""
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def diff_record(
    verdict: Verdict,
    *,
    rule: str,
    request: RequestInfo,
    primary: Captured,
    canary_name: str,
    canary: Captured,
    now: float,
) -> dict[str, Any]:
    """The diff record of a `diff` verdict: a JSON-ready dict (`now` is epoch seconds).

    At most MAX_RECORD_DIFFERENCES differences, `more` counts the rest; `noise` (and
    `noise_more`, its own overflow count) only when there is noise.
    """
    if verdict.result != "diff":
        raise CompareError("only a diff verdict has a diff record")
    shown = verdict.differences[:MAX_RECORD_DIFFERENCES]
    record: dict[str, Any] = {
        "time": format_time(now),
        "rule": rule,
        "request": {
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "id": request.id,
        },
        "primary": {"status": primary.status, "length": primary.length, "sha256": primary.sha256},
        "canary": {
            "name": canary_name,
            "status": canary.status,
            "length": canary.length,
            "sha256": canary.sha256,
        },
        "differences": [d.to_json() for d in shown],
        "more": len(verdict.differences) - len(shown),
    }
    if verdict.noise:
        noise = verdict.noise[:MAX_RECORD_DIFFERENCES]
        record["noise"] = [d.to_json() for d in noise]
        record["noise_more"] = len(verdict.noise) - len(noise)
    return record
