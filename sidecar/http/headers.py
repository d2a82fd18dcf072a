"""Header handling shared by the proxy and the mirror engine (pure: no I/O, no asyncio).

Headers are ASGI-style ``(name, value)`` byte pairs. Names we emit are lower case (as
hypercorn and h11 deliver them); comparisons are always on the lower-cased name.

- `strip_hop_by_hop`: drop the hop-by-hop headers (RFC 9110 7.6.1, plus `Proxy-*`) and every
  name listed in `Connection`. Used for both directions (request to the primary, and the
  primary's response back to the client).
- `forward_request_headers`: what the proxy sends to the primary: stripped, `X-Forwarded-For`
  appended, `X-Forwarded-Proto` / `X-Forwarded-Host` set when absent.
- `ShadowTemplate`: one canary's precompiled shadow-request recipe (transforms, mark, Host,
  framing); `build()` turns a client request into the canary's method/target/headers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from sidecar.http.syntax import HOP_BY_HOP, PROXY_PREFIX
from sidecar.model.config import CanarySpec, DropHeader, RewritePath, SetHeader

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
    return _strip(headers, HOP_BY_HOP)


def _strip(headers: Iterable[tuple[bytes, bytes]], drop: frozenset[bytes]) -> Headers:
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


# --- the shadow request ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Set:
    name: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class _Drop:
    names: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class _Rewrite:
    pattern: re.Pattern[str]
    replacement: str


_Op = _Set | _Drop | _Rewrite

# Never copied onto a shadow request: framing is recomputed from the body copy, and a
# canary must not be asked for `100-continue`.
_SHADOW_DROP: frozenset[bytes] = HOP_BY_HOP | {EXPECT, CONTENT_LENGTH}


def _encode_path(path: str) -> bytes:
    try:
        return path.encode("latin-1")
    except UnicodeEncodeError:  # a replacement introduced non-latin-1 text
        return path.encode("utf-8")


@dataclass(frozen=True, slots=True)
class ShadowTemplate:
    """One canary's shadow-request recipe, compiled once from its `CanarySpec`."""

    ops: tuple[_Op, ...]
    mark: tuple[bytes, bytes] | None
    host: bytes | None  # None: preserve the client's Host

    @classmethod
    def compile(cls, spec: CanarySpec) -> ShadowTemplate:
        ops: list[_Op] = []
        for t in spec.transforms:
            if isinstance(t, SetHeader):
                ops.append(_Set(t.name.lower().encode("latin-1"), t.value.encode("latin-1")))
            elif isinstance(t, DropHeader):
                ops.append(_Drop(frozenset(n.lower().encode("latin-1") for n in t.names)))
            elif isinstance(t, RewritePath):
                ops.append(_Rewrite(re.compile(t.pattern), t.replacement))
        mark = None
        if spec.mark is not None:
            mark = (spec.mark[0].lower().encode("latin-1"), spec.mark[1].encode("latin-1"))
        host = spec.host.encode("latin-1") if spec.host is not None else None
        return cls(ops=tuple(ops), mark=mark, host=host)

    def build(
        self,
        *,
        raw_path: bytes,
        query_string: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        client: str | None,
        scheme: str,
        body_length: int,
        default_host: bytes | None = None,
    ) -> tuple[bytes, Headers]:
        """The shadow request's target and headers ("the mirrored request").

        Headers: the client's minus hop-by-hop and `Expect`, X-Forwarded-* as for the
        primary, transforms in written order, the mark (overwriting), `Host` per `host`
        (`default_host` when preserving and the client sent none), and `Content-Length`
        equal to `body_length` (none when 0), never `Transfer-Encoding`. `Host` comes first.
        """
        out = _strip(headers, _SHADOW_DROP)
        add_forwarded(out, client=client, scheme=scheme)
        path = raw_path
        for op in self.ops:
            if isinstance(op, _Set):
                out = [(n, v) for n, v in out if n != op.name]
                out.append((op.name, op.value))
            elif isinstance(op, _Drop):
                out = [(n, v) for n, v in out if n not in op.names]
            else:
                text = path.decode("latin-1")
                path = _encode_path(op.pattern.sub(op.replacement, text, count=1))
        # The mark overwrites: every header of its name goes, the mark comes last (before
        # Content-Length); folded into the final pass, which also puts Host first.
        mark = self.mark
        mark_name = mark[0] if mark is not None else None
        host = self.host
        if host is None and mark_name == HOST:
            host = mark[1] if mark is not None else None
        if host is None:
            for n, v in out:
                if n == HOST and n != mark_name:
                    host = v
                    break
            else:
                host = default_host
        final: Headers = [(HOST, host)] if host is not None else []
        if mark is None:
            final += [(n, v) for n, v in out if n != HOST]
        else:
            final += [(n, v) for n, v in out if n != HOST and n != mark_name]
            if mark_name != HOST:
                final.append(mark)
        if body_length:
            final.append((CONTENT_LENGTH, str(body_length).encode("ascii")))
        target = path + b"?" + query_string if query_string else path
        return target or b"/", final
