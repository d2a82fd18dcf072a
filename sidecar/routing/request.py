"""The request as the routing table sees it: built once per request, parsed lazily.

The proxy builds one `RequestView` per request from the ASGI scope. Building it
only stores references (method, raw path, raw query string, the raw header
pairs, the peer address); everything else is computed on first use and cached
on the view: the header map (built by `dict()` over the pairs, in C), each
header's decoded values, the host, the query parameters, the cookies and the
parsed peer address. A request that no
predicate inspects beyond its path therefore costs a handful of attribute
stores.

Decoding: header names and values are latin-1 (lossless for any byte, which is
what HTTP allows); the path is latin-1 too (it is raw, percent escapes kept);
query names and values are percent-decoded as UTF-8 with `+` as space, as a
form would be; cookie values are taken as written (quotes around a value are
removed, nothing is percent-decoded).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Sequence
from typing import Protocol
from urllib.parse import unquote

from sidecar.asgi import Scope

# Sentinel for "not computed yet" where None is a meaningful computed value.
_UNSET: object = object()


class ValueSet(Protocol):
    """What `header_in` tests against: a set of strings (or a probe that records a hit)."""

    def isdisjoint(self, other: Iterable[str], /) -> bool: ...


class RequestView:
    """Method, raw path, query, host, headers, cookies and peer address of one request.

    `header`, `query` and `cookie` return every value of that name in arrival
    order (an empty list when absent). The lists belong to the view and may be
    shared: callers must not mutate them. Header names are case-insensitive;
    query and cookie names are not. `headers` are the raw ASGI pairs with
    lower-case names (ASGI servers guarantee that; direct callers must too).
    """

    __slots__ = (
        "_client_addr",
        "_cookies",
        "_hdec",
        "_hmap",
        "_host",
        "_query",
        "client",
        "method",
        "path",
        "query_string",
        "raw_headers",
    )

    method: str
    path: str
    query_string: bytes
    raw_headers: Sequence[tuple[bytes, bytes]]
    client: str
    _hmap: dict[bytes, bytes | list[bytes]]
    _hdec: dict[bytes, list[str]] | None
    _host: str | None
    _query: dict[str, list[str]] | None
    _cookies: dict[str, list[str]] | None
    _client_addr: object

    def __init__(
        self,
        *,
        method: str = "GET",
        path: str = "/",
        query_string: bytes = b"",
        headers: Sequence[tuple[bytes, bytes]] = (),
        client: str = "",
    ) -> None:
        self.method = method
        self.path = path
        self.query_string = query_string
        self.raw_headers = headers
        self.client = client
        self._hdec = None
        self._host = None
        self._query = None
        self._cookies = None
        self._client_addr = _UNSET

    @classmethod
    def from_asgi(cls, scope: Scope) -> RequestView:
        """A view of an ASGI http scope; stores references only."""
        raw_path: bytes | None = scope.get("raw_path")
        if raw_path:
            # Servers differ on whether raw_path keeps the query; the path never includes it.
            q = raw_path.find(b"?")
            path = (raw_path if q < 0 else raw_path[:q]).decode("latin-1")
        else:
            path = scope.get("path", "/")
        peer = scope.get("client")
        return cls(
            method=scope.get("method", "GET"),
            path=path,
            query_string=scope.get("query_string", b""),
            headers=scope.get("headers", ()),
            client=peer[0] if peer else "",
        )

    def __repr__(self) -> str:
        return f"RequestView(method={self.method!r}, path={self.path!r}, client={self.client!r})"

    # --- headers ----------------------------------------------------------------

    def _index_headers(self) -> dict[bytes, list[str]]:
        # dict() over the pairs runs in C and is several times faster than a Python loop;
        # it keeps only the last value of a repeated name, so only then do we loop.
        raw = self.raw_headers
        hmap: dict[bytes, bytes | list[bytes]] = dict(raw)
        if len(hmap) != len(raw):
            multi: dict[bytes, list[bytes]] = {}
            for name, value in raw:
                multi.setdefault(name, []).append(value)
            for name, values in multi.items():
                if len(values) > 1:
                    hmap[name] = values
        self._hmap = hmap
        dec: dict[bytes, list[str]] = {}
        self._hdec = dec
        return dec

    def header_b(self, lname: bytes) -> list[str]:
        """Every value of the header whose lower-case name is `lname` (the compiled path).

        Each header line is one value: commas are not split, since a date or a quoted
        string may contain them. Values are decoded as latin-1 once and cached.
        """
        dec = self._hdec
        if dec is None:
            dec = self._index_headers()
        got = dec.get(lname)
        if got is None:
            raw = self._hmap.get(lname)
            if raw is None:
                got = []
            elif isinstance(raw, bytes):
                got = [raw.decode("latin-1")]
            else:
                got = [v.decode("latin-1") for v in raw]
            dec[lname] = got
        return got

    def header_in(self, lname: bytes, values: ValueSet) -> bool:
        """True when a value of the header whose lower-case name is `lname` is in `values`
        (the loop guard's check). Before anything built the header index it scans the raw
        pairs, so a request that needs no other header never builds one."""
        if self._hdec is not None:
            return not values.isdisjoint(self.header_b(lname))
        found = [v for n, v in self.raw_headers if n == lname]
        return bool(found) and not values.isdisjoint([v.decode("latin-1") for v in found])

    def header(self, name: str) -> list[str]:
        """Every value of header `name` (any case), one per header line."""
        return self.header_b(name.lower().encode("latin-1"))

    @property
    def host(self) -> str:
        """The Host header without its port, lower case; IPv6 without brackets; "" if absent."""
        host = self._host
        if host is None:
            host = self._host = _strip_port(self.header_b(b"host"))
        return host

    # --- query --------------------------------------------------------------------

    def query(self, name: str) -> list[str]:
        """Every value of query parameter `name`; `?debug` gives `[""]`."""
        q = self._query
        if q is None:
            q = self._query = _parse_query(self.query_string)
        return q.get(name) or []

    # --- cookies ------------------------------------------------------------------

    def cookie(self, name: str) -> list[str]:
        """Every value of cookie `name`, across all Cookie header lines."""
        c = self._cookies
        if c is None:
            c = self._cookies = _parse_cookies(self.header_b(b"cookie"))
        return c.get(name) or []

    # --- peer ---------------------------------------------------------------------

    @property
    def client_addr(self) -> tuple[int, int] | None:
        """The peer as (IP version, address as int); IPv4-mapped IPv6 counts as IPv4.

        None when the peer is not an IP address (a Unix socket, no peer).
        """
        addr = self._client_addr
        if addr is _UNSET:
            addr = self._client_addr = _parse_ip(self.client)
        return addr  # type: ignore[return-value]


def _strip_port(values: list[str]) -> str:
    if not values:
        return ""
    host = values[0].strip()
    if host.startswith("["):
        end = host.find("]")
        host = host[1:end] if end > 0 else host[1:]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    # Several colons without brackets: a bare IPv6 address (not valid HTTP, but unambiguous).
    return host.lower()


def _parse_query(qs: bytes) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    if not qs:
        return out
    # UTF-8 with replacement: raw non-ASCII bytes are rare in query strings, and a
    # predicate should see text rather than fail on them.
    for part in qs.decode("utf-8", "replace").split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if "+" in name or "%" in name:
            name = unquote(name.replace("+", " "))
        if "+" in value or "%" in value:
            value = unquote(value.replace("+", " "))
        values = out.get(name)
        if values is None:
            out[name] = [value]
        else:
            values.append(value)
    return out


def _parse_cookies(lines: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in lines:
        for part in line.split(";"):
            name, _, value = part.partition("=")
            name = name.strip()
            if not name:
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            values = out.get(name)
            if values is None:
                out[name] = [value]
            else:
                values.append(value)
    return out


def _parse_ip(text: str) -> tuple[int, int] | None:
    # inet_pton runs in C; ipaddress.ip_address costs several microseconds per call.
    if not text:
        return None
    try:
        if ":" not in text:
            return 4, int.from_bytes(socket.inet_pton(socket.AF_INET, text), "big")
        n = int.from_bytes(socket.inet_pton(socket.AF_INET6, text.partition("%")[0]), "big")
    except OSError:
        return None  # a Unix socket path or a server that reports something else
    if n >> 32 == 0xFFFF:
        # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; rules name IPv4 nets.
        return 4, n & 0xFFFFFFFF
    return 6, n
