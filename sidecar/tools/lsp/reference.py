"""What each statement and operator means: the one source of the editor's hover texts.

docs/rules.md's "Keyword reference" section is generated from this table
(`python -m sidecar.tools.lsp.reference docs/rules.md` rewrites it between its
markers; tests/tools/lsp/test_reference.py fails when the two differ, and when a
rule of the grammar that begins with a keyword has no entry here).

Each entry is keyed by the grammar rule (lark's name) and the keyword it begins
with, as `sidecar.dsl.cursor.keyword_rules()` lists them, because one keyword can
start different statements (`timeout` in a primary and in a canary block).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from sidecar.dsl.cursor import literals

DOCS_BEGIN = "<!-- keyword-reference: generated from sidecar/tools/lsp/reference.py -->"
DOCS_END = "<!-- /keyword-reference -->"


@dataclass(frozen=True, slots=True, kw_only=True)
class Entry:
    rule: str  # the grammar rule the keyword begins
    keyword: str
    syntax: str  # as a user writes it
    where: str  # the block it belongs in
    meaning: str  # one or two sentences, markdown
    anchor: str  # the section of docs/rules.md that says more


ENTRIES: tuple[Entry, ...] = (
    # --- server settings
    Entry(rule="listen", keyword="listen", syntax="listen ADDR", where="top level", anchor="listen",
          meaning="Where clients connect (`host:port`). Default `127.0.0.1:8080`; `serve --listen` overrides it."),
    Entry(rule="admin", keyword="admin", syntax="admin ADDR | admin off", where="top level", anchor="admin",
          meaning="The admin listener: `/metrics`, `/healthz`, `/readyz`, `/rules`, `POST /-/reload`. Default `127.0.0.1:9901`; `off` turns it off."),
    Entry(rule="primary", keyword="primary", syntax="primary URL [{ ... }]", where="top level", anchor="primary",
          meaning="The real service: every request goes there and only its response reaches the client. The optional block sets `timeout` and `idle_timeout`."),
    Entry(rule="primary_timeout", keyword="timeout", syntax="timeout D", where="primary", anchor="primary",
          meaning="How long the primary may take to start answering, from the request sent until the response head (default `60s`); then `504`."),
    Entry(rule="primary_idle_timeout", keyword="idle_timeout", syntax="idle_timeout D", where="primary", anchor="primary",
          meaning="The longest pause in either body, upload or response (default `60s`); a stream that keeps moving is never cut."),
    Entry(rule="diff_log", keyword="diff_log", syntax='diff_log "FILE" | diff_log stderr', where="top level", anchor="diff_log",
          meaning="Where diff records of compared canaries go besides `GET /diffs`: a JSON-lines file (rotated at 64 MiB) or standard error."),
    Entry(rule="request_id", keyword="request_id", syntax='request_id "Header"', where="top level", anchor="request_id",
          meaning="The header that carries a request id: kept when the client sends one, generated otherwise, and the same on the primary's and the canaries' copies."),
    Entry(rule="host_server", keyword="server", syntax="server hypercorn | server uvicorn", where="top level", anchor="server",
          meaning="The HTTP server hosting the proxy listener: `hypercorn` (default; HTTP/1.1 and HTTP/2) or `uvicorn` (HTTP/1.1 only, several times the throughput). `serve --server` overrides it."),
    # --- canaries
    Entry(rule="canary", keyword="canary", syntax="canary NAME { ... }", where="top level", anchor="canaries",
          meaning="A named destination for shadow copies, with its own bounded worker pool, queue and connection pool. Needs at least one `server`."),
    Entry(rule="server", keyword="server", syntax="server URL [weight N]", where="canary", anchor="canaries",
          meaning="A destination of the canary; one or more, chosen by smooth weighted round-robin (`weight` 1..1000, default 1)."),
    Entry(rule="workers", keyword="workers", syntax="workers N", where="canary", anchor="canaries",
          meaning="Concurrent mirror requests (and TCP connections), 1..1024, per process. Default `8`."),
    Entry(rule="queue", keyword="queue", syntax="queue N", where="canary", anchor="canaries",
          meaning="Buffered jobs; when full, new tees are dropped (`dropped_full`). `0`: admitted only when a worker is idle. Default `256`."),
    Entry(rule="timeout", keyword="timeout", syntax="timeout D", where="canary", anchor="canaries",
          meaning="One deadline per mirror from dispatch, queue wait plus round trip; past it the tee is `failed`. Default `10s`."),
    Entry(rule="max_body", keyword="max_body", syntax="max_body SIZE", where="canary, compare", anchor="canaries",
          meaning="In a canary: larger bodies are not mirrored (`dropped_oversize`), default `1MiB`. In `compare`: a longer `body json` response is skipped as `too_large`."),
    Entry(rule="body", keyword="body", syntax="body on | body off", where="canary", anchor="canaries",
          meaning="`off`: mirror without the body, dispatched at once. Default `on`."),
    Entry(rule="mark", keyword="mark", syntax='mark "Name" "value" | mark off', where="canary", anchor="canaries",
          meaning='The header stamped on every shadow request; the loop guard never mirrors a request that carries it. Default `"X-Mirror" "1"`.'),
    Entry(rule="rate", keyword="rate", syntax="rate N/s | rate N/m", where="canary", anchor="canaries",
          meaning="At most N mirrors per second or minute (a token bucket, full at start), per process; the excess is `dropped_rate`."),
    Entry(rule="host", keyword="host", syntax='host preserve | host "name"', where="canary", anchor="canaries",
          meaning="The `Host` header sent to the canary: the client's (`preserve`, the default) or this name."),
    Entry(rule="set_header", keyword="set", syntax='set header "Name" "value"', where="canary", anchor="canaries",
          meaning="Set a header on the shadow copy (repeatable, applied in order)."),
    Entry(rule="drop_header", keyword="drop", syntax='drop header "A", "B"', where="canary", anchor="canaries",
          meaning="Remove headers from the shadow copy (repeatable), such as credentials."),
    Entry(rule="rewrite_path", keyword="rewrite", syntax='rewrite path "regex" "replacement"', where="canary", anchor="canaries",
          meaning="Python `re.sub` on the shadow copy's path, first match (repeatable, applied in order)."),
    Entry(rule="pause", keyword="pause", syntax="pause after N failures for D", where="canary", anchor="pausing-a-failing-canary-pause",
          meaning="After N consecutive `failed` tees, drop the canary's tees as `dropped_paused` for D, then send one probe."),
    Entry(rule="tls", keyword="tls", syntax="tls { ... }", where="primary, canary", anchor="tls-to-https-servers-tls",
          meaning="How `https://` servers are reached: `ca`, `verify`, `cert`/`key`, `server_name` (any subset). Without it: the system trust store, SNI and name check on the URL's host."),
    Entry(rule="tls_ca", keyword="ca", syntax='ca "file.pem"', where="tls", anchor="tls-to-https-servers-tls",
          meaning="Trust the CA certificates in this PEM bundle instead of the system's store."),
    Entry(rule="tls_verify", keyword="verify", syntax="verify on | verify off", where="tls", anchor="tls-to-https-servers-tls",
          meaning="`off`: accept any certificate and name (encrypted, not authenticated), for a self-signed test server. Default `on`."),
    Entry(rule="tls_cert", keyword="cert", syntax='cert "file.pem"', where="tls, listen", anchor="tls-to-https-servers-tls",
          meaning="A PEM certificate chain, leaf first, always with `key`: in `tls` the client certificate (mutual TLS); in `listen { }` the certificate served to clients."),
    Entry(rule="tls_key", keyword="key", syntax='key "file.key"', where="tls, listen", anchor="tls-to-https-servers-tls",
          meaning="The unencrypted PEM private key of `cert`; `check` reports a key that does not belong to its certificate."),
    Entry(rule="tls_server_name", keyword="server_name", syntax='server_name "name"', where="tls", anchor="tls-to-https-servers-tls",
          meaning="The name sent as SNI and checked against the certificate, instead of the URL's host."),
    Entry(rule="compare", keyword="compare", syntax="compare { ... }", where="canary", anchor="comparing-responses-compare",
          meaning="Judge the canary's responses against the primary's: `match`, `diff` (with a diff record) or `skipped`."),
    # --- compare
    Entry(rule="compare_status", keyword="status", syntax="status", where="compare", anchor="comparing-responses-compare",
          meaning="The status codes must be equal."),
    Entry(rule="compare_header", keyword="header", syntax='header "Name", ...', where="compare", anchor="comparing-responses-compare",
          meaning="Each header's list of values must be equal (absent on both sides is equal); names are case-insensitive."),
    Entry(rule="compare_body", keyword="body", syntax="body bytes | body json", where="compare", anchor="comparing-responses-compare",
          meaning="`bytes`: same length and sha256. `json`: equal JSON values (key order ignored, numbers by value)."),
    Entry(rule="compare_ignore", keyword="ignore", syntax='ignore "$.path", ...', where="compare", anchor="comparing-responses-compare",
          meaning="RFC 9535 JSONPath queries whose nodes are left out of a `body json` comparison."),
    Entry(rule="compare_sample", keyword="sample", syntax="sample RATE", where="compare", anchor="comparing-responses-compare",
          meaning="The share of completed tees compared, in (0%, 100%]. Default `100%`."),
    Entry(rule="compare_baseline", keyword="baseline", syntax="baseline NAME", where="compare", anchor="comparing-responses-compare",
          meaning="A canary running the primary's version: a difference it shows too, at the same place, is noise, not a diff."),
    # --- mirror rules and excludes
    Entry(rule="mirror", keyword="mirror", syntax="mirror NAME { ... }", where="top level", anchor="mirror-rules",
          meaning="A rule that routes requests to canaries: `when` which requests, `sample` which share, `to` which canaries. Rules apply in configuration order."),
    Entry(rule="when", keyword="when", syntax="when PREDICATE", where="mirror", anchor="predicates",
          meaning="Which requests the rule takes (without it: every request)."),
    Entry(rule="sample", keyword="sample", syntax="sample RATE [by ...]", where="mirror", anchor="sampling",
          meaning="Which share of the matching requests is mirrored, in (0%, 100%]: a fresh random draw per request, or sticky `by` a key."),
    Entry(rule="sample_by", keyword="by", syntax='by header|cookie|query "name" | by client', where="sample", anchor="sampling",
          meaning="Sample by a hash of this key's value: the same key is always in or always out. A request without the key gets a random draw."),
    Entry(rule="to", keyword="to", syntax="to NAME, ...", where="mirror", anchor="mirror-rules",
          meaning="The canaries that get a copy (required). A canary receives at most one copy of a request."),
    Entry(rule="exclude", keyword="exclude", syntax="exclude when PREDICATE", where="top level", anchor="excludes",
          meaning="A request for which any exclude holds is never mirrored, whatever the rules say."),
    # --- predicates
    Entry(rule="not_expr", keyword="not", syntax="not TEST", where="predicate", anchor="predicates",
          meaning="The test does not hold. `or` binds loosest, then `and`, then `not`; parentheses group."),
    Entry(rule="test", keyword="method", syntax="method == GET | method in (GET, HEAD)", where="predicate", anchor="predicates",
          meaning="The request method, a bare upper-case word: `==`, `!=`, `in (...)`."),
    Entry(rule="test", keyword="path", syntax='path ^= "/api/"', where="predicate", anchor="predicates",
          meaning="The raw path, without the query: `==`, `!=`, `^=`, `$=`, `*=`, `~`, `!~`, `in (...)`."),
    Entry(rule="test", keyword="host", syntax='host == "example.com"', where="predicate", anchor="predicates",
          meaning="The request's host, without the port, in lower case: the string tests."),
    Entry(rule="test", keyword="header", syntax='header "Name" exists', where="predicate", anchor="predicates",
          meaning="A request header (name case-insensitive): the string tests, or `exists`. Any of several values may pass."),
    Entry(rule="test", keyword="query", syntax='query "name" == "1"', where="predicate", anchor="predicates",
          meaning="A query parameter (`?debug` exists with an empty value): the string tests, or `exists`."),
    Entry(rule="test", keyword="cookie", syntax='cookie "name" exists', where="predicate", anchor="predicates",
          meaning="A cookie of the request: the string tests, or `exists`."),
    Entry(rule="test", keyword="client", syntax='client in ("10.0.0.0/8", ...)', where="predicate", anchor="predicates",
          meaning="The TCP peer address is in one of these networks (X-Forwarded-For is not trusted)."),
)  # fmt: skip

# The tests after a subject, by terminal name (`sidecar.dsl.cursor.literals()` gives their text).
OPERATORS: dict[str, str] = {
    "EQ": "equals",
    "NE": "does not equal",
    "PREFIX": "starts with",
    "SUFFIX": "ends with",
    "CONTAINS": "contains",
    "MATCH": "matches the regex (searched, unanchored)",
    "NOT_MATCH": "does not match the regex",
    "IN": "is one of the listed values",
    "EXISTS": "is present",
}


def entries_for(rule: str, keyword: str) -> list[Entry]:
    return [e for e in ENTRIES if e.rule == rule and e.keyword == keyword]


def hover_markdown(entry: Entry) -> str:
    """The hover of one keyword: its syntax, where it goes, what it means."""
    return (
        f"```mirror\n{entry.syntax}\n```\n\n{entry.meaning}\n\n"
        f"*In: {entry.where}.* More in docs/rules.md#{entry.anchor}."
    )


def docs_section() -> str:
    """The generated part of docs/rules.md, between (and including) its markers."""
    lines = [
        DOCS_BEGIN,
        "",
        "| keyword | form | in | meaning |",
        "|---|---|---|---|",
    ]
    for e in ENTRIES:
        form, meaning = _cell(e.syntax), _cell(e.meaning)
        lines.append(f"| [`{e.keyword}`](#{e.anchor}) | `{form}` | {e.where} | {meaning} |")
    lines += ["", "| test | meaning |", "|---|---|"]
    for name, meaning in OPERATORS.items():
        lines.append(f"| `{literals()[name]}` | {meaning} |")
    lines += ["", DOCS_END]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def rewrite_docs(text: str) -> str:
    """`text` (docs/rules.md) with its generated section replaced by the current one."""
    start = text.index(DOCS_BEGIN)
    end = text.index(DOCS_END) + len(DOCS_END)
    return text[:start] + docs_section() + text[end:]


if __name__ == "__main__":  # python -m sidecar.tools.lsp.reference docs/rules.md
    path = sys.argv[1]
    with open(path, encoding="utf-8") as f:
        old = f.read()
    with open(path, "w", encoding="utf-8") as f:
        f.write(rewrite_docs(old))
