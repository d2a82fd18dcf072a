"""Listening sockets and hypercorn's settings for them: `bind`, `address_of`,
`hypercorn_config`.
"""

from __future__ import annotations

import logging
import socket
import ssl
from typing import TYPE_CHECKING, Any

from sidecar.http.tls import server_context
from sidecar.model.endpoint import split_address

if TYPE_CHECKING:
    from sidecar.model.config import Config

from sidecar.http.framing import MAX_HEADER_SECTION_BYTES
from sidecar.serve.options import ServeError

log = logging.getLogger("sidecar")

# Listen backlog: enough to absorb a burst of connects while the loop is busy (SOMAXCONN).
LISTEN_BACKLOG = 1024
# Idle keep-alive connections are closed after this long: above the 60 s idle timeout of
# common load balancers, so the balancer, not us, closes first (nginx uses 75 s too).
KEEP_ALIVE_TIMEOUT_S = 75.0
# Requests per client connection before it is closed (nginx: 1000); high, since a
# reconnect is pure overhead for a reverse proxy's few long-lived clients.
KEEP_ALIVE_MAX_REQUESTS = 10_000


def parse_address(addr: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` -> (host, port); raises ServeError."""
    try:
        return split_address(addr)
    except ValueError as exc:
        raise ServeError(f"invalid address {addr!r}: {exc}") from None


def bind(addr: str, *, reuse_port: bool) -> socket.socket:
    """A listening TCP socket on `addr` (SO_REUSEADDR; SO_REUSEPORT for worker groups)."""
    host, port = parse_address(addr)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ServeError(f"cannot resolve {addr}: {exc}") from None
    family, _, _, _, sockaddr = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind(sockaddr)
        sock.listen(LISTEN_BACKLOG)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        raise ServeError(f"cannot listen on {addr}: {exc.strerror or exc}") from None
    return sock


def listen_context(config: Config) -> ssl.SSLContext | None:
    """The proxy listener's TLS context (`listen ADDR { cert key }`), None for plain HTTP.

    Built once per process; a change needs a restart, like the address.
    """
    tls = config.listen_tls
    if tls is None:
        return None
    try:
        return server_context(cert=tls.cert, key=tls.key)
    except (OSError, ValueError) as exc:  # the files changed since they were checked
        raise ServeError(f"cannot load the listen certificate {tls.cert}: {exc}") from None


def address_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def hypercorn_config(*, grace_s: float, proxy: bool) -> Any:
    """hypercorn's settings for one of sidecar's listeners (served by sidecar.serve.listener)."""
    # hypercorn and our connection layer: only when serving, not for `sidecar --help`.
    from hypercorn.config import Config as HyperConfig

    from sidecar.serve.host_protocol import mark

    hc = HyperConfig()
    hc.graceful_timeout = grace_s
    hc.keep_alive_timeout = KEEP_ALIVE_TIMEOUT_S
    hc.keep_alive_max_requests = KEEP_ALIVE_MAX_REQUESTS
    hc.backlog = LISTEN_BACKLOG
    hc.h11_max_incomplete_size = MAX_HEADER_SECTION_BYTES
    hc.loglevel = "WARNING"
    hc.accesslog = None
    if proxy:
        # The primary's Date and Server reach the client as they are.
        hc.include_date_header = False
        hc.include_server_header = False
    # Our connection layer for sidecar's own listeners only (prompt close on EOF, lingering
    # close, strict parsing, draining): see sidecar/serve/host_protocol.py.
    mark(hc, proxy=proxy)
    return hc
