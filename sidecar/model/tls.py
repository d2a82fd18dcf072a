"""TLS settings as validated data: a primary's or canary's `tls { ... }` block, and the
certificate `listen` serves clients with.

File paths are absolute (a relative path in a rule file is resolved against that file's
directory during validation) and the files were readable PEM of the right kind when the
configuration was checked. `digest` covers the files' bytes, so a reload after a
certificate was renewed in place compares unequal and builds new clients.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSpec:
    """How to speak TLS to https:// servers; the defaults are an absent `tls` block."""

    ca: str | None = None  # a PEM bundle of trusted CAs; None: the system trust store
    verify: bool = True  # False: `verify off` (no certificate or name check)
    cert: str | None = None  # a client certificate chain (mutual TLS), with `key`
    key: str | None = None
    server_name: str | None = None  # SNI and the name checked; None: the URL's host
    digest: str = ""  # sha256 over the named files' bytes

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise ValueError("a client certificate needs both cert and key")


@dataclass(frozen=True, slots=True, kw_only=True)
class ListenTlsSpec:
    """`listen ADDR { cert "..." key "..." }`: TLS for clients, ALPN h2 then http/1.1."""

    cert: str
    key: str
    digest: str = ""
