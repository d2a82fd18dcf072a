"""The syntax-error catalogue: lark's `UnexpectedInput` -> one friendly Diagnostic.

Every syntax error reads "expected X, found Y" at the offending token, with
terminal names turned into words ("a duration such as 10s", `"workers"`).
`CATALOGUE` adds a hint for mistakes people actually make; each entry lists
example inputs that fail in the same parser state, matched the way
lark's `match_examples` does (tests check that every entry still fires). A word found
where a keyword was expected gets a did-you-mean from difflib.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import re

from lark import Lark, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from sidecar.diagnostics import Diagnostic, Span
from sidecar.dsl.grammar import get_parser
from sidecar.dsl.values import SEMICOLON_HINT

CODE = "syntax-error"
ADDRESS_HINT = "an address is host:port (the port is required), such as 127.0.0.1:8080"
# Hints whose mistake has a more precise code than `syntax-error`: a port-less
# `listen localhost` is an invalid address, the same code as `listen localhost:0`.
HINT_CODES: dict[str, str] = {ADDRESS_HINT: "invalid-address"}

# hint -> inputs that fail in the parser state (and on the token type) the hint is about.
CATALOGUE: dict[str, list[str]] = {
    "a duration needs a unit, such as 10s or 250ms": [
        "canary a { timeout 10 }",
        "primary http://127.0.0.1:1 { timeout 10 }",
        "primary http://127.0.0.1:1 { idle_timeout 10 }",
    ],
    "a size needs a unit, such as 512KiB or 1MiB": ["canary a { max_body 1024 }"],
    "a rate is a count per second or minute, such as 200/s or 50/m": ["canary a { rate 200 }"],
    "a server is a URL with a scheme, such as http://10.0.0.7:8080": [
        "canary a { server 10.0.0.7:8080 }",
        "canary a { server localhost }",
        'canary a { server "http://10.0.0.7:8080" }',
    ],
    "the primary is a URL with a scheme, such as http://127.0.0.1:8081": [
        "primary 127.0.0.1:8081",
        'primary "http://127.0.0.1:8081"',
    ],
    ADDRESS_HINT: [
        "listen localhost",
        "listen 8080",
        "admin localhost",
        "admin 8080",
        'listen "127.0.0.1:8080"',
    ],
    'strings are double-quoted, such as "/api/"': [
        "mirror a { when path == /api }",
        "exclude when path ^= api",
        "canary a { drop header Authorization }",
        "canary a { compare { header Content-Type } }",
    ],
    "HTTP methods are bare words, such as GET (not quoted)": [
        'mirror a { when method == "GET" }',
        'mirror a { when method in ("GET") }',
    ],
    'client only takes `in ("10.0.0.0/8", ...)`': [
        'exclude when client == "10.0.0.1"',
        'exclude when client ^= "10."',
    ],
    "operators are == != ^= $= *= ~ !~ and in": [
        'exclude when path = "/a"',
        'exclude when path eq "/a"',
    ],
    "a canary needs a name, such as `canary v2 { ... }`": ["canary { }"],
    "a mirror rule needs a name, such as `mirror api_reads { ... }`": ["mirror { }"],
    "this statement belongs inside a canary block": [
        "server http://127.0.0.1:1",
        "workers 8",
        "rate 10/s",
        "compare { status }",
    ],
    "this statement belongs inside a canary's `compare { ... }` block": [
        "canary a { status }",
        'canary a { ignore "$.id" }',
        "canary a { baseline v1 }",
        "canary a { workers 1 status }",
        "canary a { server http://127.0.0.1:1 status }",
    ],
    'JSONPath queries are strings, such as "$.items[*].id"': [
        "canary a { compare { body json ignore $.id } }",
    ],
    "a baseline is a canary name, not a string, such as `baseline v1`": [
        'canary a { compare { baseline "v1" } }',
    ],
    '`diff_log` takes a double-quoted file name, such as "diffs.jsonl", or `stderr`': [
        "diff_log diffs.jsonl",
        "diff_log /var/log/sidecar/diffs.jsonl",
    ],
    "this statement belongs inside a mirror block": ["to v2", "sample 10%"],
    "`exclude` is followed by `when`": ['exclude path == "/a"'],
    "a sample rate is a percentage (10%) or a fraction (0.1)": [
        "mirror a { sample all }",
        "canary a { compare { sample all } }",
    ],
    "canary names after `to` are separated by commas": ["mirror a { to b c }"],
}

# Characters that are never valid and what the writer most likely meant; these hold
# in every parser state, so they are keyed on the character alone.
CHARACTER_HINTS: dict[str, str] = {
    ";": SEMICOLON_HINT,
    "'": "strings are double-quoted",
    "&": "combine tests with `and`, not `&&`",
    "|": "combine tests with `or`, not `||`",
    "!": "negate a test with `not`, not `!`",
}
UNCLOSED_STRING_HINT = (
    'the string is not closed on its line (end it with `"`; strings cannot span lines)'
)
# The keywords that start a top-level statement: found where a block's `}` could
# come, they mean the block above was left open.
_TOP_LEVEL = {"LISTEN", "ADMIN", "PRIMARY", "CANARY", "MIRROR", "EXCLUDE", "DIFF_LOG", "REQUEST_ID"}

_DESCRIPTIONS: dict[str, str] = {
    "NAME": "a name",
    "STRING": "a string",
    "NUMBER": "a number",
    "PERCENT": "a percentage such as 10%",
    "DURATION": "a duration such as 10s",
    "SIZE": "a size such as 1MiB",
    "RATE": "a rate such as 200/s",
    "ADDRESS": "an address such as 127.0.0.1:8080",
    "URL": "a URL such as http://127.0.0.1:8080",
    "$END": "end of file",
}
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*\Z")
_MAX_EXPECTED_SHOWN = 15  # after a `server`, a canary block accepts 15 things; more is noise


def _describe(name: str, parser: Lark) -> str:
    if name in _DESCRIPTIONS:
        return _DESCRIPTIONS[name]
    try:
        pattern = parser.get_terminal(name).pattern
    except KeyError:
        return name
    return f'"{pattern.value}"' if pattern.type == "str" else name.lower()


def _expected_text(names: set[str], parser: Lark) -> tuple[str, list[str]]:
    words = sorted({_describe(n, parser) for n in names}, key=lambda w: (not w.startswith('"'), w))
    keywords = [w.strip('"') for w in words if w.startswith('"') and _WORD.match(w.strip('"'))]
    shown = words[:_MAX_EXPECTED_SHOWN]
    if len(words) > len(shown):
        shown.append("...")
    if len(shown) == 1:
        return shown[0], keywords
    lead = "one of " if len(shown) > 2 else ""
    return lead + ", ".join(shown[:-1]) + " or " + shown[-1], keywords


def _found_text(exc: UnexpectedInput, text: str) -> tuple[str, str | None]:
    """How to show what was found, and the bare word (for did-you-mean) if it is one."""
    if isinstance(exc, UnexpectedToken):
        if exc.token.type == "$END":
            return "end of file", None
        value = str(exc.token)
    elif isinstance(exc, UnexpectedCharacters):
        value = exc.char
    else:
        return "end of file", None
    if value.startswith('"') and value.endswith('"') and len(value) > 1:
        shown = value
    elif value.isprintable():
        shown = f'"{value}"'
    else:
        shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return shown, value if _WORD.match(value) else None


def _end_span(text: str, filename: str) -> Span:
    body = text.rstrip()
    line = body.count("\n") + 1
    column = len(body) - (body.rfind("\n") + 1) + 1
    return Span(file=filename, line=line, column=column, end_line=line, end_column=column + 1)


def _span(exc: UnexpectedInput, text: str, filename: str) -> Span:
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        tok = exc.token
        line, col = tok.line or 1, tok.column or 1
        end_col = tok.end_column if tok.end_line == line and tok.end_column else col + 1
        return Span(file=filename, line=line, column=col, end_line=line, end_column=end_col)
    if isinstance(exc, UnexpectedCharacters):
        line, col = exc.line, exc.column
        return Span(file=filename, line=line, column=col, end_line=line, end_column=col + 1)
    return _end_span(text, filename)


def _key(exc: UnexpectedInput) -> tuple[int, str] | None:
    """Where and on what a parse failed: (LALR state number, token type or the character)."""
    state = getattr(exc, "state", None)
    position = getattr(state, "position", None)
    if not isinstance(position, int):
        return None
    if isinstance(exc, UnexpectedToken):
        return position, exc.token.type
    if isinstance(exc, UnexpectedCharacters):
        return position, "char:" + exc.char
    return None


@functools.cache
def _catalogue_index() -> dict[tuple[int, str], str]:
    # lark's `UnexpectedInput.match_examples` re-parses every example on every
    # error and falls back to a state-only match (so any word at the top level
    # would get the first top-level hint). Same idea, precomputed once, and
    # keyed on the state *and* what was found.
    index: dict[tuple[int, str], str] = {}
    for hint, examples in CATALOGUE.items():
        for example in examples:
            try:
                get_parser().parse(example)
            except UnexpectedInput as exc:
                key = _key(exc)
                if key is not None:
                    index.setdefault(key, hint)
    return index


def hint_for(exc: UnexpectedInput) -> str | None:
    """The catalogue entry whose examples fail the same way as `exc`, if any."""
    key = _key(exc)
    return None if key is None else _catalogue_index().get(key)


def _offset(exc: UnexpectedInput, text: str) -> int:
    """Where in `text` the parse failed (the end of the text for end of file)."""
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END":
        return exc.token.start_pos if exc.token.start_pos is not None else len(text)
    if isinstance(exc, UnexpectedCharacters):
        return exc.pos_in_stream or 0
    return len(text)


def _accepted_before(text: str, offset: int) -> set[str] | None:
    """The terminals the parser would really take at `offset`, or None if unknown.

    The contextual lexer reports every terminal of the LALR state, including
    lookaheads that only a reduction would use (`)` or `canary` after a test inside
    a mirror block); replaying the text before `offset` asks the parser itself.
    """
    try:
        interactive = get_parser().parse_interactive(text[:offset])
        interactive.exhaust_lexer()
        accepted: set[str] = interactive.accepts()  # type: ignore[no-untyped-call]
        return accepted
    except (UnexpectedInput, RecursionError):
        return None


def _open_block(text: str, offset: int) -> tuple[str, int] | None:
    """The innermost `{` still open before `offset`: its line's text up to the `{`, its line."""
    opened: list[int] = []
    i = 0
    while i < offset:
        c = text[i]
        if c == "#":
            end = text.find("\n", i)
            i = offset if end < 0 else end
        elif c == '"':
            i += 1
            while i < offset and text[i] not in '"\n':
                i += 2 if text[i] == "\\" else 1
        elif c == "{":
            opened.append(i)
        elif c == "}" and opened:
            opened.pop()
        i += 1
    if not opened:
        return None
    brace = opened[-1]
    line_start = text.rfind("\n", 0, brace) + 1
    return text[line_start : brace + 1].strip(), text.count("\n", 0, brace) + 1


