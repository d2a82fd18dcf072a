"""Validation of TLS statements: a primary's or canary's `tls { ... }` block, and the
`cert`/`key` block of `listen`.

Every file is checked at the statement that names it: it exists and is readable, it is
PEM of the right kind (certificates for `ca` and `cert`, an unencrypted private key for
`key`), and OpenSSL loads it, with a key that belongs to its certificate. The loading is
done by the same functions that build the contexts when serving (sidecar.http.tls), so a
configuration `check` accepts is one `serve` can load.
"""

from __future__ import annotations

import hashlib
import os
import re
import ssl
from collections.abc import Iterator, Sequence
from typing import TypeVar

from sidecar.diagnostics import Span
from sidecar.dsl import ast
from sidecar.dsl.report import Report
from sidecar.http.tls import client_context, server_context
from sidecar.model.endpoint import host_problem
from sidecar.model.tls import ListenTlsSpec, TlsSpec

# A certificate bundle is a few KB to a few hundred KB (the whole Mozilla store is ~220 KB).
MAX_PEM_BYTES = 1 << 20

_CERT = re.compile(rb"-----BEGIN CERTIFICATE-----")
_KEY = re.compile(rb"-----BEGIN (?:RSA |EC |DSA )?PRIVATE KEY-----")
_ENCRYPTED_KEY = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: 4,ENCRYPTED")
_ANY_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")

_S = TypeVar("_S", bound=ast.TlsStatement)

_KEYWORD = {
    ast.TlsCa: "ca",
    ast.TlsVerify: "verify",
    ast.TlsCert: "cert",
    ast.TlsKey: "key",
    ast.TlsServerName: "server_name",
}


def check_tls(node: ast.Tls, urls: list[str], r: Report) -> TlsSpec | None:
    """Report every problem of a `tls` block; its spec only when there were none.

    `urls`: the block's primary or servers; a block none of them would use is a warning.
    """
    before = _errors(r)
    if urls and not any(u.lower().startswith("https://") for u in urls):
        r.warning(
            "tls-without-https",
            node.span,
            "this `tls` block has no effect: no server here is https://",
        )
    ca: str | None = None
    verify = True
    cert_st: ast.TlsCert | None = None
    key_st: ast.TlsKey | None = None
    server_name: str | None = None
    digest = hashlib.sha256()
    for st in _once_each(node.statements, r):
        if isinstance(st, ast.TlsCa):
            data = _read(st.path, "certificate", r)
            if data is not None:
                digest.update(data)
                ca = _resolve(st.path)
                _load_ca(r, st.path.span, ca)
        elif isinstance(st, ast.TlsVerify):
            verify = st.on
        elif isinstance(st, ast.TlsCert):
            cert_st = st
        elif isinstance(st, ast.TlsKey):
            key_st = st
        else:
            name = st.name.value
            problem = host_problem(name)
            if problem is None and name.startswith("["):
                problem = "a server name is a DNS name or an IP address without brackets"
            r.check("invalid-server-name", st.name.span, problem)
            server_name = name
    pair = _pair(cert_st, key_st, node.span, r, client=True)
    if pair is not None:
        digest.update(pair[2])
    if _errors(r) > before:
        return None
    return TlsSpec(
        ca=ca,
        verify=verify,
        cert=pair[0] if pair else None,
        key=pair[1] if pair else None,
        server_name=server_name,
        digest=digest.hexdigest(),
    )


def check_listen_tls(node: ast.Listen, r: Report) -> ListenTlsSpec | None:
    """`listen ADDR { cert ... key ... }`: both are required (an empty block is plain HTTP)."""
    before = _errors(r)
    cert_st: ast.TlsCert | None = None
    key_st: ast.TlsKey | None = None
    for st in _once_each(node.statements, r):
        if isinstance(st, ast.TlsCert):
            cert_st = st
        else:
            key_st = st
    if cert_st is None and key_st is None:
        return None
    pair = _pair(cert_st, key_st, node.span, r, client=False)
    if pair is None or _errors(r) > before:
        return None
    return ListenTlsSpec(cert=pair[0], key=pair[1], digest=hashlib.sha256(pair[2]).hexdigest())


def _once_each(statements: Sequence[_S], r: Report) -> Iterator[_S]:
    """The statements, each keyword's first only; a repeat is reported instead."""
    seen: dict[str, Span] = {}
    for st in statements:
        keyword = _KEYWORD[type(st)]
        if r.once(keyword, st.span, seen.get(keyword)):
            seen[keyword] = st.span
            yield st


