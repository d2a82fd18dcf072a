"""TLS toward the primary and the canaries, through a real `sidecar serve`.

Certificates come from trustme CAs made by the test. One proxy sends every request to an
https primary (verified with the test CA) and mirrors it to canaries that each exercise one
part of the `tls` block or one way a handshake fails. Handshakes are counted at the
servers: connections are reused, so a run of requests costs one handshake per connection.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import httpx

from tests.support.serve import metric, serve_proxy
from tests.support.servers import wait_until
from tests.support.tls import Pki, TlsCanary

REQUESTS = 6


async def test_https_primary_and_canaries(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    other = Pki(tmp_path, "other-ca")  # a CA nobody trusts
    local = pki.leaf("local", "127.0.0.1")
    past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
    primary = TlsCanary(pki.server_context(*local))
    good = TlsCanary(pki.server_context(*local))
    self_signed = TlsCanary(other.server_context(*other.leaf("self", "127.0.0.1")))
    named = TlsCanary(pki.server_context(*pki.leaf("named", "api.internal")))
    client_leaf = pki.leaf("client", "client.test")
    mutual = TlsCanary(pki.server_context(*local, client_ca=pki.ca_pem))
    wrong_name = TlsCanary(pki.server_context(*pki.leaf("wrong", "elsewhere.test")))
    untrusted = TlsCanary(other.server_context(*other.leaf("untrusted", "127.0.0.1")))
    expired = TlsCanary(pki.server_context(*pki.leaf("expired", "127.0.0.1", not_after=past)))
    no_client_cert = TlsCanary(pki.server_context(*local, client_ca=pki.ca_pem))
    servers = {
        "good": (good, 'ca "ca.pem"'),
        "selfsigned": (self_signed, "verify off"),
        "named": (named, 'ca "ca.pem" server_name "api.internal"'),
        "mutual": (mutual, 'ca "ca.pem" cert "client.pem" key "client.key"'),
        "wrongname": (wrong_name, 'ca "ca.pem"'),
        "untrusted": (untrusted, None),  # the system trust store does not know the test CA
        "expired": (expired, 'ca "ca.pem"'),
        "noclientcert": (no_client_cert, 'ca "ca.pem"'),
    }
    assert client_leaf[0].name == "client.pem"
    for server in (primary, *(s for s, _ in servers.values())):
        await server.start()
    try:
        rules = f'primary {primary.url} {{ tls {{ ca "ca.pem" }} }}\n'
        for name, (server, tls) in servers.items():
            block = f"tls {{ {tls} }}" if tls else ""
            rules += f"canary {name} {{ server {server.url} workers 2 {block} }}\n"
        rules += f"mirror all {{ to {', '.join(servers)} }}\n"
        async with serve_proxy(tmp_path, rules) as proxy:
            async with httpx.AsyncClient(timeout=10.0) as client:
                for i in range(REQUESTS):
                    r = await client.get(f"{proxy.url}/r{i}")
                    assert r.status_code == 200 and r.text == "canary"
                    # One tee at a time, so each canary's pool needs one connection.
                    for ok in (good, self_signed, named, mutual):
                        await ok.wait_for(i + 1)
            text = await proxy.metrics()
            log = proxy.log()
        # Verified, reused: one handshake each for six requests.
        assert len(primary.requests) == REQUESTS and primary.connections_total == 1
        for ok in (good, self_signed, named, mutual):
            assert len(ok.requests) == REQUESTS
            assert ok.connections_total == 1, ok.connections_total
        assert [r.target for r in good.requests] == [f"/r{i}".encode() for i in range(REQUESTS)]
        # SNI is the URL's host unless server_name says otherwise (an IP address sends none).
        assert named.server_names == ["api.internal"]
        assert good.server_names == [None]
        # Mutual TLS: the configured client certificate was presented.
        assert len(mutual.client_subjects) == 1  # one connection, one certificate presented
        # The failures: no request got through, each counted as a 'tls' error and logged.
        for name in ("wrongname", "untrusted", "expired"):
            server = servers[name][0]
            assert server.requests == [], name
            errors = metric(text, "sidecar_mirror_errors_total", canary=name, error="tls")
            assert errors >= 1, (name, log)
            assert f"canary {name}: 'tls' error:" in log, log
        assert "IP address mismatch" in log or "Hostname mismatch" in log
        assert "certificate has expired" in log
        assert "unable to get local issuer certificate" in log
        # Without the client certificate the server refuses the handshake. An asyncio server
        # closes without sending TLS 1.3's alert, so the client sees the connection closed
        # (from a server that sends the alert, the tee fails as 'tls').
        assert no_client_cert.requests == [] and no_client_cert.client_subjects == []
        assert "canary noclientcert: 'reset' error:" in log
    finally:
        for server in (primary, *(s for s, _ in servers.values())):
            await server.aclose()


async def test_primary_handshake_failure_is_a_502_with_a_log_line(tmp_path: Path) -> None:
    pki = Pki(tmp_path)
    other = Pki(tmp_path, "other-ca")
    primary = TlsCanary(other.server_context(*other.leaf("p", "127.0.0.1")))
    async with primary:
        rules = f'primary {primary.url} {{ tls {{ ca "{pki.ca_pem.name}" }} }}\n'
        async with serve_proxy(tmp_path, rules) as proxy:
            async with httpx.AsyncClient(timeout=10.0) as client:
                r = await client.get(f"{proxy.url}/x")
            assert r.status_code == 502
            assert r.text == "Bad Gateway: the primary failed the TLS handshake\n"
            await wait_until(lambda: "TLS handshake" in proxy.log(), 5.0, "the log line")
            log = proxy.log()
        assert "primary failed the TLS handshake" in log
        assert "CERTIFICATE_VERIFY_FAILED" in log
        assert primary.requests == []


async def test_reload_after_the_ca_file_changed_builds_a_new_client(tmp_path: Path) -> None:
    """The rules are the same text; the file they name now holds the right CA. The tls
    block's files are hashed into the canary's spec, so the reload gives it a new pool."""
    pki = Pki(tmp_path)
    other = Pki(tmp_path, "other-ca")
    trust = tmp_path / "trust.pem"
    trust.write_bytes(other.ca_pem.read_bytes())
    canary = TlsCanary(pki.server_context(*pki.leaf("c", "127.0.0.1")))
    async with canary:
        primary = TlsCanary(pki.server_context(*pki.leaf("p", "127.0.0.1")))
        async with primary:
            rules = (
                f'primary {primary.url} {{ tls {{ ca "ca.pem" }} }}\n'
                f'canary c {{ server {canary.url} tls {{ ca "trust.pem" }} }}\n'
                "mirror all { to c }\n"
            )
            async with (
                serve_proxy(tmp_path, rules) as proxy,
                httpx.AsyncClient(timeout=10.0) as client,
            ):
                assert (await client.get(f"{proxy.url}/before")).status_code == 200
                await wait_until(
                    lambda: "canary c: 'tls' error:" in proxy.log(), 5.0, "the tls error"
                )
                trust.write_bytes(pki.ca_pem.read_bytes())
                r = await client.post(f"{proxy.admin_url}/-/reload")
                assert r.status_code == 200, r.text
                assert (await client.get(f"{proxy.url}/after")).status_code == 200
                seen = await canary.wait_for(1)
            assert seen.target == b"/after"
            assert [r.target for r in canary.requests] == [b"/after"]
