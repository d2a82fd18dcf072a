"""TLS contexts: the client's (toward https:// primaries and canaries) and the listener's.

A context is built once per server (or listener) and shared by all its connections, so a
handshake reuses the loaded trust store and certificates; connections themselves are kept
alive by the pool, so a handshake is paid per connection, not per request. Both sides
require TLS 1.2 or later. The client offers ALPN `http/1.1` only (the client speaks
HTTP/1.1); the listener offers `h2` then `http/1.1`, and since the server's preference
decides, a client that offers both gets h2.

Errors from loading files (`ssl.SSLError`, `OSError`) propagate: validation calls these
same functions to check the files, and reports the failure at the statement.
"""

from __future__ import annotations

import ssl

CLIENT_ALPN = ("http/1.1",)
SERVER_ALPN = ("h2", "http/1.1")
MIN_VERSION = ssl.TLSVersion.TLSv1_2


def _refuse_password() -> bytes:
    """An encrypted private key would make OpenSSL prompt on the terminal: refuse instead."""
    raise ValueError("the private key is encrypted (sidecar needs an unencrypted PEM key)")


def client_context(
    *,
    ca: str | None = None,
    verify: bool = True,
    cert: str | None = None,
    key: str | None = None,
) -> ssl.SSLContext:
    """A client context: the system trust store unless `ca`, name check unless not `verify`,
    a client certificate when `cert` and `key` are given."""
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.minimum_version = MIN_VERSION
    ctx.set_alpn_protocols(list(CLIENT_ALPN))
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert is not None:
        ctx.load_cert_chain(cert, key, password=_refuse_password)
    return ctx


def server_context(*, cert: str, key: str) -> ssl.SSLContext:
    """The listener's context: `cert` (a chain, leaf first) and `key`, ALPN h2 and http/1.1."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = MIN_VERSION
    ctx.set_alpn_protocols(list(SERVER_ALPN))
    ctx.load_cert_chain(cert, key, password=_refuse_password)
    return ctx
