from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from sidecar.routing.request import RequestView
from tests.support.routing import req


def scope(**over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": "/caf\u00e9",
        "raw_path": b"/caf%C3%A9",
        "query_string": b"a=1",
        "headers": [(b"host", b"Example.COM:8080"), (b"x-a", b"1")],
        "client": ("10.1.2.3", 5555),
    }
    base.update(over)
    return base


def test_from_asgi_takes_the_raw_path_and_the_peer() -> None:
    v = RequestView.from_asgi(scope())
    assert (v.method, v.path, v.client, v.host) == ("POST", "/caf%C3%A9", "10.1.2.3", "example.com")
    assert v.query("a") == ["1"]
    assert v.header("X-A") == ["1"]


@pytest.mark.parametrize(
    ("over", "path", "client"),
    [
        ({"raw_path": b"/p?x=1"}, "/p", "10.1.2.3"),  # a server that leaves the query in
        ({"raw_path": None}, "/caf\u00e9", "10.1.2.3"),  # no raw_path: the decoded one
        ({"client": None}, "/caf%C3%A9", ""),  # a Unix socket has no peer
    ],
)
def test_from_asgi_variants(over: dict[str, Any], path: str, client: str) -> None:
    v = RequestView.from_asgi(scope(**over))
    assert (v.path, v.client) == (path, client)


@pytest.mark.parametrize(
    ("host_header", "host"),
    [
        ("Example.COM:8080", "example.com"),
        ("example.com", "example.com"),
        ("[::1]:8080", "::1"),
        ("[2001:DB8::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),  # bare IPv6 (not valid HTTP, but unambiguous)
        (" host.local ", "host.local"),
    ],
)
def test_host_without_port_lower_case(host_header: str, host: str) -> None:
    assert req(headers=[("Host", host_header)]).host == host


def test_host_missing_is_empty() -> None:
    assert req().host == ""


def test_headers_any_case_each_line_one_value() -> None:
    v = req(headers=[("Accept", "a/b, c/d"), ("X-Tag", "one"), ("x-tag", "two")])
    assert v.header("accept") == ["a/b, c/d"]  # commas are not split
    assert v.header("X-TAG") == ["one", "two"]
    assert v.header("x-missing") == []
    assert v.header_b(b"x-tag") == ["one", "two"]


def test_header_values_decode_as_latin1() -> None:
    v = RequestView(headers=[(b"x-bin", b"\xe9\xff")])
    assert v.header("x-bin") == ["\u00e9\u00ff"]


def test_header_lines_of_one_name_keep_their_order_among_others() -> None:
    v = RequestView(headers=[(b"a", b"1"), (b"b", b"x"), (b"a", b"2"), (b"a", b"3")])
    assert (v.header("a"), v.header("b")) == (["1", "2", "3"], ["x"])


@pytest.mark.parametrize(
    ("qs", "name", "values"),
    [
        ("a=1&a=2&b=3", "a", ["1", "2"]),
        ("debug", "debug", [""]),
        ("debug&x=1", "debug", [""]),
        ("x=", "x", [""]),
        ("q=hello+world%21", "q", ["hello world!"]),
        ("n%20ame=v", "n ame", ["v"]),
        ("u=%C3%A9", "u", ["\u00e9"]),
        ("a=1=2", "a", ["1=2"]),
        ("&&a=1&&", "a", ["1"]),
        ("A=1", "a", []),  # query names are case-sensitive
        ("", "a", []),
    ],
)
def test_query(qs: str, name: str, values: list[str]) -> None:
    assert req(query=qs).query(name) == values


def test_query_with_invalid_utf8_does_not_raise() -> None:
    v = RequestView(query_string=b"k=\xff%FF")
    assert v.query("k") == ["\ufffd\ufffd"]


@pytest.mark.parametrize(
    ("lines", "name", "values"),
    [
        (["a=1; b=2"], "b", ["2"]),
        (["a=1", "a=2; c=3"], "a", ["1", "2"]),
        (['s="quoted value"'], "s", ["quoted value"]),
        (["flag; x=1"], "flag", [""]),
        (["  sp  =  v  "], "sp", ["v"]),
        (["a=b=c"], "a", ["b=c"]),
        (["A=1"], "a", []),  # cookie names are case-sensitive
        ([], "a", []),
    ],
)
def test_cookies(lines: list[str], name: str, values: list[str]) -> None:
    assert req(headers=[("Cookie", line) for line in lines]).cookie(name) == values


@pytest.mark.parametrize(
    ("client", "addr"),
    [
        ("10.0.0.1", (4, int(ipaddress.IPv4Address("10.0.0.1")))),
        ("::ffff:10.0.0.1", (4, int(ipaddress.IPv4Address("10.0.0.1")))),  # dual-stack
        ("::1", (6, 1)),
        ("fe80::1%eth0", (6, int(ipaddress.IPv6Address("fe80::1")))),
        ("", None),
        ("/run/sidecar.sock", None),
        ("10.0.0", None),
        ("10.0.0.256", None),
    ],
)
def test_client_addr(client: str, addr: tuple[int, int] | None) -> None:
    assert req(client=client).client_addr == addr


def test_nothing_is_parsed_until_asked() -> None:
    v = RequestView.from_asgi(scope())
    assert v._hdec is None and v._query is None and v._cookies is None
    assert v.path == "/caf%C3%A9"
    assert v._hdec is None
    v.cookie("x")
    assert v._hdec is not None and v._query is None


def test_header_in_agrees_before_and_after_the_header_index_is_built() -> None:
    headers = [(b"x-mark", b"other"), (b"host", b"a"), (b"x-mark", b"v2")]
    for build_index_first in (False, True):
        view = RequestView(headers=headers)
        if build_index_first:
            view.header_b(b"host")
        assert view.header_in(b"x-mark", frozenset({"v2"}))
        assert not view.header_in(b"x-mark", frozenset({"v3"}))
        assert not view.header_in(b"x-absent", frozenset({"v2"}))
        assert not view.header_in(b"x-mark", frozenset({"V2"}))  # values are exact
