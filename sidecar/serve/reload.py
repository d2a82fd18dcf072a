"""Reloading the rules of a running `serve` without a restart.

How this works
--------------
Three triggers end in `Reloader.reload(trigger)`: SIGHUP, `POST /-/reload` on the admin
listener, and, with `--watch`, `Reloader.watch()` seeing a rule file change. One
`asyncio.Lock` serialises them, so two reloads never interleave; each one runs start to end:

1. Load, validate and compile the whole configuration again, off the event loop (a worker
   thread: `sidecar.dsl.load` and `compile_table` are pure, and a large configuration
   must not stall the requests being proxied meanwhile). The start-up flags are applied
   again (`--primary/--listen/--admin` still win over the files).
2. Any error (a diagnostic of error severity, a usage error such as a vanished path, no
   primary, an internal error): the running snapshot is not touched. Every diagnostic is
   logged exactly as `sidecar check` prints it (the rendered block and the summary line, in
   one log record), the result carries the same text (`POST /-/reload` answers it with
   400), and `sidecar_rules_reloads_total{result="error"}` rises.
3. Success: `listen` and `admin` need a restart, so a change of either is a warning and the
   running addresses are kept. The new snapshot is published by `Runtime.swap`, one
   synchronous store (sidecar/serve/runtime.py: unchanged canaries keep their pools, retired
   pools drain after the older requests end). `sidecar_rules_info`, `/rules` and the last
   success timestamp follow at once, `sidecar_rules_reloads_total{result="ok"}` rises,
   and one line says what changed (canaries added, changed, removed, kept).

`watch()` polls with `os.stat` (no dependency, no inotify limits, works on network and
container-mounted files): every WATCH_POLL_S it fingerprints the configuration's files
(the paths expanded as the loader does, so a new `*.mirror` file in a directory counts,
and each file's mtime, size and inode, so in-place writes and atomic renames both show).
A changed fingerprint is reloaded once it has held still for WATCH_SETTLE_S, so a
half-written file (an empty file is a valid configuration!) is not swapped in.

`--workers N`: every process runs its own `Reloader`; see sidecar/serve/supervisor.py for how one
trigger reaches all of them.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from sidecar.dsl.loader import expand, load
from sidecar.model.config import Config
from sidecar.routing.table import RoutingTable, compile_table
from sidecar.serve import metrics as serve_metrics
from sidecar.serve.runtime import Runtime

log = logging.getLogger("sidecar.reload")

# A check at least once a second; twice a second halves the delay for the
# price of a few stat() calls (one per rule file) per poll.
WATCH_POLL_S = 0.5
# A change must hold still this long before it is loaded: editors and `cp` write a file in
# more than one system call, and a truncated file may well be a valid (empty) configuration.
WATCH_SETTLE_S = 0.1

Fingerprint = tuple[object, ...]


@dataclass(frozen=True, slots=True, kw_only=True)
class ReloadResult:
    """What one reload did. `report`: the diagnostics as `check` prints them (empty when
    there were none) or the reason it failed; `summary`: one line for the operator."""

    ok: bool
    summary: str
    report: str = ""

    def text(self) -> str:
        """The body of the `POST /-/reload` answer."""
        return f"{self.report}\n{self.summary}\n" if self.report else f"{self.summary}\n"


@dataclass(frozen=True, slots=True, kw_only=True)
class _Loaded:
    """The outcome of step 1 (runs in a worker thread)."""

    config: Config | None
    table: RoutingTable | None
    report: str  # rendered diagnostics + summary, as `check` prints them ("" when none)
    error: str | None  # why there is no config, when it is not in `report`
    files: int
    kept_addresses: tuple[str, ...] = ()  # listen/admin changes ignored until a restart
    declared: Addresses | None = None  # listen/admin as the files say (before the flags)


# (listen, admin) as written in the rule files, before `--listen/--admin` override them.
Addresses = tuple[str, str | None]


class Reloader:
    """Serialised reloads of one process's `Runtime` (see the module docstring).

    `prepare` applies the start-up flags to a freshly loaded config (and may raise an
    exception whose message is the reason, e.g. no primary). `after` runs after every
    reload with its trigger (the server uses it to pass an admin-triggered reload on to
    the other processes of `--workers N`).
    """

    def __init__(
        self,
        runtime: Runtime,
        paths: Sequence[str],
        *,
        prepare: Callable[[Config], Config],
        after: Callable[[str, ReloadResult], None] | None = None,
        declared: Addresses | None = None,
    ) -> None:
        """`declared`: the files' listen/admin at start-up, when flags override them, so
        that a later edit of them is still reported (it needs a restart either way)."""
        self.runtime = runtime
        self._declared = declared
        self.paths = tuple(paths)
        self._prepare = prepare
        self._after = after
        self._lock = asyncio.Lock()
        self._fingerprint: Fingerprint | None = None

    async def reload(self, trigger: str) -> ReloadResult:
        """Load, validate, compile and swap (or keep the old table); never raises."""

        async with self._lock:
            self._fingerprint = fingerprint(self.paths)
            running = self.runtime.config
            try:
                loaded = await asyncio.to_thread(
                    _load, self.paths, self._prepare, running, self._declared
                )
            except Exception as exc:  # _load reports problems; this is a bug, said once
                log.exception("reload (%s): internal error", trigger)
                loaded = _Loaded(
                    config=None,
                    table=None,
                    report="",
                    error=f"internal error: {type(exc).__name__}: {exc}",
                    files=0,
                )
            if loaded.config is None or loaded.table is None:
                result = self._failed(trigger, running, loaded)
                serve_metrics.record_reload(False)
            else:
                result = self._swap(trigger, running, loaded)
                self._declared = loaded.declared
                serve_metrics.record_reload(True)
        if self._after is not None:
            try:
                self._after(trigger, result)
            except Exception:
                log.exception("reload (%s): passing it on failed", trigger)
        return result

    async def watch(self, poll_s: float = WATCH_POLL_S, settle_s: float = WATCH_SETTLE_S) -> None:
        """Reload whenever the configuration's files change (runs until cancelled)."""
        if self._fingerprint is None:
            self._fingerprint = fingerprint(self.paths)
            if sources_changed(self.runtime.config, self.paths):
                # Edited between the start-up load and this first look: not lost.
                await self.reload("watch")
        while True:
            await asyncio.sleep(poll_s)
            seen = fingerprint(self.paths)
            if seen == self._fingerprint:
                continue
            await asyncio.sleep(settle_s)
            if fingerprint(self.paths) != seen:
                continue  # still being written: the next poll looks again
            if seen == self._fingerprint:
                continue  # another trigger reloaded it meanwhile
            await self.reload("watch")

    # --- internals ----------------------------------------------------------------------

    def _failed(self, trigger: str, running: Config, loaded: _Loaded) -> ReloadResult:
        summary = (
            f"reload ({trigger}) failed: still serving the previous rules "
            f"(sha256 {running.sha256[:12]})"
        )
        report = "\n".join(p for p in (loaded.report, loaded.error or "") if p)
        log.error("%s:\n%s", summary, report)
        return ReloadResult(ok=False, summary=summary, report=report)

    def _swap(self, trigger: str, running: Config, loaded: _Loaded) -> ReloadResult:
        config, table = loaded.config, loaded.table
        assert config is not None and table is not None
        if loaded.kept_addresses:
            log.warning(
                "reload (%s): %s: changing listen (its address or certificate), admin or "
                "server needs a restart; the running ones are kept",
                trigger,
                "; ".join(loaded.kept_addresses),
            )
        if loaded.report:
            log.warning("reload (%s): the configuration has warnings:\n%s", trigger, loaded.report)
        self.runtime.swap(config, table=table)
        self.runtime.files = loaded.files
        summary = (
            f"reloaded ({trigger}): {len(config.rules)} rules, {len(config.canaries)} canaries "
            f"from {loaded.files} files (sha256 {running.sha256[:12]} -> {config.sha256[:12]}); "
            f"{describe_changes(running, config)}"
        )
        log.info("%s", summary)
        return ReloadResult(ok=True, summary=summary, report=loaded.report)


