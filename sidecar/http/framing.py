"""Request framing the proxy refuses itself, before anything is forwarded or mirrored.

hypercorn 0.18 on h11 0.16 already answers some malformed requests (a bad request line,
two different `Content-Length`s, a `Transfer-Encoding` other than `chunked`, a missing
`Host`), but it lets these through to the application (measured; see tests/http/test_framing.py):

- `Content-Length` together with `Transfer-Encoding` (h11 silently prefers chunked: the
  classic request-smuggling ambiguity when another hop prefers the length);
- `Transfer-Encoding` on an HTTP/1.0 request (RFC 9112 section 6.1: the framing is faulty);
- a header section larger than h11's limit when it arrives in one read;
- `CONNECT` and authority-form targets (a reverse proxy is never a tunnel);
- a request line with an HTTP version other than 1.0 or 1.1 (h11 takes any `HTTP/d.d`),
  and a request target past `MAX_TARGET_BYTES` (414, as nginx);
- control characters other than HTAB in a header value (h11 refuses only CR, LF and NUL;
  RFC 9110 section 5.5 makes the others invalid too, and another hop may parse them
  differently);
- a `Host` that is not `uri-host [ ":" port ]` (RFC 9110 section 7.2, RFC 3986 section
  3.2.2: a reg-name, an IPv4 address or a bracketed IP literal), several `Host` fields, or
  none on HTTP/1.1 (RFC 9112 section 3.2 requires exactly one; HTTP/2 carries it as
  `:authority`, which hypercorn hands over as `host`).

Every refusal has a `label`: the `reason` of `sidecar_refused_requests_total`, one of
`REFUSAL_LABELS` (a small fixed set, so the series stay few). The HTTP/1.1 connection
layer (sidecar/serve/strict_h11.py) adds the refusals only it can see (obs-fold, a bad chunk, a
malformed request line or header line) with the labels of the same set.

Absolute-form targets (`GET http://host/p HTTP/1.1`) are accepted as an origin server must
(RFC 9112 section 3.2.2): the path and query are used and the target's authority replaces
`Host`. The primary stays the only destination, so this never makes an open proxy.

Pure: no I/O. `inspect()` runs once per request on the hot path, so it is one pass over
the headers with no allocation on the common path.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from sidecar.http.syntax import CHUNKED as CHUNKED
from sidecar.http.syntax import find_control_bytes

# One limit for the whole request head (request line and headers), whatever the
# packetization: h11's own limit (hypercorn's h11_max_incomplete_size) applies only while
# the head is incomplete, so a large head arriving in one read would pass without this.
# 16 KiB is h11's default and nginx's order of magnitude (4 x 8 KiB buffers).
MAX_HEADER_SECTION_BYTES = 16 * 1024
# A longer request target is refused with 414, as nginx does past its 8 KiB line buffer.
MAX_TARGET_BYTES = 8 * 1024
# The HTTP versions a request may carry (hypercorn's scope: "1.0", "1.1", "2"); h11 parses
# any `HTTP/d.d`, so `HTTP/9.9` would otherwise be forwarded as 1.1.
SUPPORTED_HTTP_VERSIONS = frozenset({"1.0", "1.1", "2"})

# inspect() returns the request body's framing as an int: a length, or one of these.
NO_BODY = 0


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the proxy answers itself with `status` and a short plain-text `reason`;
    `label` names it in metrics and logs."""

    status: int
    reason: str
    label: str

    def __post_init__(self) -> None:
        if self.label not in REFUSAL_LABELS:
            raise ValueError(f"unknown refusal label {self.label!r}")

    def body(self) -> bytes:
        return f"{self.reason}\n".encode()


# The `reason` label values of sidecar_refused_requests_total (docs/proxy.md has the table).
REFUSAL_LABELS = (
    "bad_request_line",
    "bad_version",
    "bad_target",
    "uri_too_long",
    "connect",
    "bad_header",
    "obs_fold",
    "header_too_large",
    "bad_host",
    "te_and_cl",
    "conflicting_length",
    "bad_content_length",
    "bad_transfer_encoding",
    "bad_chunk",
)

CL_AND_TE = Refusal(400, "Bad Request: Content-Length with Transfer-Encoding", "te_and_cl")
CONFLICTING_CL = Refusal(400, "Bad Request: conflicting Content-Length", "conflicting_length")
INVALID_CL = Refusal(400, "Bad Request: invalid Content-Length", "bad_content_length")
TE_NOT_CHUNKED = Refusal(400, "Bad Request: unsupported Transfer-Encoding", "bad_transfer_encoding")
TE_IN_HTTP10 = Refusal(400, "Bad Request: Transfer-Encoding in HTTP/1.0", "bad_transfer_encoding")
HEADERS_TOO_LARGE = Refusal(431, "Request Header Fields Too Large", "header_too_large")
BAD_TARGET = Refusal(400, "Bad Request: invalid request target", "bad_target")
CONNECT_REFUSED = Refusal(405, "Method Not Allowed: CONNECT is not proxied", "connect")

