"""The live state of `serve`: one routing table, its canary pools and the primary client.

How this works
--------------
Everything a request needs is one immutable-by-convention `Snapshot`: the compiled
`RoutingTable`, the `CanaryPool`s keyed by canary name (exactly the table's canaries), the
primary's `ConnectionPool` and its two timeouts. `Runtime.current` is the one reference to
the live snapshot. The proxy reads it once when a request starts and uses that snapshot
until the request ends, so a request never mixes two tables. Replacing the snapshot is one
attribute store on the event loop's thread, hence atomic for every request.

`swap(config)` (the reload path, sidecar/serve/reload.py) builds the next snapshot: a canary whose
`CanarySpec` is equal keeps its pool (queue, workers, connections); a changed or new canary
gets a new pool; the primary client is kept when the primary endpoint is unchanged. The new
snapshot is published with one store, then the retired pools (changed or removed canaries)
are closed in the background once every request that started on ANY older snapshot has
finished (`Snapshot.active` counts them; a pool kept across several reloads is referenced
by all of those snapshots, so waiting on the last one alone is not enough): they may still
take tees from those requests, then finish the jobs they hold, each within its own deadline
(a job's deadline is at most the canary's `timeout` after its admission, and admission has
ended, so a drain of `timeout` plus a little slack never cuts a job short). A snapshot that
is no longer current never gains a request: the proxy reads `current` and counts itself in
`active` without awaiting in between.

Comparison: the runtime owns the process's one `DiffStore` (`diffs`, for `/diffs`), made at
`start()` with the configuration's `diff_log`; a reload retargets the log and keeps the
records; `close()` closes it. A snapshot whose configuration compares any canary carries
`compare_report` (the `CompareSink` over that store) for its requests' rendezvous; else it
is None, and requests pay nothing for comparison.

Nothing here is on the hot path except `current` and the `active` counter.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping, Sequence

from sidecar.http.client import ConnectionPool
from sidecar.model.config import CanarySpec, Config
from sidecar.model.endpoint import Endpoint
from sidecar.model.tls import TlsSpec
from sidecar.routing.table import RoutingTable, compile_table
from sidecar.serve import metrics as serve_metrics
from sidecar.serve.compare_sink import CompareSink
from sidecar.serve.diff_store import DiffStore
from sidecar.shadow import metrics as shadow_metrics
from sidecar.shadow.balance import tls_context
from sidecar.shadow.compare.rendezvous import Report
from sidecar.shadow.folding import folding_supported
from sidecar.shadow.pool import CanaryPool

log = logging.getLogger("sidecar.runtime")

# Connections to the primary per process: a bound on sockets and on the primary's load.
# Requests beyond it wait for a free connection (as nginx's upstream keepalive pool, but
# bounded in total). 1024 in-flight primary requests per process is far past what one
# event loop proxies at once.
PRIMARY_MAX_CONNECTIONS = 1024
# Connect timeout to the primary (the wait for the response head is bounded by the primary
# `timeout` as well).
PRIMARY_CONNECT_TIMEOUT_S = 5.0
# Idle primary connections are dropped after this (below common servers' keep-alive, e.g.
# nginx's 75 s and uvicorn's 5 s... so the pool re-checks on checkout as well).
PRIMARY_IDLE_TIMEOUT_S = 30.0
# How often a retirement task checks whether older requests have all finished.
RETIRE_POLL_S = 0.05
# Beyond a retired pool's `timeout`, how long its drain waits: every held job ends by its own
# deadline (the worker's timeout fires a loop iteration or two after it), never by the drain.
RETIRE_DRAIN_SLACK_S = 1.0


class Snapshot:
    """One table with everything needed to serve a request by it."""

    __slots__ = (
        "active",
        "canary_pools",
        "compare_report",
        "config",
        "primary",
        "primary_idle_timeout_s",
        "primary_timeout_s",
        "request_id",
        "table",
    )

    def __init__(
        self,
        table: RoutingTable,
        canary_pools: Mapping[str, CanaryPool],
        primary: ConnectionPool,
        primary_timeout_s: float,
        primary_idle_timeout_s: float,
    ) -> None:
        self.table = table
        self.config: Config = table.config
        self.canary_pools = canary_pools
        self.primary = primary
        self.primary_timeout_s = primary_timeout_s  # until the response head
        self.primary_idle_timeout_s = primary_idle_timeout_s  # longest pause in either body
        self.active = 0  # requests that started on this snapshot and have not ended
        self.compare_report: Report | None = None  # set when some canary is compared
        # `request_id "Name"`: the header's lower-case name; None: requests get no id.
        rid = self.config.request_id
        self.request_id: bytes | None = None if rid is None else rid.encode("ascii")


class Runtime:
    """The current snapshot plus what outlives it (readiness, the source description)."""

    def __init__(self, config: Config, *, files: int, paths: Sequence[str]) -> None:
        self._initial = config
        self.files = files
        self.paths = tuple(paths)
        self.ready = False
        self.current: Snapshot
        # The primary's endpoint and tls block: a reload that changes either gets a new client.
        self._primary_endpoint: tuple[Endpoint, TlsSpec | None] | None = None
        self._retiring: set[asyncio.Task[None]] = set()
        self._retired_pools: set[CanaryPool] = set()  # retired, not yet closed
        self._older: list[Snapshot] = []  # replaced snapshots that may still have requests
        self._closed = False
        # The diff records of this process (GET /diffs); lines the diff_log writer could not
        # keep up with are counted in sidecar_diff_log_dropped_total.
        self.diffs = DiffStore(on_drop=serve_metrics.diff_log_dropped().inc)
        self._compare_sink = CompareSink(self.diffs)

    @property
    def config(self) -> Config:
        return self.current.config

    async def start(self) -> None:
        """Compile the initial table and start its pools (inside the running loop)."""
        self.diffs.log_to(self._initial.diff_log)
        self.current = self._build(self._initial, previous=None)
        _publish_rules_info(self.current.config)

    def swap(self, config: Config, *, table: RoutingTable | None = None) -> Snapshot:
        """Publish a snapshot for `config` (already validated; `table` compiled from it, or
        None to compile here); retire what it replaces. Synchronous: nothing runs between the
        build and the store."""
        old = self.current
        new = self._build(config, previous=old, table=table)
        self.diffs.log_to(config.diff_log)  # the kept records stay
        self.current = new  # the atomic swap: requests from now on use `new`
        _publish_rules_info(config)
        self._older = [s for s in self._older if s.active > 0]
        self._older.append(old)
        retired = [
            pool
            for name, pool in old.canary_pools.items()
            if new.canary_pools.get(name) is not pool
        ]
        self._retired_pools.update(retired)
        old_primary = old.primary if old.primary is not new.primary else None
        if retired or old_primary is not None:
            task = asyncio.get_running_loop().create_task(
                self._retire(list(self._older), retired, old_primary)
            )
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)
        return new

    async def close(self) -> None:
        """Shutdown: abandon queued mirrors, close every pool and the primary client."""
        if self._closed:
            return
        self._closed = True
        for task in list(self._retiring):
            task.cancel()
        await asyncio.gather(*self._retiring, return_exceptions=True)
        snap = self.current
        pools = {*snap.canary_pools.values(), *self._retired_pools}
        await asyncio.gather(*(pool.aclose(drain=None) for pool in pools), return_exceptions=True)
        with contextlib.suppress(Exception):
            await snap.primary.aclose()
        self.diffs.close()

    # --- internals ----------------------------------------------------------------------

    def _build(
        self, config: Config, *, previous: Snapshot | None, table: RoutingTable | None = None
    ) -> Snapshot:

        primary_spec = config.primary
        if primary_spec is None:
            raise ValueError("a configuration without a primary cannot be served")
        if table is None or table.config is not config:
            table = compile_table(config)
        kept: Mapping[str, CanaryPool] = previous.canary_pools if previous else {}
        pools: dict[str, CanaryPool] = {}
        for name, spec in table.canaries.items():
            pool = kept.get(name)
            if pool is None or not _same_spec(pool.spec, spec):
                pool = _pool(spec)
                pool.start()
                shadow_metrics.track_pool(pool)
            pools[name] = pool
        for rule in config.rules:
            for name in rule.to:
                if table.canaries[name].compare is not None:
                    shadow_metrics.track_compare(name, rule.name)
        wanted = (primary_spec.endpoint, primary_spec.tls)
        if previous is not None and self._primary_endpoint == wanted:
            primary = previous.primary
        else:
            https = primary_spec.endpoint.scheme == "https"
            tls = primary_spec.tls
            primary = ConnectionPool(
                primary_spec.endpoint,
                max_connections=PRIMARY_MAX_CONNECTIONS,
                connect_timeout_s=PRIMARY_CONNECT_TIMEOUT_S,
                idle_timeout_s=PRIMARY_IDLE_TIMEOUT_S,
                ssl_context=tls_context(tls) if https else None,
                server_name=tls.server_name if tls is not None else None,
            )
            self._primary_endpoint = wanted
        snap = Snapshot(table, pools, primary, primary_spec.timeout_s, primary_spec.idle_timeout_s)
        if any(c.compare is not None for c in config.canaries):
            snap.compare_report = self._compare_sink
        return snap

    async def _retire(
        self, older: list[Snapshot], pools: list[CanaryPool], primary: ConnectionPool | None
    ) -> None:
        # Requests that started on an older snapshot may still hand tees to these pools.
        while any(s.active > 0 for s in older):
            await asyncio.sleep(RETIRE_POLL_S)

        drain = max((p.spec.timeout_s for p in pools), default=0.0) + RETIRE_DRAIN_SLACK_S
        await asyncio.gather(*(p.aclose(drain=drain) for p in pools), return_exceptions=True)
        for pool in pools:
            self._retired_pools.discard(pool)
            shadow_metrics.untrack_pool(pool)  # its gauges go; its counters stay
        if primary is not None:
            with contextlib.suppress(Exception):
                await primary.aclose()


def _pool(spec: CanarySpec) -> CanaryPool:
    """A canary's pool, its outcome counts folded into the metrics at scrape time (no
    metrics call per tee on the request path) unless under multiprocess metrics (--workers),
    where every outcome is counted as it happens."""
    if folding_supported():
        return CanaryPool(spec, observe=shadow_metrics.observe_details, observe_outcomes=False)
    return CanaryPool(spec, observe=shadow_metrics.observe)


def _same_spec(a: CanarySpec, b: CanarySpec) -> bool:
    return a == b


def _publish_rules_info(config: Config) -> None:

    serve_metrics.set_rules_info(
        config.sha256, rules=len(config.rules), canaries=len(config.canaries)
    )
