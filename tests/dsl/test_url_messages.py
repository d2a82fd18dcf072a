"""URL problems are said in our words, never in urllib's."""

from __future__ import annotations

import pytest

from sidecar.dsl.values import SEMICOLON_HINT, url_problem


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("http://127.0.0.1:8081;", SEMICOLON_HINT),
        ("http://127.0.0.1:80x", 'port "80x" is not a number in 1..65535'),
        ("http://127.0.0.1:0", 'port "0" is not a number in 1..65535'),
        ("http://127.0.0.1:65536", 'port "65536" is not a number in 1..65535'),
        ("http://[::1", "URL is malformed (an IPv6 host is written [::1])"),
        ("http://[::1]:8080", None),
        ("http://[::1]", None),
        ("http://a:", None),
        ("https://a", None),
    ],
)
def test_url_problems(url: str, problem: str | None) -> None:
    assert url_problem(url) == problem