def _load(
    paths: Sequence[str],
    prepare: Callable[[Config], Config],
    running: Config,
    declared: Addresses | None = None,
) -> _Loaded:
    """Step 1, in a worker thread: load + validate + flags + the running addresses + compile;
    never raises."""
    result = load(list(paths))
    if result.usage_error is not None:
        return _Loaded(
            config=None,
            table=None,
            report="",
            error=f"sidecar serve: {result.usage_error}",
            files=0,
        )
    report = result.report()
    files = len(result.files)
    if result.config is None:
        return _Loaded(config=None, table=None, report=report, error=None, files=files)
    try:
        config = prepare(result.config)
        now: Addresses = (result.config.listen, result.config.admin)
        kept: list[str] = []
        if config.listen != running.listen:
            kept.append(f"listen {config.listen} (still {running.listen})")
        elif declared is not None and now[0] != declared[0]:
            kept.append(f"listen {now[0]} in the rules (--listen keeps {running.listen})")
        if config.admin != running.admin:
            kept.append(f"admin {config.admin or 'off'} (still {running.admin or 'off'})")
        elif declared is not None and now[1] != declared[1]:
            kept.append(f"admin {now[1] or 'off'} in the rules (--admin keeps {running.admin})")
        if config.listen_tls != running.listen_tls:
            kept.append("the listen certificate (the one loaded at start is kept)")
        if config.server != running.server:
            kept.append(f"server {config.server} (still {running.server})")
        if kept:  # /rules then shows the addresses (and the server) in use
            config = replace(
                config,
                listen=running.listen,
                admin=running.admin,
                listen_tls=running.listen_tls,
                server=running.server,
            )
        table = compile_table(config)
    except Exception as exc:
        return _Loaded(
            config=None, table=None, report=report, error=f"sidecar serve: {exc}", files=files
        )
    return _Loaded(
        config=config,
        table=table,
        report=report,
        error=None,
        files=files,
        kept_addresses=tuple(kept),
        declared=now,
    )


