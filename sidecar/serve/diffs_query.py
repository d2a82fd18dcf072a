"""The query string of `GET /diffs` on the admin listener: `canary`, `rule`, `limit`.

`?canary=v2` and `?rule=api_reads` keep the records of that canary and rule; `?limit=N`
returns at most N (0 is an empty list); without it, every kept record. A limit that is not
a non-negative integer is the client's mistake (a 400 saying so), never silently ignored.
Other parameters are ignored, as is usual for a read-only listing.
"""

from __future__ import annotations

from typing import TypedDict
from urllib.parse import parse_qsl

# The longest limit accepted as written (digits); beyond any kept ring (1,000) anyway, and
# keeps int() of a hostile query string cheap.
MAX_LIMIT_DIGITS = 9


class DiffsQueryError(ValueError):
    """A `/diffs` query string that cannot be served (the message is the 400's body)."""


class DiffsQuery(TypedDict):
    canary: str | None
    rule: str | None
    limit: int | None


def parse_diffs_query(query_string: bytes) -> DiffsQuery:
    """The filters of `/diffs` (the last value of a repeated parameter wins)."""
    params = dict(parse_qsl(query_string.decode("latin-1"), keep_blank_values=True))
    limit: int | None = None
    text = params.get("limit")
    if text is not None:
        if not text.isascii() or not text.isdigit() or len(text) > MAX_LIMIT_DIGITS:
            raise DiffsQueryError(f"limit must be a non-negative integer, not {text!r}")
        limit = int(text)
    return DiffsQuery(canary=params.get("canary"), rule=params.get("rule"), limit=limit)
