"""The one build step setuptools does not do by itself: grammar/ into the wheel.

The grammar lives at the top of the checkout (grammar/mirror.lark) and the wheel carries
a copy as sidecar/grammar/mirror.lark, which sidecar/dsl/grammar.py reads when there is
no checkout. Mapping grammar/ into the package with `package-dir` did the same but made
the layout "not simple" for setuptools: editable installs then used an import hook
appended after Python's own finders, so a folder named `sidecar` in the working directory
won as a namespace package (`cannot import name 'Mirror' from 'sidecar'`) and every
install warned about it. Copying at build time keeps the layout simple (an editable
install is then a plain path entry) and the grammar in one place.
"""

from __future__ import annotations

from pathlib import Path

from setuptools.command.build_py import build_py  # type: ignore[import-untyped]

GRAMMAR_DIR = Path(__file__).resolve().parent / "grammar"
PACKAGE_GRAMMAR = ("sidecar", "grammar")


class BuildPy(build_py):  # type: ignore[misc]
    """build_py, plus grammar/*.lark copied to sidecar/grammar/ in the build tree."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return  # an editable install reads grammar/ from the checkout itself
        target = Path(self.build_lib, *PACKAGE_GRAMMAR)
        self.mkpath(str(target))
        for source in sorted(GRAMMAR_DIR.glob("*.lark")):
            self.copy_file(str(source), str(target / source.name))
