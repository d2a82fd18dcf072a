"""Checks of single values: addresses, URLs, header names and values, regexes, CIDRs.

Each `*_problem` function returns None when the value is fine, else a short
sentence saying what is wrong (used verbatim in diagnostics). Pure, never raises.
"""

from __future__ import annotations

import ipaddress
import re

from sidecar.http import syntax
from sidecar.model.endpoint import Endpoint, address_problem, host_problem

# Also the syntax-error catalogue's hint for a `;` anywhere else.
SEMICOLON_HINT = 'statements do not end in ";": remove it'
_METHOD = re.compile(r"[A-Z][A-Z0-9_-]*\Z")


def is_hop_by_hop(name: str) -> bool:
    """A header the proxy strips (so setting one on a shadow request would be lost)."""
    return syntax.is_hop_by_hop(name.lower().encode("utf-8", "replace"))


def header_name_problem(name: str) -> str | None:
    if not name:
        return "a header name cannot be empty"
    if not syntax.is_token(name):
        return f'"{name}" is not a valid header name (letters, digits and !#$%&\'*+-.^_`|~ only)'
    return None


def header_value_problem(value: str) -> str | None:
    if syntax.find_control(value):
        return "a header value cannot contain control characters or line breaks"
    return None


def method_problem(method: str) -> str | None:
    if _METHOD.match(method):
        return None
    if _METHOD.match(method.upper()):
        return f'HTTP methods are upper case: "{method.upper()}", not "{method}"'
    return f'"{method}" is not an HTTP method'


def host_header_problem(value: str) -> str | None:
    """A `host "name"` value: a host, optionally with :port."""
    if value.startswith("[") and value.endswith("]"):
        return host_problem(value)
    if ":" in value and not value.startswith("["):
        return address_problem(value)
    if value.startswith("["):
        return address_problem(value)
    return host_problem(value)


def url_problem(raw: str) -> str | None:
    if raw.endswith(";"):  # the nginx habit: a URL takes the `;` in as its last character
        return SEMICOLON_HINT
    try:
        Endpoint.parse(raw)
    except ValueError as exc:
        return str(exc)
    return None


def regex_problem(pattern: str) -> str | None:
    try:
        re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as exc:
        return f"invalid regular expression: {exc}"
    return None


def replacement_problem(pattern: str, replacement: str) -> str | None:
    """A `rewrite path` replacement whose group references (`\\2`, `\\g<name>`) the pattern lacks."""
    try:
        compiled = re.compile(pattern)
    except (re.error, OverflowError, RecursionError):
        return None  # the pattern has its own diagnostic
    try:
        compiled.sub(replacement, "")  # parses the template (group references) even without a match
    except (re.error, IndexError) as exc:
        return f"invalid replacement: {exc}"
    return None


def cidr_problem(cidr: str) -> str | None:
    try:
        ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return f'"{cidr}" is not an IP address or CIDR block (such as "10.0.0.0/8")'
    return None
