"""The `tls` block (primary, canary) and `listen`'s certificate block: parsed, validated
against real PEM files made by trustme, printed by `fmt`, shown by `/rules`."""

from __future__ import annotations

from pathlib import Path

import pytest
import trustme
from cryptography.hazmat.primitives import serialization

from sidecar.dsl import loads
from sidecar.routing.table import compile_table
from sidecar.tools.fmt import format_text


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    leaf = ca.issue_cert("localhost")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "leaf.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "leaf.key"))
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"secret"),
    )
    (tmp_path / "encrypted.key").write_bytes(encrypted)
    return tmp_path


def _load(certs: Path, text: str):  # type: ignore[no-untyped-def]
    return loads(text, str(certs / "rules.mirror"))


def test_a_full_block_becomes_a_spec_with_absolute_paths(certs: Path) -> None:
    text = (
        'listen 127.0.0.1:8443 { cert "leaf.pem" key "leaf.key" }\n'
        "primary https://10.0.0.5:8443 {\n"
        '    tls { ca "ca.pem" cert "leaf.pem" key "leaf.key" server_name "api.internal" }\n'
        "}\n"
        "canary v { server https://v.test tls { verify off } }\n"
        "mirror all { to v }\n"
    )
    result = _load(certs, text)
    config = result.config
    assert config is not None, result.report()
    assert config.primary is not None and config.primary.tls is not None
    tls = config.primary.tls
    assert (tls.ca, tls.cert, tls.key) == (
        str(certs / "ca.pem"),
        str(certs / "leaf.pem"),
        str(certs / "leaf.key"),
    )
    assert tls.verify and tls.server_name == "api.internal" and len(tls.digest) == 64
    canary_tls = config.canaries[0].tls
    assert canary_tls is not None and not canary_tls.verify and canary_tls.ca is None
    assert config.listen_tls is not None and config.listen_tls.key == str(certs / "leaf.key")
    doc = compile_table(config).to_json()
    assert doc["primary"]["tls"]["server_name"] == "api.internal"
    assert doc["canaries"][0]["tls"]["verify"] is False
    assert doc["listen_tls"] == {"cert": str(certs / "leaf.pem"), "key": str(certs / "leaf.key")}


@pytest.mark.parametrize(
    ("block", "code", "words"),
    [
        ('ca "ca.pem" ca "ca.pem"', "duplicate-statement", "`ca` may appear only once"),
        ('cert "leaf.pem" key "encrypted.key"', "invalid-tls-file", "encrypted private key"),
        ('ca "leaf.key"', "invalid-tls-file", "holds a private key"),
        ('ca "."', "invalid-tls-file", "is not a regular file"),
        ('key "leaf.key"', "incomplete-tls", "`key` needs a `cert`"),
        ('server_name ""', "invalid-server-name", "the host is missing"),
    ],
)
def test_problems_are_reported_at_the_statement(
    certs: Path, block: str, code: str, words: str
) -> None:
    result = _load(certs, f"primary https://10.0.0.5 {{ tls {{ {block} }} }}\n")
    assert result.config is None
    found = [d for d in result.diagnostics if d.code == code]
    assert found and words in found[0].message, result.report()
    assert found[0].span.line == 1 and found[0].span.column > len("primary https://10.0.0.5 {")


def test_two_tls_blocks_in_one_primary(certs: Path) -> None:
    result = _load(certs, "primary https://a.test { tls { } tls { } }\n")
    assert [d.code for d in result.diagnostics if d.severity == "error"] == ["duplicate-statement"]


def test_a_changed_file_changes_the_spec(certs: Path) -> None:
    text = 'primary https://a.test { tls { ca "ca.pem" } }\n'
    first = _load(certs, text).config
    (certs / "ca.pem").write_bytes(trustme.CA().cert_pem.bytes())
    second = _load(certs, text).config
    assert first is not None and second is not None and first.primary != second.primary


def test_fmt_lays_out_the_blocks_and_is_idempotent() -> None:
    text = (
        'listen 0.0.0.0:8443 {  cert "p.pem"  # chain\n key "p.key" }\n'
        'primary https://a.test { timeout 2s tls { verify off server_name "x.test" } }\n'
    )
    once, diags = format_text(text, "f.mirror")
    assert once is not None, diags
    assert once == (
        "listen 0.0.0.0:8443 {\n"
        '    cert "p.pem"  # chain\n'
        '    key "p.key"\n'
        "}\n"
        "\n"
        "primary https://a.test {\n"
        "    timeout 2s\n"
        "    tls {\n"
        "        verify off\n"
        '        server_name "x.test"\n'
        "    }\n"
        "}\n"
    )
    assert format_text(once, "f.mirror")[0] == once
