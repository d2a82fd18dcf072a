"""Validation of one `canary` block into a `CanarySpec` (None when it has errors)."""

from __future__ import annotations

from sidecar.diagnostics import Span
from sidecar.dsl import ast, values
from sidecar.dsl.compares import check_compare
from sidecar.dsl.report import Report
from sidecar.dsl.tls import check_tls
from sidecar.model import config as cfg
from sidecar.model.endpoint import Endpoint

MAX_WEIGHT = 1000  # smooth weighted round-robin; beyond this a ratio is better written smaller
# A queue slot holds a request copy (up to max_body); a million is already far past sane.
MAX_QUEUE = 1_000_000
_SINGLE = {
    ast.Workers: "workers",
    ast.Queue: "queue",
    ast.Timeout: "timeout",
    ast.MaxBody: "max_body",
    ast.Body: "body",
    ast.Mark: "mark",
    ast.RateLimit: "rate",
    ast.Host: "host",
    ast.Compare: "compare",
    ast.Pause: "pause",
    ast.Tls: "tls",
}
# Consecutive failures before a pause: past a million the statement means nothing.
MAX_PAUSE_FAILURES = 1_000_000


def check_canary(node: ast.Canary, r: Report) -> cfg.CanarySpec | None:
    """Report every problem of the block; build its spec only if there were none."""
    before = len([d for d in r.diagnostics if d.severity == "error"])
    seen: dict[str, Span] = {}
    servers: list[cfg.ServerSpec] = []
    transforms: list[cfg.Transform] = []
    fields: dict[str, object] = {}
    for st in node.statements:
        keyword = _SINGLE.get(type(st))
        if keyword is not None:
            if not r.once(keyword, st.span, seen.get(keyword)):
                continue
            seen[keyword] = st.span
        if isinstance(st, ast.Server):
            ok = r.check("invalid-url", st.url_span, values.url_problem(st.url))
            weight = 1
            if st.weight is not None:
                weight = r.whole("invalid-number", st.weight, "weight", 1, MAX_WEIGHT) or 1
            if ok:
                servers.append(cfg.ServerSpec(endpoint=Endpoint.parse(st.url), weight=weight))
        elif isinstance(st, ast.Workers):
            w = r.whole("workers-out-of-range", st.count, "workers", 1, cfg.MAX_WORKERS)
            fields["workers"] = w
        elif isinstance(st, ast.Queue):
            fields["queue"] = r.whole("invalid-number", st.size, "queue", 0, MAX_QUEUE)
        elif isinstance(st, ast.Timeout):
            fields["timeout_s"] = r.duration(st.duration)
        elif isinstance(st, ast.MaxBody):
            size = st.size
            if size.bytes is None:
                from sidecar.dsl.units import size_problem

                r.error("invalid-size", size.span, size_problem(size.raw))
            fields["max_body_bytes"] = size.bytes
        elif isinstance(st, ast.Body):
            fields["body"] = st.on
        elif isinstance(st, ast.Mark):
            fields["mark"] = _mark(st, r)
        elif isinstance(st, ast.RateLimit):
            fields["rate"] = _rate(st, r)
        elif isinstance(st, ast.Host):
            if st.value is not None:
                r.check("invalid-host", st.value.span, values.host_header_problem(st.value.value))
            fields["host"] = st.value.value if st.value is not None else None
        elif isinstance(st, ast.SetHeader):
            name = st.name
            problem = values.header_name_problem(name.value)
            if r.check("invalid-header-name", name.span, problem) and values.is_hop_by_hop(
                name.value
            ):
                r.error(
                    "hop-by-hop-header",
                    name.span,
                    f'"{name.value}" is a hop-by-hop header: the proxy strips it, so it cannot be set',
                )
            r.check(
                "invalid-header-value", st.value.span, values.header_value_problem(st.value.value)
            )
            transforms.append(cfg.SetHeader(name=name.value, value=st.value.value))
        elif isinstance(st, ast.DropHeader):
            for n in st.names:
                r.check("invalid-header-name", n.span, values.header_name_problem(n.value))
            transforms.append(cfg.DropHeader(names=tuple(n.value for n in st.names)))
        elif isinstance(st, ast.Compare):
            fields["compare"] = check_compare(node.name, st, r)
        elif isinstance(st, ast.Pause):
            fields["pause"] = _pause(st, r)
        elif isinstance(st, ast.Tls):
            urls = [s.url for s in node.statements if isinstance(s, ast.Server)]
            fields["tls"] = check_tls(st, urls, r)
        else:
            r.check("invalid-regex", st.pattern.span, values.regex_problem(st.pattern.value))
            problem = values.replacement_problem(st.pattern.value, st.replacement.value)
            r.check("invalid-replacement", st.replacement.span, problem)
            transforms.append(
                cfg.RewritePath(pattern=st.pattern.value, replacement=st.replacement.value)
            )
    if not any(isinstance(st, ast.Server) for st in node.statements):
        r.error("missing-server", node.name.span, f'canary "{node.name.value}" has no `server`')
    if len([d for d in r.diagnostics if d.severity == "error"]) > before:
        return None
    return cfg.CanarySpec(
        name=node.name.value,
        servers=tuple(servers),
        transforms=tuple(transforms),
        **fields,  # type: ignore[arg-type]
    )


def _mark(st: ast.Mark, r: Report) -> tuple[str, str] | None:
    if st.header is None or st.value is None:
        return None
    name = st.header
    if r.check(
        "invalid-header-name", name.span, values.header_name_problem(name.value)
    ) and values.is_hop_by_hop(name.value):
        r.error(
            "hop-by-hop-header",
            name.span,
            f'"{name.value}" is a hop-by-hop header: the proxy strips it, so it cannot mark requests',
        )
    r.check("invalid-header-value", st.value.span, values.header_value_problem(st.value.value))
    return (name.value, st.value.value)


def _pause(st: ast.Pause, r: Report) -> cfg.PauseSpec | None:
    n = st.failures.value
    ok = True
    if n is None or n != int(n) or not 1 <= n <= MAX_PAUSE_FAILURES:
        r.error(
            "invalid-pause",
            st.failures.span,
            f"`pause after` needs a whole number of failures in 1..{MAX_PAUSE_FAILURES}, not {st.failures.raw}",
        )
        ok = False
    seconds = r.duration(st.duration)
    if not ok or seconds is None or n is None:
        return None
    return cfg.PauseSpec(failures=int(n), duration_s=seconds)


def _rate(st: ast.RateLimit, r: Report) -> cfg.RateSpec | None:
    n = st.count.value
    if n is None:
        r.error(
            "invalid-rate",
            st.count.span,
            f'"{st.raw}" is not a rate: write a count per second or minute, such as 200/s or 50/m',
        )
        return None
    if n <= 0:
        r.error(
            "invalid-rate",
            st.count.span,
            f'rate "{st.raw}" must be greater than zero; to stop mirroring, remove the rules',
        )
        return None
    per_second = n if st.per == "s" else n / 60.0
    return cfg.RateSpec(burst=n, per_second=per_second)
