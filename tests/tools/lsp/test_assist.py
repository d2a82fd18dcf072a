"""Completion and hover through a real client: each context the grammar has."""

from __future__ import annotations

from pathlib import Path

from lsprotocol import types
from pytest_lsp import LanguageClient

from tests.tools.lsp.conftest import at, doc_id, open_doc, write_rules


async def labels(
    client: LanguageClient, uri: str, position: types.Position, *, space: bool = False
) -> list[str]:
    context = types.CompletionContext(
        trigger_kind=types.CompletionTriggerKind.TriggerCharacter, trigger_character=" "
    )
    result = await client.text_document_completion_async(
        types.CompletionParams(
            text_document=doc_id(uri), position=position, context=context if space else None
        )
    )
    assert isinstance(result, types.CompletionList)
    return [item.label for item in result.items]


EDITED = """\
primary http://127.0.0.1:8081 {
    ti
}

canary v4 {
    server http://127.0.0.1:9004
    timeout 25
    max_body 2
    rate 50
    compare {
        sample 5
        baseline·
    }
}

mirror api2 {
    when path ^= "/a" and header "X"·
    sample 10
    to v2,·
}

mirror m3 {
    when method in (GET,·
    to v2  # to·
}

exclude when·
""".replace("·", " ")  # · marks a trailing space


async def test_completion_in_each_context(client: LanguageClient, tmp_path: Path) -> None:
    write_rules(tmp_path)
    path = tmp_path / "30-edit.mirror"
    uri = open_doc(client, path, text=EDITED)
    top = await labels(client, uri, at(EDITED, "canary v4"))
    assert {"listen", "admin", "primary", "canary", "mirror", "exclude", "diff_log"} <= set(top)
    assert "server" in top  # `server uvicorn`; a canary's `server URL` is another rule
    assert "workers" not in top and "weight" not in top
    # A primary block takes its two clocks and a tls block; the word typed is replaced.
    assert sorted(await labels(client, uri, at(EDITED, "ti", 2))) == [
        "idle_timeout",
        "timeout",
        "tls",
    ]
    in_canary = await labels(client, uri, at(EDITED, "    timeout 25"))
    assert {"server", "workers", "queue", "timeout", "compare", "pause", "rate"} <= set(in_canary)
    assert "listen" not in in_canary and "status" not in in_canary
    in_compare = await labels(client, uri, at(EDITED, "        sample 5"))
    assert {"status", "header", "body", "ignore", "baseline", "sample"} <= set(in_compare)
    # Units after a number, for the value the statement takes.
    assert await labels(client, uri, at(EDITED, "timeout 25", 10)) == [
        "25ms", "25s", "25m", "25h"
    ]  # fmt: skip
    assert "2MiB" in await labels(client, uri, at(EDITED, "max_body 2", 10))
    assert await labels(client, uri, at(EDITED, "rate 50", 7)) == ["50/s", "50/m"]
    assert "5%" in await labels(client, uri, at(EDITED, "sample 5", 8))
    assert "10%" in await labels(client, uri, at(EDITED, "sample 10", 9))
    # Canary names after `to` (those already listed left out) and `baseline`.
    to = await labels(client, uri, at(EDITED, "to v2, ", 7))
    assert to == ["v3", "v4"]
    assert await labels(client, uri, at(EDITED, "baseline ", 9)) == ["v2", "v3", "v4"]
    # Subjects after `when`, tests after a subject.
    subjects = await labels(client, uri, at(EDITED, "exclude when ", 13))
    assert {"method", "path", "host", "header", "query", "cookie", "client", "not"} <= set(subjects)
    tests = await labels(client, uri, at(EDITED, 'header "X" ', 11))
    assert {"==", "!=", "^=", "$=", "*=", "~", "!~", "in", "exists"} <= set(tests)
    after_path = await labels(client, uri, at(EDITED, '^= "/a"'))
    assert "^=" in after_path and "exists" not in after_path
    assert "POST" in await labels(client, uri, at(EDITED, "(GET, ", 6))
    assert "GET" not in await labels(client, uri, at(EDITED, "(GET, ", 6))
    # Typing a space asks too: then what continues a statement, not what begins one.
    assert await labels(client, uri, at(EDITED, "to v2, ", 7), space=True) == ["v3", "v4"]
    assert "path" in await labels(client, uri, at(EDITED, "exclude when ", 13), space=True)
    assert "^=" in await labels(client, uri, at(EDITED, '^= "/a"'), space=True)
    after_server = await labels(client, uri, at(EDITED, "http://127.0.0.1:9004", 22), space=True)
    assert after_server == ["weight"]
    assert "by" in await labels(client, uri, at(EDITED, "sample 10", 10), space=True)
    # Nothing in a comment.
    assert await labels(client, uri, at(EDITED, "# to ", 5)) == []


async def test_completion_after_an_error_earlier_in_the_file(
    client: LanguageClient, tmp_path: Path
) -> None:
    text = "canary a {\n    workers eight\n}\n\ncanary b {\n    \n}\n"
    uri = open_doc(client, tmp_path / "a.mirror", text=text)
    got = await labels(client, uri, at(text, "canary b {\n    ", 15))
    assert "server" in got and "listen" not in got


async def hover_text(client: LanguageClient, uri: str, position: types.Position) -> str | None:
    result = await client.text_document_hover_async(
        types.HoverParams(text_document=doc_id(uri), position=position)
    )
    if result is None:
        return None
    assert isinstance(result.contents, types.MarkupContent)
    return result.contents.value


async def test_hover(client: LanguageClient, tmp_path: Path) -> None:
    _server, canaries, rules = write_rules(tmp_path)
    text = "primary http://127.0.0.1:8081 {\n    timeout 30s\n}\n" + canaries.read_text()
    canaries_uri = open_doc(client, canaries, text=text)
    primary_timeout = await hover_text(client, canaries_uri, at(text, "timeout 30s", 2))
    canary_timeout = await hover_text(client, canaries_uri, at(text, "timeout 2s", 2))
    assert primary_timeout is not None and "response head" in primary_timeout
    assert canary_timeout is not None and "queue wait plus round trip" in canary_timeout
    assert "*In: canary.*" in canary_timeout
    rules_text = rules.read_text()
    rules_uri = open_doc(client, rules)
    path_hover = await hover_text(client, rules_uri, at(rules_text, "path"))
    assert path_hover is not None and "without the query" in path_hover
    # A canary name shows its block, wherever it is defined.
    v3 = await hover_text(client, rules_uri, at(rules_text, "v3"))
    assert v3 is not None
    assert "canary v3 {\n    server http://127.0.0.1:9003\n}" in v3 and "10-canaries.mirror:" in v3
    assert await hover_text(client, rules_uri, at(rules_text, '"/api/"', 2)) is None  # a string
    assert await hover_text(client, rules_uri, at(rules_text, "^=", 1)) == "`^=`: starts with"
