"""HTTP facts, one home each: the token grammar, control characters, hop-by-hop headers.

Used by the wire codec (`http1`, `framing`, `headers`), by the rule language
when it checks header names and values, and by the model (`compare`). Pure
constants and predicates; imports nothing of sidecar.
"""

from __future__ import annotations

import re
from typing import Protocol

# RFC 9110 section 5.6.2 `token`: the characters of a method or a header field name.
TOKEN = r"[-!#$%&'*+.^_`|~0-9A-Za-z]+"
TOKEN_BYTES = TOKEN.encode("ascii")
is_token = re.compile(TOKEN).fullmatch  # str -> match or None
is_token_bytes = re.compile(TOKEN_BYTES).fullmatch  # bytes -> match or None

# A control character a field value must not carry (HTAB is allowed; CR and LF are not).
CONTROL_IN_VALUE = r"[\x00-\x08\x0a-\x1f\x7f]"
find_control = re.compile(CONTROL_IN_VALUE).search  # str
find_control_bytes = re.compile(CONTROL_IN_VALUE.encode("ascii")).search  # bytes

# Hop-by-hop headers (RFC 9110 section 7.6.1, plus the de facto Keep-Alive and Proxy-*,
# matched by prefix): a proxy strips them, so they never reach the next hop.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {b"connection", b"keep-alive", b"te", b"trailer", b"transfer-encoding", b"upgrade"}
)
PROXY_PREFIX = b"proxy-"


def is_hop_by_hop(name: bytes) -> bool:
    """True for a header that never crosses a proxy (`name` lower case)."""
    return name in HOP_BY_HOP or name.startswith(PROXY_PREFIX)


# Body framing, where a length is expected: the body is chunked (Transfer-Encoding).
CHUNKED = -1


class Origin(Protocol):
    """Where a connection goes: `sidecar.model.endpoint.Endpoint` is one."""

    @property
    def scheme(self) -> str: ...
    @property
    def host(self) -> str: ...  # without brackets for IPv6
    @property
    def port(self) -> int: ...
    @property
    def authority(self) -> str: ...