def _unclosed_block_message(exc: UnexpectedInput, expected: set[str], text: str) -> str | None:
    """A block left open, found at the next top-level keyword or the end of the file."""
    if "RBRACE" not in expected:
        return None
    if isinstance(exc, UnexpectedToken) and exc.token.type in _TOP_LEVEL:
        before = f"`{exc.token}` at line {exc.token.line}"
    elif isinstance(exc, UnexpectedEOF) or (
        isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
    ):
        before = "the end of the file"
    else:
        return None
    block = _open_block(text, _offset(exc, text))
    if block is None:
        return None
    opener, line = block
    if isinstance(exc, UnexpectedToken) and exc.token.type != "$END" and exc.token.line == line:
        return None  # `canary a { diff_log ...`: a misplaced statement, not a missing `}`
    return f"`{opener}` opened at line {line} is not closed before {before}: add its `}}`"


def _character_hint(exc: UnexpectedInput, text: str) -> str | None:
    if not isinstance(exc, UnexpectedCharacters):
        return None
    if exc.char == '"':
        return UNCLOSED_STRING_HINT
    following = text[_offset(exc, text) + 1 : _offset(exc, text) + 2]
    if exc.char == "'":
        quoted = re.match(r"'([^'\n\"]*)'", text[_offset(exc, text) :])
        if quoted:
            return f'strings are double-quoted: write "{quoted[1]}", not {quoted[0]}'
    if exc.char == "!" and following in ("=", "~"):
        return None  # an operator where none fits; the expected list says what does
    return CHARACTER_HINTS.get(exc.char)