# --- files -------------------------------------------------------------------------------


def _errors(r: Report) -> int:
    return sum(1 for d in r.diagnostics if d.severity == "error")


def _resolve(path: ast.Str) -> str:
    """A relative path starts at the directory of the rule file that names it."""
    base = os.path.dirname(path.span.file)
    return os.path.abspath(os.path.join(base, path.value))


def _read(path: ast.Str, kind: str, r: Report) -> bytes | None:
    """The file's bytes if it is readable PEM holding a `kind` ("certificate" or "key")."""
    raw = path.value
    full = _resolve(path)
    # As the user can find it: relative to where sidecar runs when the rule file's name was.
    shown = os.path.normpath(os.path.join(os.path.dirname(path.span.file), raw))
    relative = (
        "" if os.path.isabs(raw) else " (a relative path starts at the rule file's directory)"
    )
    if not raw or "\0" in raw:
        r.error("invalid-tls-file", path.span, "a file name is needed here")
        return None
    if not os.path.exists(full):
        r.error("invalid-tls-file", path.span, f'file "{shown}" does not exist{relative}')
        return None
    if not os.path.isfile(full):
        r.error("invalid-tls-file", path.span, f'"{shown}" is not a regular file')
        return None
    try:
        with open(full, "rb") as f:
            data = f.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        r.error("invalid-tls-file", path.span, f'cannot read "{shown}": {exc.strerror or exc}')
        return None
    if len(data) > MAX_PEM_BYTES:
        r.error("invalid-tls-file", path.span, f'"{raw}" is larger than 1 MiB: not a PEM file')
        return None
    problem = _kind_problem(data, kind)
    if problem is not None:
        r.error("invalid-tls-file", path.span, f'"{raw}" {problem}')
        return None
    return data


def _kind_problem(data: bytes, kind: str) -> str | None:
    if kind == "certificate":
        if _CERT.search(data):
            return None
        if _ANY_KEY.search(data):
            return "holds a private key, not a certificate (PEM -----BEGIN CERTIFICATE-----)"
        return "is not a PEM certificate (no -----BEGIN CERTIFICATE----- line)"
    if _ENCRYPTED_KEY.search(data):
        return "holds an encrypted private key: sidecar needs it unencrypted"
    if _KEY.search(data):
        return None
    if _CERT.search(data):
        return "holds a certificate, not a private key (PEM -----BEGIN PRIVATE KEY-----)"
    return "is not a PEM private key (no -----BEGIN PRIVATE KEY----- line)"


def _load_ca(r: Report, span: Span, ca: str) -> None:
    """Load the bundle as serving will; report OpenSSL's refusal."""
    try:
        client_context(ca=ca)
    except (ssl.SSLError, OSError, ValueError) as exc:
        r.error("invalid-tls-file", span, f"not a CA bundle OpenSSL can load: {_reason(exc)}")


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return str(exc)


def _pair(
    cert_st: ast.TlsCert | None,
    key_st: ast.TlsKey | None,
    block: Span,
    r: Report,
    *,
    client: bool,
) -> tuple[str, str, bytes] | None:
    """Check `cert` and `key` together: (cert path, key path, their bytes) when both load."""
    if cert_st is None and key_st is None:
        return None
    if cert_st is None or key_st is None:
        given, missing = ("cert", "key") if key_st is None else ("key", "cert")
        span = (cert_st or key_st).span  # type: ignore[union-attr]
        r.error("incomplete-tls", span, f"`{given}` needs a `{missing}` in the same block")
        return None
    cert_data = _read(cert_st.path, "certificate", r)
    key_data = _read(key_st.path, "key", r)
    if cert_data is None or key_data is None:
        return None
    cert, key = _resolve(cert_st.path), _resolve(key_st.path)
    try:
        if client:
            client_context(cert=cert, key=key)
        else:
            server_context(cert=cert, key=key)
    except ssl.SSLError as exc:
        text = str(exc).lower()
        if "mismatch" in text:
            r.error(
                "tls-key-mismatch",
                key_st.path.span,
                f'key "{key_st.path.value}" does not belong to certificate "{cert_st.path.value}"',
            )
        else:
            r.error(
                "invalid-tls-file",
                cert_st.path.span,
                f"OpenSSL cannot load this certificate and key: {_reason(exc)}",
            )
        return None
    except (OSError, ValueError) as exc:
        r.error("invalid-tls-file", cert_st.path.span, f"cannot load: {_reason(exc)}")
        return None
    return cert, key, cert_data + key_data
