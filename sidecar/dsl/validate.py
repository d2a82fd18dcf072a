"""The semantic pass over all files of one configuration, and the Config it yields.

`validate(files)` walks every statement, collects every problem `check` must
report as a Diagnostic, and raises nothing. Only when no error was found does it assemble the `Config`. Names are
global across files. Checks that need the whole configuration (unknown or
unused canaries, unreachable rules, no primary) are skipped when `complete` is
False, i.e. when some file did not parse, so that its missing canaries do not
produce a cascade of false errors. Canary blocks are checked in `canaries.py`;
their `compare` blocks, the baselines and `diff_log` in `compares.py`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Sequence

from sidecar.diagnostics import Diagnostic, Span
from sidecar.dsl import ast, values
from sidecar.dsl.canaries import check_canary
from sidecar.dsl.compares import check_baselines, check_diff_log
from sidecar.dsl.report import Report
from sidecar.dsl.tls import check_listen_tls, check_tls
from sidecar.model import config as cfg
from sidecar.model.endpoint import Endpoint, address_problem

# Every code `check` can give: code -> one-line description (docs are generated from this).
CODES: dict[str, str] = {
    "syntax-error": "the text does not follow the grammar; says what was expected and what was found",
    "no-such-path": "a PATH given on the command line does not exist (usage error, exit 2)",
    "no-rule-files": "a directory given as PATH holds no *.mirror file",
    "unreadable-file": "a rule file cannot be read (permissions, or it is not a regular file)",
    "invalid-utf8": "a rule file is not valid UTF-8",
    "file-too-large": "a rule file is larger than 1 MiB (a 1000-rule configuration is about 100 KB)",
    "internal-error": "a bug in sidecar; the message says where (please report it)",
    "duplicate-statement": "a statement that may appear only once is repeated (listen, admin, primary, workers, when, ...)",
    "duplicate-canary": "two canary blocks have the same name",
    "duplicate-mirror": "two mirror rules have the same name",
    "duplicate-target": "a canary is named twice in one `to`",
    "unknown-canary": "`to` or `baseline` names a canary that no canary block defines",
    "missing-server": "a canary block has no `server`",
    "missing-to": "a mirror rule has no `to`",
    "invalid-address": "a listen/admin address is not host:port or [v6]:port with a valid IP address or host name and a port in 1..65535",
    "unknown-server": "`server` at the top level names neither `hypercorn` nor `uvicorn`",
    "invalid-url": "a primary or server URL is not http(s)://host[:port] without path, query or credentials",
    "invalid-header-name": "a header name is not an RFC 7230 token",
    "invalid-header-value": "a header value contains control characters",
    "hop-by-hop-header": "`set header`, `mark` or `request_id` uses a hop-by-hop header, which the proxy strips",
    "invalid-host": "`host` is not a valid host[:port]",
    "invalid-method": "an HTTP method is not a bare upper-case word",
    "invalid-regex": "a regular expression does not compile",
    "invalid-replacement": "a `rewrite path` replacement refers to a group its pattern does not have",
    "invalid-cidr": "a `client in (...)` entry is not an IP address or CIDR block",
    "invalid-duration": "a duration has an unknown unit or is not greater than zero",
    "invalid-size": "a size has an unknown unit or is not a whole number (or is zero, for `max_body` in `compare`)",
    "invalid-number": "a weight, queue size or rate count is not a whole number in range",
    "invalid-rate": "a `rate` is not a positive count per second (/s) or minute (/m)",
    "workers-out-of-range": "`workers` is not a whole number in 1..1024",
    "sample-out-of-range": "`sample` (in a mirror rule or a `compare` block) is outside (0%, 100%]",
    "empty-compare": "a `compare` block has none of `status`, `header`, `body`: it would compare nothing",
    "invalid-jsonpath": "an `ignore` path is not a valid RFC 9535 JSONPath query",
    "ignore-without-json": "`ignore` in a `compare` block without `body json`",
    "duplicate-entry": "a header name or an ignore path is listed twice in a `compare` block",
    "self-baseline": "a canary names itself as its `baseline`",
    "baseline-chain": "a `baseline` names a canary that has a baseline of its own (baselines do not chain)",
    "invalid-pause": "`pause after N failures` has an N that is not a whole number of at least 1",
    "invalid-tls-file": "a `tls` or `listen` file (ca, cert, key) is missing, unreadable, not PEM of the right kind (certificates for ca and cert, an unencrypted private key for key) or not loadable",
    "tls-key-mismatch": "a `key` does not belong to the `cert` beside it",
    "incomplete-tls": "a `cert` without its `key`, or a `key` without its `cert`",
    "invalid-server-name": "a `server_name` is not a valid DNS name or IP address",
    "invalid-diff-log": "a `diff_log` path is empty, is a directory, or is in a directory that does not exist",
    "unused-canary": "warning: a canary that no mirror rule sends to",
    "unreachable-rule": "warning: earlier rules without `when` at 100% already take all of this rule's canaries",
    "tls-without-https": "warning: a `tls` block in a primary or canary that has no https:// URL",
    "no-primary": "warning: no `primary` in the configuration (`serve` then needs --primary)",
    "baseline-not-sent": "warning: a rule sends to a canary with a `baseline` but not to the baseline, so noise cannot be removed for its requests",
}


def validate(
    files: Sequence[ast.File],
    *,
    sources: Sequence[cfg.SourceFile] = (),
    sha256: str = "",
    complete: bool = True,
) -> tuple[cfg.Config | None, list[Diagnostic]]:
    """Check every file; return (Config or None if any error, every diagnostic, sorted).

    `sha256` is the configuration's content hash (the loader's: over the sources' bytes).
    """
    return _Validator(complete).run(files, sources, sha256)


class _Validator:
    def __init__(self, complete: bool) -> None:
        self.complete = complete
        self.r = Report()
        self.listen: ast.Listen | None = None
        self.listen_tls: cfg.ListenTlsSpec | None = None
        self.admin: ast.Admin | None = None
        self.primary: cfg.PrimarySpec | None = None
        self.primary_node: ast.Primary | None = None
        self.canaries: dict[str, tuple[ast.Canary, cfg.CanarySpec | None]] = {}
        self.rules: dict[str, ast.MirrorRule] = {}
        self.rule_specs: list[cfg.RuleSpec] = []
        self.excludes: list[cfg.ExcludeSpec] = []
        self.diff_log: ast.DiffLog | None = None
        self.diff_log_path: str | None = None
        self.request_id: ast.RequestId | None = None
        self.server: ast.HostServer | None = None

    def run(
        self, files: Sequence[ast.File], sources: Sequence[cfg.SourceFile], sha256: str
    ) -> tuple[cfg.Config | None, list[Diagnostic]]:
        for file in files:
            for stmt in file.statements:
                self._top(stmt)
        if self.complete:
            self._whole(files)
        if self.r.has_errors():
            return None, self.r.sorted()
        specs = tuple(spec for _, spec in self.canaries.values() if spec is not None)
        config = cfg.Config(
            listen=self.listen.address_raw if self.listen else cfg.DEFAULT_LISTEN,
            listen_tls=self.listen_tls,
            admin=self.admin.address_raw if self.admin else cfg.DEFAULT_ADMIN,
            primary=self.primary,
            canaries=specs,
            rules=tuple(self.rule_specs),
            excludes=tuple(self.excludes),
            sources=tuple(sources),
            sha256=sha256,
            diff_log=self.diff_log_path,
            request_id=self.request_id.header.value.lower() if self.request_id else None,
            server=self.server.name.value if self.server else cfg.DEFAULT_SERVER,
        )
        return config, self.r.sorted()

    # --- top level ---------------------------------------------------------------

    def _top(self, stmt: ast.TopLevel) -> None:
        r = self.r
        if isinstance(stmt, ast.Listen):
            if r.once("listen", stmt.span, (self.listen.span if self.listen else None)):
                self.listen = stmt
            problem = address_problem(stmt.address_raw)
            where = stmt.address_span or _value_span(stmt.span, stmt.address_raw)
            r.check("invalid-address", where, problem)
            if stmt.braces:
                tls = check_listen_tls(stmt, r)
                if self.listen is stmt:
                    self.listen_tls = tls
        elif isinstance(stmt, ast.Admin):
            if r.once("admin", stmt.span, (self.admin.span if self.admin else None)):
                self.admin = stmt
            if stmt.address_raw is not None:
                problem = address_problem(stmt.address_raw)
                r.check("invalid-address", _value_span(stmt.span, stmt.address_raw), problem)
        elif isinstance(stmt, ast.Primary):
            self._primary(stmt)
        elif isinstance(stmt, ast.Canary):
            first = self.canaries.get(stmt.name.value)
            spec = check_canary(stmt, r)
            if first is not None:
                r.error(
                    "duplicate-canary",
                    stmt.name.span,
                    f'canary "{stmt.name.value}" is already defined at {first[0].span.where}',
                )
            else:
                self.canaries[stmt.name.value] = (stmt, spec)
        elif isinstance(stmt, ast.MirrorRule):
            self._rule(stmt)
        elif isinstance(stmt, ast.DiffLog):
            if r.once("diff_log", stmt.span, (self.diff_log.span if self.diff_log else None)):
                self.diff_log = stmt
                self.diff_log_path = check_diff_log(stmt, r)
        elif isinstance(stmt, ast.RequestId):
            self._request_id(stmt)
        elif isinstance(stmt, ast.HostServer):
            name = stmt.name
            known = name.value in cfg.SERVERS
            problem = (
                None
                if known
                else f"unknown server {name.value!r}: expected " + " or ".join(cfg.SERVERS)
            )
            ok = r.check("unknown-server", name.span, problem)
            if r.once("server", stmt.span, (self.server.span if self.server else None)) and ok:
                self.server = stmt
        else:
            self._expr(stmt.expr)
            self.excludes.append(cfg.ExcludeSpec(when=_normalise(stmt.expr), span=stmt.span))

    def _request_id(self, stmt: ast.RequestId) -> None:
        r = self.r
        first = self.request_id
        name = stmt.header
        ok = r.check("invalid-header-name", name.span, values.header_name_problem(name.value))
        if ok and values.is_hop_by_hop(name.value):
            r.error(
                "hop-by-hop-header",
                name.span,
                f'"{name.value}" is a hop-by-hop header: the proxy strips it, so it cannot carry a request id',
            )
        if r.once("request_id", stmt.span, (first.span if first else None)):
            self.request_id = stmt  # a bad name is an error: no Config is built then

    def _primary(self, node: ast.Primary) -> None:
        r = self.r
        first = self.primary_node
        if not r.once("primary", node.span, (first.span if first else None)):
            return
        self.primary_node = node
        url_ok = r.check("invalid-url", node.url_span, values.url_problem(node.url))
        timeout_s = cfg.DEFAULT_PRIMARY_TIMEOUT_S
        idle_s = cfg.DEFAULT_PRIMARY_IDLE_TIMEOUT_S
        seen: Span | None = None
        seen_idle: Span | None = None
        seen_tls: Span | None = None
        tls: cfg.TlsSpec | None = None
        tls_ok = True
        for st in node.statements:
            if isinstance(st, ast.Tls):
                if r.once("tls", st.span, seen_tls):
                    seen_tls = st.span
                    tls = check_tls(st, [node.url], r)
                    tls_ok = tls is not None
            elif isinstance(st, ast.PrimaryIdleTimeout):
                if r.once("idle_timeout", st.span, seen_idle):
                    seen_idle = st.span
                    idle_s = r.duration(st.duration) or idle_s
            elif r.once("timeout", st.span, seen):
                seen = st.span
                timeout_s = r.duration(st.duration) or timeout_s
        if url_ok and tls_ok:
            self.primary = cfg.PrimarySpec(
                endpoint=Endpoint.parse(node.url),
                timeout_s=timeout_s,
                idle_timeout_s=idle_s,
                tls=tls,
            )

    # --- mirror rules ----------------------------------------------------------------

    def _rule(self, node: ast.MirrorRule) -> None:
        r = self.r
        name = node.name.value
        if name in self.rules:
            r.error(
                "duplicate-mirror",
                node.name.span,
                f'mirror rule "{name}" is already defined at {self.rules[name].span.where}',
            )
        else:
            self.rules[name] = node
        when: ast.When | None = None
        sample: ast.Sample | None = None
        to: ast.To | None = None
        for st in node.statements:
            if isinstance(st, ast.When):
                if r.once("when", st.span, (when.span if when else None)):
                    when = st
                self._expr(st.expr)
            elif isinstance(st, ast.Sample):
                if r.once("sample", st.span, (sample.span if sample else None)):
                    sample = st
                self._sample(st)
            elif r.once("to", st.span, (to.span if to else None)):
                to = st
        if to is None:
            r.error(
                "missing-to",
                node.name.span,
                f'mirror rule "{name}" has no `to`: name the canaries it sends to',
            )
            return
        seen: set[str] = set()
        for target in to.canaries:
            if target.value in seen:
                r.error(
                    "duplicate-target",
                    target.span,
                    f'canary "{target.value}" is already named in this `to`',
                )
            seen.add(target.value)
        spec_sample = None
        if sample is not None and sample.rate.value is not None:
            key = sample.key.value.lower() if sample.key and sample.by == "header" else None
            key = key if key is not None else (sample.key.value if sample.key else None)
            spec_sample = cfg.SampleSpec(rate=sample.rate.value, by=sample.by, key=key)
        self.rule_specs.append(
            cfg.RuleSpec(
                name=name,
                when=_normalise(when.expr) if when else None,
                sample=spec_sample,
                to=tuple(dict.fromkeys(t.value for t in to.canaries)),
                span=node.span,
            )
        )

    def _sample(self, st: ast.Sample) -> None:
        rate = st.rate.value
        if rate is None or not 0.0 < rate <= 1.0:
            hint = ""
            if rate is not None and 1.0 < rate <= 100.0 and "%" not in st.rate.raw:
                hint = f" (did you mean {st.rate.raw}%?)"
            self.r.error(
                "sample-out-of-range",
                st.rate.span,
                f"sample {st.rate.raw} is outside (0%, 100%]{hint}; to stop mirroring, remove the rule",
            )
        if st.by == "header" and st.key is not None:
            self.r.check(
                "invalid-header-name", st.key.span, values.header_name_problem(st.key.value)
            )

    def _expr(self, expr: ast.Expr) -> None:
        stack: list[ast.Expr] = [expr]
        while stack:  # iterative: nesting depth is the user's, not ours
            e = stack.pop()
            if isinstance(e, ast.Not):
                stack.append(e.operand)
            elif isinstance(e, ast.Group):
                stack.append(e.inner)
            elif isinstance(e, ast.And | ast.Or):
                stack.extend(e.operands)
            else:
                self._test(e)

    def _test(self, t: ast.Test) -> None:
        r = self.r
        if t.subject == "header" and t.key is not None:
            r.check("invalid-header-name", t.key.span, values.header_name_problem(t.key.value))
        for arg in t.args:
            if t.subject == "method":
                r.check("invalid-method", arg.span, values.method_problem(arg.value))
            elif t.subject == "client":
                r.check("invalid-cidr", arg.span, values.cidr_problem(arg.value))
            elif t.op in ("~", "!~"):
                r.check("invalid-regex", arg.span, values.regex_problem(arg.value))

    # --- checks over the whole configuration ------------------------------------

    def _whole(self, files: Sequence[ast.File]) -> None:
        r = self.r
        names = list(self.canaries)
        used: set[str] = set()
        taken: dict[str, ast.MirrorRule] = {}  # canary -> the catch-all rule that takes it
        for node in self.rules.values():
            to = next((s for s in node.statements if isinstance(s, ast.To)), None)
            if to is None:
                continue
            for target in to.canaries:
                used.add(target.value)
                if target.value not in self.canaries:
                    close = did_you_mean(target.value, names)
                    hint = f' (did you mean "{close}"?)' if close else ""
                    r.error("unknown-canary", target.span, f'unknown canary "{target.value}"{hint}')
            known = [t.value for t in to.canaries if t.value in self.canaries]
            if known and all(k in taken for k in known):
                by = ", ".join(
                    sorted({f'"{taken[k].name.value}" at {taken[k].span.where}' for k in known})
                )
                r.warning(
                    "unreachable-rule",
                    node.name.span,
                    f'mirror rule "{node.name.value}" never sends anything: earlier rules without `when` at 100% already take all its canaries ({by})',
                )
            if _takes_everything(node):
                for k in known:
                    taken.setdefault(k, node)
        nodes = {name: canary for name, (canary, _) in self.canaries.items()}
        check_baselines(nodes, list(self.rules.values()), r, did_you_mean)
        for name, (canary, _) in self.canaries.items():
            if name not in used:
                r.warning(
                    "unused-canary",
                    canary.name.span,
                    f'canary "{name}" is not used by any mirror rule',
                )
        if self.primary_node is None and files:
            span = Span(file=files[0].path, line=1, column=1, end_line=1, end_column=1)
            r.warning(
                "no-primary",
                span,
                "no `primary` in the configuration: `sidecar serve` will need --primary URL",
            )


def _takes_everything(node: ast.MirrorRule) -> bool:
    """A rule without `when` whose sampling is absent or 100% takes every request."""
    for st in node.statements:
        if isinstance(st, ast.When):
            return False
        if isinstance(st, ast.Sample) and (st.rate.value is None or st.rate.value < 1.0):
            return False
    return True


def _normalise(expr: ast.Expr) -> ast.Expr:
    """Header names and hosts are case-insensitive: lower-case them once, here."""
    if isinstance(expr, ast.Test):
        if expr.subject == "header" and expr.key is not None:
            key = dataclasses.replace(expr.key, value=expr.key.value.lower())
            return dataclasses.replace(expr, key=key)
        if expr.subject == "host":
            args = tuple(dataclasses.replace(a, value=a.value.lower()) for a in expr.args)
            return dataclasses.replace(expr, args=args)
        return expr
    # A node whose children did not change is returned as it is: `dataclasses.replace` is
    # most of a 1,000-rule validation otherwise (`sidecar lsp` validates after each keystroke).
    if isinstance(expr, ast.Not):
        operand = _normalise(expr.operand)
        return expr if operand is expr.operand else dataclasses.replace(expr, operand=operand)
    if isinstance(expr, ast.Group):
        inner = _normalise(expr.inner)
        return expr if inner is expr.inner else dataclasses.replace(expr, inner=inner)
    operands = tuple(_normalise(o) for o in expr.operands)
    if all(new is old for new, old in zip(operands, expr.operands, strict=True)):
        return expr
    return dataclasses.replace(expr, operands=operands)


def _value_span(statement: Span, raw: str) -> Span:
    """The span of a statement's last token, `raw` (one token, so on the statement's last line)."""
    column = max(1, statement.end_column - len(raw))
    return dataclasses.replace(statement, line=statement.end_line, column=column)


def did_you_mean(word: str, names: Sequence[str]) -> str | None:
    """The known name `word` most likely misspells: one differing only in case first
    (names are case-sensitive, so `a` for `A` is the likeliest slip), else the closest."""
    folded = word.casefold()
    same = [n for n in names if n.casefold() == folded]
    if same:
        return same[0]
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.5)
    return close[0] if close else None
