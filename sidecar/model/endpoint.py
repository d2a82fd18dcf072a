"""Endpoints and addresses: the one host check and the one `host:port` parser.

Used by the rule language (`listen`, `admin`, URLs), the serve flags (`--listen`,
`--primary`) and the HTTP client. Pure, no I/O.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

MAX_PORT = 65535

# RFC 1035/1123 host names: labels of letters, digits and hyphens, not starting or
# ending with a hyphen, 1..63 characters each, at most 253 in all. Underscores are
# allowed inside a label too: Docker Compose service names and SRV-style names use them,
# and resolvers accept them.
_DNS_LABEL = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?\Z")
MAX_HOSTNAME_CHARS = 253


def host_problem(host: str) -> str | None:
    """None when `host` is a valid host for an address or URL, else what is wrong.

    The one host check of the configuration (addresses, URLs, `--listen`...):
    `[v6]` (bracketed IPv6), dotted-decimal IPv4 (anything all-numeric must be a
    valid IPv4 address: `999.1.1.1` and `1.2.3` are not), or a DNS name.
    """
    if not host:
        return "the host is missing"
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            return f'"{host}" is missing a "[" or "]"'
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return f'"{host[1:-1]}" is not an IPv6 address'
        return None
    labels = host.removesuffix(".").split(".")
    if all(label.isdigit() for label in labels):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return f'"{host}" is not an IPv4 address'
        return None
    if len(host) > MAX_HOSTNAME_CHARS or not all(_DNS_LABEL.match(label) for label in labels):
        return f'"{host}" is not a valid host name (letters, digits, underscores and inner hyphens per label)'
    return None


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """An http(s) origin: scheme, host and port, no path."""

    scheme: Literal["http", "https"]
    host: str  # without brackets for IPv6
    port: int

    @classmethod
    def parse(cls, url: str) -> Endpoint:
        """Parse an origin URL; raises ValueError saying what is wrong."""
        try:
            parts = urlsplit(url)
        except ValueError:  # urllib's text ("Invalid IPv6 URL") is not ours to show
            raise ValueError("URL is malformed (an IPv6 host is written [::1])") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"URL scheme must be http or https, not {parts.scheme!r}")
        if not parts.hostname:
            raise ValueError("URL has no host")
        problem = host_problem(f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname)
        if problem:
            raise ValueError(problem)
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("URL must not have a path, query or fragment")
        if parts.username or parts.password:
            raise ValueError("URL must not carry credentials")
        # Not `parts.port`: its ValueError carries urllib's own wording.
        host_port = parts.netloc.rpartition("@")[2]
        port_text = "" if host_port.endswith("]") else host_port.rpartition(":")[2]
        if ":" not in host_port or host_port.endswith(("]", ":")):
            port = 443 if parts.scheme == "https" else 80
        elif port_text.isascii() and port_text.isdigit() and 0 < int(port_text) <= MAX_PORT:
            port = int(port_text)
        else:
            raise ValueError(f'port "{port_text}" is not a number in 1..{MAX_PORT}')
        scheme: Literal["http", "https"] = "https" if parts.scheme == "https" else "http"
        return cls(scheme=scheme, host=parts.hostname, port=port)

    @property
    def authority(self) -> str:
        """`host:port` as a Host header would carry it (IPv6 bracketed, default port omitted)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.authority}"


def split_address(raw: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host without brackets, port 0..65535).

    Port 0 (any free port) is for binding; `address_problem` refuses it in rules and
    flags. Raises ValueError saying what is wrong, in words fit for a diagnostic.
    """
    host, sep, port = raw.rpartition(":")
    if not sep:
        raise ValueError(f'"{raw}" is not host:port')
    problem = host_problem(host)
    if problem:
        raise ValueError(problem)
    if not port.isdigit() or int(port) > MAX_PORT:
        raise ValueError(f'port "{port}" is not in 1..{MAX_PORT}')
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def address_problem(raw: str) -> str | None:
    """None when `raw` is a valid `host:port`, else what is wrong (see `split_address`)."""
    try:
        _, port = split_address(raw)
    except ValueError as exc:
        return str(exc)
    if port == 0:
        return f'port "0" is not in 1..{MAX_PORT}'
    return None
