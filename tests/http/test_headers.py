from __future__ import annotations

import pytest

from sidecar.http.headers import forward_request_headers, response_headers, strip_hop_by_hop
from sidecar.http.syntax import is_hop_by_hop
from sidecar.model.config import (
    CanarySpec,
    DropHeader,
    RewritePath,
    ServerSpec,
    SetHeader,
    Transform,
)
from sidecar.model.endpoint import Endpoint
from sidecar.shadow.template import ShadowTemplate

SERVER = (ServerSpec(endpoint=Endpoint.parse("http://127.0.0.1:9")),)


def spec(**kw: object) -> CanarySpec:
    return CanarySpec(name="c", servers=SERVER, **kw)  # type: ignore[arg-type]


def build(
    s: CanarySpec,
    headers: list[tuple[bytes, bytes]],
    *,
    path: bytes = b"/a",
    query: bytes = b"",
    body_length: int = 0,
    client: str | None = "10.0.0.1",
    default_host: bytes | None = b"canary:80",
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    return ShadowTemplate.compile(s).build(
        raw_path=path,
        query_string=query,
        headers=headers,
        client=client,
        scheme="http",
        body_length=body_length,
        default_host=default_host,
    )


@pytest.mark.parametrize(
    ("name", "hop"),
    [
        (b"connection", True),
        (b"keep-alive", True),
        (b"proxy-authorization", True),
        (b"proxy-connection", True),
        (b"te", True),
        (b"trailer", True),
        (b"transfer-encoding", True),
        (b"upgrade", True),
        (b"x-app", False),
        (b"authorization", False),
        (b"content-length", False),
    ],
)
def test_is_hop_by_hop(name: bytes, hop: bool) -> None:
    assert is_hop_by_hop(name) is hop


def test_strip_removes_connection_listed_and_keeps_order_and_repeats() -> None:
    headers = [
        (b"Connection", b"close, X-Secret"),
        (b"Set-Cookie", b"a=1"),
        (b"X-Secret", b"s"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Set-Cookie", b"b=2"),
    ]
    assert strip_hop_by_hop(headers) == [(b"set-cookie", b"a=1"), (b"set-cookie", b"b=2")]
    assert response_headers(headers) == strip_hop_by_hop(headers)


def test_forward_appends_xff_and_sets_proto_host_when_absent() -> None:
    out = forward_request_headers(
        [(b"host", b"app.example.com"), (b"x-forwarded-for", b"1.1.1.1"), (b"te", b"trailers")],
        client="10.0.0.1",
        scheme="https",
    )
    assert out == [
        (b"host", b"app.example.com"),
        (b"x-forwarded-for", b"1.1.1.1, 10.0.0.1"),
        (b"x-forwarded-proto", b"https"),
        (b"x-forwarded-host", b"app.example.com"),
    ]


def test_forward_keeps_existing_proto_and_host_and_folds_xff() -> None:
    out = forward_request_headers(
        [
            (b"x-forwarded-for", b"1.1.1.1"),
            (b"x-forwarded-proto", b"http"),
            (b"x-forwarded-host", b"orig"),
            (b"x-forwarded-for", b"2.2.2.2"),
        ],
        client=None,
        scheme="https",
    )
    assert out == [
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"orig"),
        (b"x-forwarded-for", b"1.1.1.1, 2.2.2.2"),
    ]


def test_shadow_strips_hop_by_hop_expect_marks_and_reframes() -> None:
    target, headers = build(
        spec(),
        [
            (b"host", b"app.example.com"),
            (b"connection", b"keep-alive, x-hop"),
            (b"x-hop", b"1"),
            (b"keep-alive", b"timeout=5"),
            (b"proxy-authorization", b"Basic x"),
            (b"upgrade", b"websocket"),
            (b"expect", b"100-continue"),
            (b"transfer-encoding", b"chunked"),
            (b"content-length", b"999"),
            (b"x-app", b"yes"),
            (b"x-mirror", b"client-value"),
        ],
        query=b"q=1",
        body_length=42,
    )
    assert target == b"/a?q=1"
    assert headers == [
        (b"host", b"app.example.com"),
        (b"x-app", b"yes"),
        (b"x-forwarded-for", b"10.0.0.1"),
        (b"x-forwarded-proto", b"http"),
        (b"x-forwarded-host", b"app.example.com"),
        (b"x-mirror", b"1"),
        (b"content-length", b"42"),
    ]


def test_shadow_without_body_has_no_content_length() -> None:
    _, headers = build(spec(), [(b"content-length", b"10"), (b"host", b"h")], body_length=0)
    assert all(n != b"content-length" for n, _ in headers)


def test_mark_off_keeps_client_value() -> None:
    _, headers = build(spec(mark=None), [(b"x-mirror", b"1"), (b"host", b"h")])
    assert (b"x-mirror", b"1") in headers


def test_host_rewrite_and_default_host() -> None:
    _, headers = build(spec(host="canary.internal"), [(b"host", b"app")])
    assert headers[0] == (b"host", b"canary.internal")
    assert [n for n, _ in headers].count(b"host") == 1
    _, headers = build(spec(), [], default_host=b"127.0.0.1:81")
    assert headers[0] == (b"host", b"127.0.0.1:81")


def test_transforms_in_written_order() -> None:
    transforms: tuple[Transform, ...] = (
        SetHeader(name="X-Shadow", value="true"),
        DropHeader(names=("Authorization", "Cookie")),
        SetHeader(name="Cookie", value="fresh"),
        RewritePath(pattern="^/api/v1/", replacement="/api/v2/"),
        RewritePath(pattern="x", replacement="y"),
    )
    target, headers = build(
        spec(transforms=transforms),
        [
            (b"host", b"h"),
            (b"x-shadow", b"a"),
            (b"x-shadow", b"b"),
            (b"authorization", b"Bearer t"),
            (b"cookie", b"sid=1"),
        ],
        path=b"/api/v1/xx",
        query=b"a=/api/v1/",
    )
    assert target == b"/api/v2/yx?a=/api/v1/"  # first match only, query untouched
    names = [n for n, _ in headers]
    assert b"authorization" not in names
    assert [v for n, v in headers if n == b"x-shadow"] == [b"true"]
    assert [v for n, v in headers if n == b"cookie"] == [b"fresh"]


def test_mark_survives_drop_transform() -> None:
    _, headers = build(spec(transforms=(DropHeader(names=("X-Mirror",)),)), [(b"host", b"h")])
    assert (b"x-mirror", b"1") in headers
