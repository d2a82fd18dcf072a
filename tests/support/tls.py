"""TLS for tests: certificates made with trustme, and an https RecordingCanary.

    pki = Pki(tmp_path)                          # a CA; pki.ca_pem is its file
    leaf = pki.leaf("server", "127.0.0.1")       # (cert chain file, key file)
    async with TlsCanary(pki.server_context(*leaf)) as canary:
        canary.url                               # https://127.0.0.1:PORT
        canary.connections_total                 # TLS handshakes completed

Every handshake is a new connection here (no session resumption between pools), so
`connections_total` counts handshakes.
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from pathlib import Path

import trustme

from tests.support.servers import RecordingCanary


class Pki:
    """A test CA whose files live in `directory`."""

    def __init__(self, directory: Path, name: str = "ca") -> None:
        self.directory = directory
        self.ca = trustme.CA()
        self.ca_pem = directory / f"{name}.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_pem))

    def leaf(
        self, name: str, *identities: str, not_after: datetime.datetime | None = None
    ) -> tuple[Path, Path]:
        """A certificate for `identities` (host names, IPs) and its key, as files."""
        kwargs = {}
        if not_after is not None:
            kwargs["not_before"] = not_after - datetime.timedelta(days=30)
            kwargs["not_after"] = not_after
        cert = self.ca.issue_cert(*identities, **kwargs)  # type: ignore[arg-type]
        chain = self.directory / f"{name}.pem"
        key = self.directory / f"{name}.key"
        chain.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
        cert.private_key_pem.write_to_path(str(key))
        return chain, key

    def server_context(
        self, chain: Path, key: Path, *, client_ca: Path | None = None
    ) -> ssl.SSLContext:
        """A server context; with `client_ca`, a client certificate from it is required."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(chain), str(key))
        if client_ca is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(client_ca))
        return ctx


class TlsCanary(RecordingCanary):
    """A RecordingCanary over TLS; records the SNI names and client certificates it saw."""

    def __init__(self, context: ssl.SSLContext) -> None:
        super().__init__()
        self.context = context
        self.server_names: list[str | None] = []
        self.client_subjects: list[object] = []
        context.sni_callback = self._sni

    def _sni(self, _obj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
        self.server_names.append(name)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=self.context)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ssl_object = writer.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.getpeercert():
            self.client_subjects.append(ssl_object.getpeercert()["subject"])
        await super()._handle(reader, writer)
