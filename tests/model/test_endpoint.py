"""The one host:port parser (rules, serve flags, bind) and the origin URL."""

from __future__ import annotations

import pytest

from sidecar.model.endpoint import Endpoint, address_problem, split_address


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:9901", ("::1", 9901)),
        ("proxy_1.internal:80", ("proxy_1.internal", 80)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),  # any free port: for binding only
    ],
)
def test_split_address(raw: str, expected: tuple[str, int]) -> None:
    assert split_address(raw) == expected


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("localhost", '"localhost" is not host:port'),
        ("127.0.0.1:99999", 'port "99999" is not in 1..65535'),
        ("127.0.0.1:0", 'port "0" is not in 1..65535'),
        ("999.1.1.1:80", '"999.1.1.1" is not an IPv4 address'),
        ("[::1:80", '"[::1" is missing a "[" or "]"'),
        ("127.0.0.1:8080", None),
    ],
)
def test_address_problem(raw: str, problem: str | None) -> None:
    assert address_problem(raw) == problem


def test_endpoint_authority_omits_the_default_port() -> None:
    assert Endpoint.parse("https://[::1]:443").authority == "[::1]"
    assert Endpoint.parse("http://a:8080").url == "http://a:8080"
    with pytest.raises(ValueError, match="path"):
        Endpoint.parse("http://a/x")