BAD_HEADER_VALUE = Refusal(400, "Bad Request: control character in a header value", "bad_header")
URI_TOO_LONG = Refusal(414, "URI Too Long", "uri_too_long")
BAD_VERSION = Refusal(400, "Bad Request: unsupported HTTP version", "bad_version")
BAD_HOST = Refusal(400, "Bad Request: missing, repeated or invalid Host", "bad_host")
# Seen only by the HTTP/1.1 connection layer (sidecar/serve/strict_h11.py).
BAD_REQUEST_LINE = Refusal(400, "Bad Request: malformed request line", "bad_request_line")
BAD_HEADER_LINE = Refusal(400, "Bad Request: malformed header line", "bad_header")
OBS_FOLD = Refusal(
    400, "Bad Request: obsolete line folding (RFC 9112 section 5.2) is not accepted", "obs_fold"
)
BAD_CHUNK = Refusal(400, "Bad Request: malformed chunked body", "bad_chunk")

# RFC 9110 section 7.2: Host = uri-host [ ":" port ]; RFC 3986: uri-host = IP-literal /
# IPv4address / reg-name, reg-name = *( unreserved / pct-encoded / sub-delims ). An empty
# reg-name is refused too (as nginx does): the primary and the rules need a host. The
# port is at most 5 digits. IP literals are checked loosely here (hex digits, colons,
# dots; or an IPvFuture), enough to keep delimiters and whitespace out.
_VALID_HOST = re.compile(
    rb"(?:\[(?:[0-9A-Fa-f:.]+|v[0-9A-Fa-f]+\.[A-Za-z0-9._~!$&'()*+,;=:-]+)\]"
    rb"|(?:[A-Za-z0-9._~!$&'()*+,;=-]|%[0-9A-Fa-f]{2})+)"
    rb"(?::[0-9]{0,5})?"
).fullmatch

# Per-header framing overhead in the head: ": " and CRLF.
_HEADER_OVERHEAD_BYTES = 4


def inspect(
    method: str, raw_path: bytes, http_version: str, headers: Iterable[tuple[bytes, bytes]]
) -> int | Refusal:
    """The body framing (a Content-Length, NO_BODY or CHUNKED) or why the request is refused.

    CHUNKED means a body of unknown length: chunked HTTP/1.1, or HTTP/2 without a length.

    `headers` are ASGI pairs (names lower-case). The target is checked too: origin-form,
    `*` for OPTIONS, or absolute-form (see `origin_form`).
    """
    if http_version not in SUPPORTED_HTTP_VERSIONS:
        return BAD_VERSION
    if len(raw_path) > MAX_TARGET_BYTES:
        return URI_TOO_LONG
    size = len(method) + len(raw_path) + 16  # request line: spaces, version, CRLF
    length: bytes | None = None
    te: bytes | None = None
    host: bytes | None = None
    hosts = 0
    for name, value in headers:
        size += len(name) + len(value) + _HEADER_OVERHEAD_BYTES
        if find_control_bytes(value) is not None:
            return BAD_HEADER_VALUE
        if name == b"content-length":
            if length is not None and value != length:
                return CONFLICTING_CL
            length = value
        elif name == b"transfer-encoding":
            te = value if te is None else te + b"," + value
        elif name == b"host":
            host = value
            hosts += 1
    if size > MAX_HEADER_SECTION_BYTES:
        return HEADERS_TOO_LARGE
    if hosts > 1 or (hosts == 0 and http_version == "1.1"):
        return BAD_HOST
    if host is not None and _VALID_HOST(host) is None:
        return BAD_HOST
    if method == "CONNECT":
        return CONNECT_REFUSED
    if (
        raw_path[:1] != b"/"
        and not (raw_path == b"*" and method == "OPTIONS")
        and origin_form(raw_path) is None
    ):
        return BAD_TARGET
    if te is not None:
        if length is not None:
            return CL_AND_TE
        if http_version == "1.0":
            return TE_IN_HTTP10
        if te.strip().lower() != b"chunked":
            return TE_NOT_CHUNKED
        return CHUNKED
    if length is None:
        # HTTP/2 needs no length: the body ends with the stream (END_STREAM), so a request
        # without one may still carry a body of unknown length, like a chunked one.
        return CHUNKED if http_version == "2" else NO_BODY
    # h11 has validated the digits already on HTTP/1.1; HTTP/2 scopes come from h2.
    if not length.isdigit() or len(length) > 18:
        return INVALID_CL
    return int(length)


def origin_form(raw_path: bytes) -> tuple[bytes, bytes] | None:
    """For an absolute-form target: (path, authority); None when it is not a usable one.

    `raw_path` is hypercorn's (the query already split off). A target without a path
    (`http://host`) means `/`.
    """
    lower = raw_path[:8].lower()
    if lower.startswith(b"http://"):
        rest = raw_path[7:]
    elif lower.startswith(b"https://"):
        rest = raw_path[8:]
    else:
        return None
    authority, slash, path = rest.partition(b"/")
    if not authority or b"@" in authority:
        return None
    return (slash + path) or b"/", authority
