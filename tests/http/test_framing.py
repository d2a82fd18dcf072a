"""framing.inspect / origin_form: the requests the proxy refuses itself (pure)."""

from __future__ import annotations

import pytest

from sidecar.http import framing
from sidecar.http.framing import CHUNKED, NO_BODY, Refusal, inspect, origin_form

H = [(b"host", b"example.com")]


@pytest.mark.parametrize(
    ("method", "target", "version", "headers", "expected"),
    [
        ("GET", b"/", "1.1", H, NO_BODY),
        ("POST", b"/", "1.1", [*H, (b"content-length", b"12")], 12),
        ("POST", b"/", "1.1", [*H, (b"content-length", b"0")], 0),
        ("POST", b"/", "1.1", [*H, (b"transfer-encoding", b"chunked")], CHUNKED),
        ("POST", b"/", "1.1", [*H, (b"transfer-encoding", b"Chunked")], CHUNKED),
        # the same length twice is not ambiguous
        ("POST", b"/", "1.1", [*H, (b"content-length", b"5"), (b"content-length", b"5")], 5),
        ("OPTIONS", b"*", "1.1", H, NO_BODY),
        ("GET", b"http://a.example/p", "1.1", H, NO_BODY),
        ("GET", b"HTTPS://a.example", "1.1", H, NO_BODY),
        ("GET", b"/", "2", [(b"content-length", b"3")], 3),
    ],
)
def test_accepted(
    method: str, target: bytes, version: str, headers: list[tuple[bytes, bytes]], expected: int
) -> None:
    assert inspect(method, target, version, headers) == expected


@pytest.mark.parametrize(
    ("method", "target", "version", "headers", "refusal"),
    [
        (
            "POST",
            b"/",
            "1.1",
            [*H, (b"content-length", b"5"), (b"transfer-encoding", b"chunked")],
            framing.CL_AND_TE,
        ),
        (
            "POST",
            b"/",
            "1.1",
            [*H, (b"transfer-encoding", b"chunked"), (b"content-length", b"5")],
            framing.CL_AND_TE,
        ),
        (
            "POST",
            b"/",
            "1.1",
            [*H, (b"content-length", b"5"), (b"content-length", b"6")],
            framing.CONFLICTING_CL,
        ),
        ("POST", b"/", "1.1", [*H, (b"content-length", b"-1")], framing.INVALID_CL),
        ("POST", b"/", "1.1", [*H, (b"content-length", b"1" * 30)], framing.INVALID_CL),
        ("POST", b"/", "1.0", [*H, (b"transfer-encoding", b"chunked")], framing.TE_IN_HTTP10),
        ("POST", b"/", "1.1", [*H, (b"transfer-encoding", b"gzip")], framing.TE_NOT_CHUNKED),
        (
            "POST",
            b"/",
            "1.1",
            [*H, (b"transfer-encoding", b"chunked"), (b"transfer-encoding", b"chunked")],
            framing.TE_NOT_CHUNKED,
        ),
        ("GET", b"/", "1.1", [*H, (b"x-big", b"a" * 20_000)], framing.HEADERS_TOO_LARGE),
        (
            "GET",
            b"/",
            "1.1",
            [*H, *[(b"x-many", b"a" * 100)] * 200],
            framing.HEADERS_TOO_LARGE,
        ),
        ("CONNECT", b"evil.example:443", "1.1", H, framing.CONNECT_REFUSED),
        ("GET", b"evil.example:443", "1.1", H, framing.BAD_TARGET),
        ("GET", b"*", "1.1", H, framing.BAD_TARGET),
        ("GET", b"http://user@evil.example/", "1.1", H, framing.BAD_TARGET),
        ("GET", b"ftp://evil.example/", "1.1", H, framing.BAD_TARGET),
        ("GET", b"/", "9.9", H, framing.BAD_VERSION),
        ("GET", b"/", "1.2", H, framing.BAD_VERSION),
        ("GET", b"/" + b"a" * framing.MAX_TARGET_BYTES, "1.1", H, framing.URI_TOO_LONG),
    ],
)
def test_refused(
    method: str, target: bytes, version: str, headers: list[tuple[bytes, bytes]], refusal: Refusal
) -> None:
    result = inspect(method, target, version, headers)
    assert result == refusal
    assert isinstance(result, Refusal)
    assert 400 <= result.status < 500
    assert result.body().endswith(b"\n")


def test_header_limit_is_inclusive() -> None:
    # A head just under the limit passes; one byte more is refused.
    line = len("GET") + len(b"/") + 16 + len(b"host") + len(b"example.com") + 4
    room = framing.MAX_HEADER_SECTION_BYTES - line - len(b"x-pad") - 4
    assert inspect("GET", b"/", "1.1", [*H, (b"x-pad", b"a" * room)]) == NO_BODY
    too_large = [*H, (b"x-pad", b"a" * (room + 1))]
    assert inspect("GET", b"/", "1.1", too_large) == framing.HEADERS_TOO_LARGE


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (b"http://a.example/p/q", (b"/p/q", b"a.example")),
        (b"http://a.example:8080", (b"/", b"a.example:8080")),
        (b"https://[::1]:9/x", (b"/x", b"[::1]:9")),
        (b"/p", None),
        (b"http:///p", None),
        (b"http://u:pw@a/p", None),
    ],
)
def test_origin_form(target: bytes, expected: tuple[bytes, bytes] | None) -> None:
    assert origin_form(target) == expected
