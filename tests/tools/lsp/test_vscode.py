"""editors/vscode stays in step with the language: the TextMate grammar highlights every
keyword of grammar/mirror.lark, and the manifest wires the language, grammar and server.
(The grammar's scopes themselves are tested by `./dev test` with vscode-tmgrammar-test on
the annotated samples in editors/vscode/tests/.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

from sidecar.dsl import cursor

VSCODE = Path(__file__).resolve().parents[3] / "editors" / "vscode"


def test_the_textmate_grammar_knows_every_keyword() -> None:
    grammar = json.loads((VSCODE / "syntaxes" / "mirror.tmLanguage.json").read_text())
    repo = grammar["repository"]
    highlighted: set[str] = set()
    for key in ("keyword", "word-operator", "constant"):
        alternatives = re.search(r"\(\?:([a-z_|]+)\)", repo[key]["match"])
        assert alternatives is not None, key
        highlighted.update(alternatives.group(1).split("|"))
    words = {text for text in cursor.literals().values() if re.fullmatch(r"[a-z_]+", text)}
    assert not sorted(words - highlighted), (
        "keywords of grammar/mirror.lark the editor does not highlight"
    )
    assert not sorted(highlighted - words), "highlighted words that are not keywords any more"


def test_the_manifest_wires_language_grammar_and_server() -> None:
    manifest = json.loads((VSCODE / "package.json").read_text())
    [language] = manifest["contributes"]["languages"]
    assert language["id"] == "mirror" and language["extensions"] == [".mirror"]
    assert (VSCODE / language["configuration"]).is_file()
    [grammar] = manifest["contributes"]["grammars"]
    tm = json.loads((VSCODE / grammar["path"]).read_text())
    assert grammar["scopeName"] == tm["scopeName"] == "source.mirror"
    settings = manifest["contributes"]["configuration"]["properties"]
    assert settings["sidecar.lsp.command"]["default"] == "sidecar"
    assert settings["sidecar.lsp.args"]["default"] == ["lsp"]
    assert "vscode-languageclient" in manifest["dependencies"]
    config = json.loads((VSCODE / "language-configuration.json").read_text())
    assert config["comments"]["lineComment"] == "#"
    assert ["{", "}"] in config["brackets"] and ["(", ")"] in config["brackets"]
    assert {"open": '"', "close": '"', "notIn": ["string", "comment"]} in config["autoClosingPairs"]
    for sample in (VSCODE / "tests").glob("*.mirror"):
        assert sample.read_text().startswith('# SYNTAX TEST "source.mirror"')
