"""Forwarding headers, shared by the proxy and the mirror engine (pure: no I/O, no asyncio).

Headers are ASGI-style ``(name, value)`` byte pairs. Names we emit are lower case (as
hypercorn and h11 deliver them); comparisons are always on the lower-cased name.

- `strip_hop_by_hop`: drop the hop-by-hop headers (RFC 9110 7.6.1, plus `Proxy-*`) and every
  name listed in `Connection`. Used for both directions (request to the primary, and the
  primary's response back to the client).
- `forward_request_headers`: what the proxy sends to the primary: stripped, `X-Forwarded-For`
  appended, `X-Forwarded-Proto` / `X-Forwarded-Host` set when absent.

The shadow request's recipe (`sidecar.shadow.template`) builds on these.
"""

from __future__ import annotations

from collections.abc import Iterable

from sidecar.http.syntax import HOP_BY_HOP, PROXY_PREFIX

Headers = list[tuple[bytes, bytes]]


XFF = b"x-forwarded-for"
XFP = b"x-forwarded-proto"
XFH = b"x-forwarded-host"
HOST = b"host"
CONTENT_LENGTH = b"content-length"
TRANSFER_ENCODING = b"transfer-encoding"
EXPECT = b"expect"


def strip_hop_by_hop(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """A copy without hop-by-hop headers and without the names `Connection` lists.

    Order and repeated headers (e.g. `Set-Cookie`) are kept. Names are lower-cased.
    """
    return strip_headers(headers, HOP_BY_HOP)


def strip_headers(headers: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes]) -> Headers:
    """`strip_hop_by_hop` that also drops the names in `drop` (a superset of HOP_BY_HOP).

    One pass on the hot path; the names `Connection` lists are removed afterwards, and
    only when it lists any.
    """
    out: Headers = []
    listed: set[bytes] | None = None
    for name, value in headers:
        name = name.lower()
        if name in drop or name.startswith(PROXY_PREFIX):
            if name == b"connection":
                tokens = {t.strip().lower() for t in value.split(b",")}
                listed = tokens if listed is None else listed | tokens
            continue
        out.append((name, value))
    if listed:
        return [(n, v) for n, v in out if n not in listed]
    return out


def add_forwarded(
    headers: Headers, *, client: str | None, scheme: str, host: bytes | None = None
) -> Headers:
    """Append the client to `X-Forwarded-For`; set `X-Forwarded-Proto`/`-Host` when absent.

    Several `X-Forwarded-For` lines are folded into one (comma-joined, in order, the client
    last). `host` defaults to the request's `Host` header. Modifies and returns `headers`.
    """
    xff: list[bytes] = []
    has_proto = has_host = False
    request_host = host
    out: Headers = []
    for name, value in headers:
        if name == XFF:
            xff.append(value)
            continue
        if name == XFP:
            has_proto = True
        elif name == XFH:
            has_host = True
        elif name == HOST and request_host is None:
            request_host = value
        out.append((name, value))
    if client:
        xff.append(client.encode("latin-1"))
    if xff:
        out.append((XFF, b", ".join(xff)))
    if not has_proto:
        out.append((XFP, scheme.encode("latin-1")))
    if not has_host and request_host:
        out.append((XFH, request_host))
    headers[:] = out
    return headers


def forward_request_headers(
    headers: Iterable[tuple[bytes, bytes]], *, client: str | None, scheme: str
) -> Headers:
    """The primary request's headers: hop-by-hop stripped, X-Forwarded-* added."""
    return add_forwarded(strip_hop_by_hop(headers), client=client, scheme=scheme)


def response_headers(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """The primary response's headers as the client gets them: hop-by-hop stripped."""
    return strip_hop_by_hop(headers)