def _unclosed_string_found(exc: UnexpectedInput, text: str) -> str:
    """The unclosed string as written, up to the end of its line."""
    assert isinstance(exc, UnexpectedCharacters)
    rest = text[_offset(exc, text) :].split("\n", 1)[0].rstrip()
    return rest[:37] + "..." if len(rest) > 40 else rest


def syntax_diagnostic(exc: UnexpectedInput, text: str, filename: str) -> Diagnostic:
    """Translate one lark error (the only place that does)."""
    parser = get_parser()
    if isinstance(exc, UnexpectedToken):
        expected: set[str] = set(exc.accepts or exc.expected)
    elif isinstance(exc, UnexpectedCharacters):
        allowed = set(exc.allowed or ())
        expected = _accepted_before(text, _offset(exc, text)) or allowed
    elif isinstance(exc, UnexpectedEOF):
        expected = set(exc.expected)
    else:
        expected = set()
    span = _span(exc, text, filename)
    unclosed = _unclosed_block_message(exc, expected, text)
    if unclosed is not None:
        return Diagnostic(span=span, severity="error", code=CODE, message=unclosed)
    found, word = _found_text(exc, text)
    character_hint = _character_hint(exc, text)
    if character_hint == UNCLOSED_STRING_HINT:
        found = _unclosed_string_found(exc, text)
    if expected:
        wanted, keywords = _expected_text(expected, parser)
        message = f"expected {wanted}, found {found}"
    else:
        keywords = []
        message = f"unexpected {found}"
    close = difflib.get_close_matches(word, keywords, n=1, cutoff=0.6) if word else []
    if close:
        message += f' (did you mean "{close[0]}"?)'
    # A did-you-mean is the better hint; a character that is never valid beats the
    # parser-state catalogue.
    hint = None if close else character_hint or hint_for(exc)
    if hint in HINT_CODES and expected:
        # `admin 1.2.3.4` lexes as the number "1.2": show the whole word as written.
        span, found = _word_span(span, text)
        message = f"expected {wanted}, found {found}"
    if hint:
        message += f": {hint}"
    code = HINT_CODES.get(hint or "", CODE)
    return Diagnostic(span=span, severity="error", code=code, message=message)


def _word_span(span: Span, text: str) -> tuple[Span, str]:
    """Widen a one-line span to the whitespace-delimited word starting there, and show it."""
    line = text.splitlines()[span.line - 1] if span.line <= len(text.splitlines()) else ""
    word = line[span.column - 1 :].split(maxsplit=1)[0] if line[span.column - 1 :].strip() else ""
    if not word:
        return span, "end of file"
    shown = f'"{word}"' if not word.startswith('"') else word
    return dataclasses.replace(span, end_column=span.column + len(word)), shown