def describe_changes(old: Config, new: Config) -> str:
    """`canaries added: c; changed: b; removed: a; kept: d` (empty groups left out)."""
    before = {c.name: c for c in old.canaries}
    after = {c.name: c for c in new.canaries}
    groups = {
        "added": [n for n in after if n not in before],
        "changed": [n for n in after if n in before and before[n] != after[n]],
        "removed": [n for n in before if n not in after],
        "kept": [n for n in after if n in before and before[n] == after[n]],
    }
    parts = [f"{k}: {', '.join(v)}" for k, v in groups.items() if v]
    primary = ""
    if old.primary != new.primary and new.primary is not None:
        primary = f"; primary now {new.primary.endpoint.url}"
    return ("canaries " + "; ".join(parts) if parts else "no canaries") + primary


def fingerprint(paths: Sequence[str]) -> Fingerprint:
    """The configuration's files with (mtime, size, inode) each; changes when any does."""
    files, _, usage = expand(paths)
    items: list[object] = [usage]
    for name in files:
        try:
            st = os.stat(name)
        except OSError as exc:
            items.append((name, exc.errno))
        else:
            items.append((name, st.st_mtime_ns, st.st_size, st.st_ino))
    return tuple(items)


def sources_changed(config: Config, paths: Sequence[str]) -> bool:
    """Whether the configuration's files now differ from the ones `config` was loaded from."""
    files, _, usage = expand(paths)
    if usage is not None:
        return True
    current: list[tuple[str, str]] = []
    for name in files:
        try:
            with open(name, "rb") as f:
                current.append((name, hashlib.sha256(f.read()).hexdigest()))
        except OSError:
            return True
    return current != [(s.path, s.sha256) for s in config.sources]
