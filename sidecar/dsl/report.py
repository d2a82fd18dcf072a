"""The diagnostic collector shared by the validation passes."""

from __future__ import annotations

from sidecar.diagnostics import Diagnostic, Severity, Span, sort
from sidecar.dsl import ast, units


class Report:
    """Collects diagnostics; the helpers return whether the checked thing is fine."""

    def __init__(self) -> None:
        self.diagnostics: list[Diagnostic] = []

    def add(self, severity: Severity, code: str, span: Span, message: str) -> None:
        self.diagnostics.append(
            Diagnostic(span=span, severity=severity, code=code, message=message)
        )

    def error(self, code: str, span: Span, message: str) -> None:
        self.add("error", code, span, message)

    def warning(self, code: str, span: Span, message: str) -> None:
        self.add("warning", code, span, message)

    def check(self, code: str, span: Span, problem: str | None) -> bool:
        """Report `problem` (from a `values.*_problem` function) if there is one."""
        if problem is None:
            return True
        self.error(code, span, problem)
        return False

    def once(self, keyword: str, span: Span, first: Span | None) -> bool:
        """True for the first occurrence of a statement allowed once; reports repeats."""
        if first is None:
            return True
        self.error(
            "duplicate-statement",
            span,
            f"`{keyword}` may appear only once (already given at {first.where})",
        )
        return False

    def duration(self, d: ast.Duration) -> float | None:
        """Seconds, if `d` is a valid positive duration; reports it otherwise."""
        if d.seconds is None:
            self.error("invalid-duration", d.span, units.duration_problem(d.raw))
            return None
        if d.seconds <= 0:
            self.error("invalid-duration", d.span, f'duration "{d.raw}" must be greater than zero')
            return None
        return d.seconds

    def whole(self, code: str, n: ast.Number, what: str, low: int, high: int) -> int | None:
        """`n` as an int in low..high; reports it (with `code`) otherwise."""
        v = n.value
        if v is None or v != int(v) or not low <= v <= high:
            self.error(code, n.span, f"{what} must be a whole number in {low}..{high}, not {n.raw}")
            return None
        return int(v)

    def has_errors(self) -> bool:
        return any(d.severity == "error" for d in self.diagnostics)

    def sorted(self) -> list[Diagnostic]:
        return sort(self.diagnostics)
