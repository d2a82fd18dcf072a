"""The hover texts: one for every keyword-led rule of the grammar, and docs/rules.md's
generated "Keyword reference" equal to them."""

from __future__ import annotations

from pathlib import Path

from sidecar.dsl import cursor
from sidecar.tools.lsp import reference

ROOT = Path(__file__).resolve().parents[3]
RULES_MD = ROOT / "docs" / "rules.md"


def test_every_statement_keyword_of_the_grammar_has_a_hover_text() -> None:
    grammar = {(r.rule, r.keyword) for r in cursor.keyword_rules()}
    texts = {(e.rule, e.keyword) for e in reference.ENTRIES}
    missing = sorted(grammar - texts)
    assert not missing, (
        f"grammar rules without a hover text: {missing}; add an Entry to "
        "sidecar/tools/lsp/reference.py, then run "
        "`.venv/bin/python -m sidecar.tools.lsp.reference docs/rules.md`"
    )
    assert not sorted(texts - grammar), "hover texts for rules the grammar no longer has"
    assert len(texts) == len(reference.ENTRIES), "one entry per (rule, keyword)"


def test_operators_are_the_grammars() -> None:
    literals = cursor.literals()
    assert set(reference.OPERATORS) <= set(literals)


def test_docs_keyword_reference_is_generated_from_the_table() -> None:
    text = RULES_MD.read_text(encoding="utf-8")
    assert reference.DOCS_BEGIN in text and reference.DOCS_END in text
    assert reference.rewrite_docs(text) == text, (
        "docs/rules.md's keyword reference is stale: run "
        "`.venv/bin/python -m sidecar.tools.lsp.reference docs/rules.md`"
    )


def test_each_anchor_is_a_heading_of_rules_md() -> None:
    text = RULES_MD.read_text(encoding="utf-8")
    anchors = set()
    for line in text.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            slug = "".join(c for c in title if c.isalnum() or c in " -_").replace(" ", "-")
            anchors.add(slug)
    assert {e.anchor for e in reference.ENTRIES} <= anchors
