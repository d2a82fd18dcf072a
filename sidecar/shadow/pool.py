"""One canary's worker pool: bounded queue, workers, deadlines, outcomes.

One job past 400 lines: admission, the workers and the settling of outcomes share the
pool's counters and are read together (the values, balancing and rate are their own
modules: types.py, balance.py, rate.py).

How this works
--------------
Admission runs on the request path and never awaits: `refusal()` says whether a tee would
be dropped, without building anything, and `dispatch(job)` admits it.
It first settles queued jobs whose deadline has passed (one timeout per pool, so they are
the oldest, at the head): a stuck canary's queue holds no dead jobs, and they are settled
a few per request rather than in a burst when a worker frees up. Then it checks the rate
bucket (`dropped_rate`), then room: when `workers + queue` jobs are already admitted and
unsettled the tee is `dropped_full`. `queue 0` therefore admits only when a worker is idle
(parked, or free and about to look). An admitted job gets its deadline
(`loop.time() + timeout_s`, covering queue wait plus round trip) and goes to an idle worker
by hand-off (its waiting future is resolved directly), else to the queue. While every
server is in its connect back-off (below) an admitted job is settled at once as `failed`
("connect"), so a dead canary wakes no worker per tee. With `pause after N failures for D`
(`pause.py`), a paused canary's tees are refused first, as `dropped_paused`, one attribute
test on the way for a canary without the statement; the probe after the pause is
dispatched even during a connect back-off, so that it tries the canary.

`workers` tasks loop forever: take a job (or park a future in `_idle` and wait for a
hand-off): the oldest, or, once the oldest has spent half of its timeout waiting, the
newest (adaptive LIFO, as in Facebook's and Dropbox's proxies: a backed-up slow canary then
gets fresh mirrors with time to complete, instead of only jobs about to expire in flight);
skip it as `failed` ("deadline expired in queue") when its deadline passed,
otherwise send it under the deadline through one `Transport` (`types.py`): a library
chain (`ChainTransport`), or one of the canary's servers (`balance.Server`), picked by
smooth weighted round-robin (nginx's algorithm: deterministic), which sends the shadow
request with its own `ConnectionPool` and reads the response to the end. A server
whose connect failed is skipped for a short window that doubles while connects keep
failing (`CONNECT_BACKOFF_S` up to `CONNECT_BACKOFF_MAX_S`, reset by a success); when
every server is in its window the tee ends at once as `failed` ("connect"), so a dead
canary costs no connect attempt per tee. A response is `completed` (any status); a client
error or the deadline is `failed` with a short reason; anything else is a bug in the
chain: logged once with its traceback, `panicked`, and the worker carries on, so the pool
never loses a worker.

TCP connections: only `workers` jobs run at once. With one server its pool holds at most
`workers` connections. With several, each server's pool gets a share of `workers`
(proportional to weight, at least one, summing to `workers`), so idle connections to one
server can never push the total above `workers`. With more servers than workers each
request uses a throw-away pool closed right after it (correct, just slower).

Counters are plain ints (a count per outcome, by rule) bumped before `observe` is called;
`observe` errors are logged (the first with its traceback, then a count per
`SUMMARY_INTERVAL_S`), never re-counted. With `observe_outcomes=False` (the proxy) an
outcome without details (dispatched, a drop, a failure with no error kind) is only counted:
no `observe` call on the request path; the metrics fold the counts in when scraped.
Once settled, dispatched == completed + failed + panicked, also across `aclose()`: abandoned
jobs end as `failed` ("abandoned at shutdown").

Why a tee failed: a failure that came from trying the canary (an exchange that raised, its
deadline, or a deadline that passed in the queue) carries an error kind
(`sidecar.shadow.errors.classify`: connect, timeout, tls, reset, protocol) in
`MirrorInfo.error_kind`, and is logged per kind, rate-limited. A tee failed at once because
every server is in its connect back-off made no attempt: its `error` is "connect" but it has
no kind (the errors metric counts attempts), it is only counted in `backoff_skips` and in the
next 'connect' summary line. Abandoned jobs (shutdown) have no kind either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import Any

from sidecar.http.client import ClientError, ConnectError
from sidecar.http.headers import Headers
from sidecar.model.config import CanarySpec
from sidecar.shadow.balance import (
    Server,
    SmoothWeightedRoundRobin,
    connection_shares,
    tls_context,
)
from sidecar.shadow.compare.capture import Capture, Captured
from sidecar.shadow.errors import (
    CONNECT,
    ERROR_KINDS,
    TIMEOUT,
    ErrorKind,
    ThrottledLog,
    classify,
    error_line,
    error_summary_line,
    observe_error_line,
    observe_summary_line,
)
from sidecar.shadow.pause import Pause
from sidecar.shadow.rate import TokenBucket
from sidecar.shadow.template import ShadowTemplate
from sidecar.shadow.types import (
    ERR_ABANDONED,
    ERR_CONNECT,
    ERR_EXPIRED,
    ERR_TIMEOUT,
    Chain,
    Job,
    MirrorInfo,
    Observe,
    Outcome,
    ShadowRequest,
    Stats,
    Transport,
)

log = logging.getLogger("sidecar.mirror")


# Where each outcome's count sits in a rule's counts (`CanaryPool.counts_by_rule`).
_OUTCOME_INDEX = {outcome: i for i, outcome in enumerate(Outcome)}
# Distinct (rule, outcome, error, kind) infos kept for reuse; panics carry free-form errors.
_PLAIN_INFOS_MAX = 1024


class _BackingOff(ConnectError):
    """Every server was in its connect back-off when the worker picked one: no attempt."""


class CanaryPool:
    """One canary's bounded queue and workers (see the module docstring)."""

    def __init__(
        self,
        spec: CanarySpec,
        *,
        observe: Observe | None = None,
        chain: Chain | None = None,
        observe_outcomes: bool = True,
    ) -> None:
        """`observe_outcomes=False`: `observe` sees only the outcomes that carry details (a
        status, an error kind); the count of every outcome is read from `counts_by_rule()`
        instead (the proxy folds it into Prometheus when scraped: `sidecar.shadow.metrics`)."""
        self.spec = spec
        self.name = spec.name
        self._observe = observe
        self.observes_outcomes = observe_outcomes
        self._template = ShadowTemplate.compile(spec)
        self._jobs: deque[Job] = deque()
        self._idle: deque[asyncio.Future[Job]] = deque()
        self._tasks: list[asyncio.Task[None]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._bucket: TokenBucket | None = None
        self._closing = False
        self._running = 0  # jobs taken by a worker and not yet settled
        # Outcomes by rule: rule -> a count per Outcome, in Outcome's order.
        self._by_rule: dict[str | None, list[int]] = {}
        self._plain_infos: dict[
            tuple[str | None, Outcome, str | None, ErrorKind | None], MirrorInfo
        ] = {}
        self._error_counts: dict[ErrorKind, int] = dict.fromkeys(ERROR_KINDS, 0)
        self.backoff_skips = 0  # tees failed at once during a connect back-off (no attempt)
        self._skips_logged = 0  # backoff_skips as of the last 'connect' log line
        self._error_log = ThrottledLog(
            log, self.name, first=error_line, summary=self._error_summary
        )
        self._observe_log = ThrottledLog(
            log,
            self.name,
            first=observe_error_line,
            summary=observe_summary_line,
            level=logging.ERROR,
            traceback=True,
        )
        self._capacity = spec.workers + spec.queue
        self._lifo_after = spec.timeout_s / 2  # remaining time of the oldest job (below)
        # Loop time until which every server is in its connect back-off (never for a chain).
        self._down_until = 0.0
        # One transport interface: the chain, or the canary's servers (balanced).
        self._servers: list[Transport]
        if chain is not None:
            weights = [1]
            self._servers = [ChainTransport(chain)]
        else:
            weights = [s.weight for s in spec.servers]
            shares = connection_shares(weights, spec.workers)
            https = any(s.endpoint.scheme == "https" for s in spec.servers)
            context = tls_context(spec.tls) if https else None  # one for all its servers
            server_name = spec.tls.server_name if spec.tls is not None else None
            self._servers = [
                Server(
                    s.endpoint,
                    None if shares is None else shares[i],
                    ssl_context=context,
                    server_name=server_name,
                    on_window=self._servers_changed,
                )
                for i, s in enumerate(spec.servers)
            ]
        self._wrr = SmoothWeightedRoundRobin(weights)
        self._idle_event: asyncio.Event | None = None
        self._pause = Pause(self.name, spec.pause) if spec.pause is not None else None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers; call inside the running loop. Idempotent."""
        if self._loop is not None:
            return
        self._loop = loop = asyncio.get_running_loop()
        if self.spec.rate is not None:
            self._bucket = TokenBucket(self.spec.rate, loop.time())
        self._idle_event = asyncio.Event()
        self._idle_event.set()
        self._tasks = [
            loop.create_task(self._worker(), name=f"sidecar-mirror-{self.name}-{i}")
            for i in range(self.spec.workers)
        ]

    @property
    def started(self) -> bool:
        return self._loop is not None

    @property
    def paused(self) -> bool:
        """True while the canary is paused (`pause after N failures for D`), probe included."""
        return self._pause is not None and self._pause.paused

    async def aclose(self, drain: float | None = None) -> None:
        """Stop admitting (later tees: `dropped_full`); finish queued and running jobs for
        up to `drain` seconds (None: none), abandon the rest as `failed`; close connections."""
        self._closing = True
        if self._loop is None:
            return
        if drain and self._idle_event is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(drain):
                    await self._idle_event.wait()
        while self._jobs:
            job = self._jobs.popleft()
            self._settle(Outcome.FAILED, job, error=ERR_ABANDONED)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        self._error_log.flush()
        self._observe_log.flush()
        for server in self._servers:
            await server.aclose()

    # --- request path (synchronous) ----------------------------------------------------

    def refusal(self) -> Outcome | None:
        """The drop a tee would get right now (`dropped_paused`, `dropped_rate`,
        `dropped_full`), or None when
        it would be admitted, so a caller can skip building a `Job` it would drop. Counts
        nothing; queued jobs whose deadline passed are settled first (they free room)."""
        if self._closing:
            return Outcome.DROPPED_FULL
        loop = self._loop
        if loop is None:
            self.start()
            loop = self._loop
            assert loop is not None
        now = loop.time()
        jobs = self._jobs
        if jobs and jobs[0].deadline <= now:
            self._expire(now)
        pause = self._pause
        if pause is not None and pause.paused and pause.refuses(now):
            return Outcome.DROPPED_PAUSED
        bucket = self._bucket
        if bucket is not None and not bucket.has_token(now):
            return Outcome.DROPPED_RATE
        # Room: admitted and unsettled jobs (queued or running) stay within workers + queue.
        # Counting jobs, not parked workers, makes a worker that is free but has not yet
        # parked (just started, or looping back) count as idle, so `queue 0` admits then.
        if self._running >= self._capacity:
            return Outcome.DROPPED_FULL
        return None

    def ended_at_once(self, rule: str | None) -> bool:
        """For a tee nobody compares, before its `Job` is built: True when it ended right
        here, counted: refused (the drop `refusal()` names), or failed at once because every
        server is in its connect back-off (dispatched and failed, "connect", no attempt, no
        kind: a dead canary's tee under load builds no `Job` nor request copy). False: build
        the job and `dispatch()` it. With a `pause` configured a back-off settles nothing
        here (its probe and its failure count need the job)."""
        refused = self.refusal()
        if refused is not None:
            self.record(refused, rule)
            return True
        loop = self._loop
        assert loop is not None  # refusal() started the pool
        if self._pause is not None or loop.time() >= self._down_until:
            return False
        if self._bucket is not None:
            self._bucket.take()
        self.backoff_skips += 1
        self.record(Outcome.DISPATCHED, rule)
        self.record(Outcome.FAILED, rule, error=ERR_CONNECT)
        return True

    def dispatch(self, job: Job) -> Outcome:
        """Admit `job` (call right after `refusal()` returned None): hand it to an idle
        worker or queue it; with every server in its connect back-off it fails at once."""
        loop = self._loop
        assert loop is not None and self._idle_event is not None
        now = loop.time()
        if self._bucket is not None:
            self._bucket.take()
        pause = self._pause
        probe = False
        if pause is not None and pause.paused:
            pause.admitted(job)  # `refusal()` let it through: the probe
            probe = True
        if now < self._down_until and not probe:
            # No server to try (never for a chain): settled here, no worker woken for it.
            # No attempt was made, so no error kind: only counted as a skip.
            self.backoff_skips += 1
            self.record(Outcome.DISPATCHED, job.rule)
            if pause is not None:
                pause.settled(job, Outcome.FAILED, now, ERR_CONNECT)
            self.record(Outcome.FAILED, job.rule, error=ERR_CONNECT)
            if job.rendezvous is not None:
                self._arrive(job, None)
            return Outcome.DISPATCHED
        job.deadline = now + self.spec.timeout_s
        idle = self._idle
        while idle:
            waiter = idle.popleft()
            if not waiter.done():  # a cancelled worker leaves a cancelled future behind
                waiter.set_result(job)
                break
        else:
            self._jobs.append(job)  # a free worker takes it before parking again
        self._running += 1
        self._idle_event.clear()
        return self.record(Outcome.DISPATCHED, job.rule)

    def _expire(self, now: float) -> None:
        """Settle the queued jobs whose deadline passed (the oldest are first: one timeout
        per pool), as they go rather than in a burst when a worker frees up."""
        jobs = self._jobs
        while jobs and jobs[0].deadline <= now:
            self._settle(
                Outcome.FAILED,
                jobs.popleft(),
                error=ERR_EXPIRED,
                kind=TIMEOUT,
                cause=ERR_EXPIRED,
            )

    def record(
        self,
        outcome: Outcome,
        rule: str | None,
        *,
        status: int | None = None,
        duration: float | None = None,
        error: str | None = None,
        kind: ErrorKind | None = None,
    ) -> Outcome:
        """Count one outcome and report it to `observe` (errors there are logged only, the
        first with its traceback, then counted and summarized: a broken hook would otherwise
        log a traceback per outcome)."""
        counts = self._by_rule.get(rule)
        if counts is None:
            counts = self._by_rule[rule] = [0] * len(_OUTCOME_INDEX)
        counts[_OUTCOME_INDEX[outcome]] += 1
        observe = self._observe
        if observe is not None:
            if status is None and kind is None and not self.observes_outcomes:
                return outcome  # no details, and the count is folded from `_by_rule`
            if status is None and duration is None and outcome is not Outcome.PANICKED:
                # Drops, `dispatched` and failures (fixed reasons) repeat: one info per kind.
                ikey = (rule, outcome, error, kind)
                info = self._plain_infos.get(ikey)
                if info is None:
                    info = MirrorInfo(
                        outcome, canary=self.name, rule=rule, error=error, error_kind=kind
                    )
                    if len(self._plain_infos) < _PLAIN_INFOS_MAX:
                        self._plain_infos[ikey] = info
            else:
                info = MirrorInfo(outcome, status, duration, self.name, rule, error, kind)
            try:
                observe(info)
            except Exception as exc:
                self._observe_log.report("observe", exc)
        return outcome

    # --- metrics -----------------------------------------------------------------------

    def stats(self) -> Stats:
        return Stats(*(sum(c[i] for c in self._by_rule.values()) for i in _OUTCOME_INDEX.values()))

    def counts_by_rule(self) -> dict[str | None, list[int]]:
        """Outcome counts by rule (a count per `Outcome`, in its order), live: read them,
        do not change them."""
        return self._by_rule

    def error_stats(self) -> dict[ErrorKind, int]:
        """Failed attempts by error kind (back-off skips are in `backoff_skips`)."""
        return dict(self._error_counts)

    @property
    def queue_depth(self) -> int:
        return len(self._jobs)

    @property
    def busy_workers(self) -> int:
        return len(self._tasks) - len(self._idle)

    @property
    def alive_workers(self) -> int:
        return sum(1 for t in self._tasks if not t.done())

    @property
    def open_connections(self) -> int:
        """TCP connections currently open toward this canary (all servers)."""
        return sum(s.open_connections for s in self._servers)

    # --- workers -----------------------------------------------------------------------

    def _settle(
        self,
        outcome: Outcome,
        job: Job,
        *,
        status: int | None = None,
        duration: float | None = None,
        error: str | None = None,
        kind: ErrorKind | None = None,
        cause: BaseException | str = "",
        captured: Captured | None = None,
    ) -> None:
        self._running -= 1
        if job.rendezvous is not None:
            self._arrive(job, captured)
        pause = self._pause
        if pause is not None:  # before `record`: observe then sees the new state
            assert self._loop is not None
            pause.settled(job, outcome, self._loop.time(), error)
        rule = job.rule
        if kind is not None:
            # The metric (through observe) and the log; a lookup and an increment each while
            # the log is throttled.
            self._error_counts[kind] += 1
            self._error_log.report(kind, cause)
        self.record(outcome, rule, status=status, duration=duration, error=error, kind=kind)
        if self._running == 0 and self._idle_event is not None:
            self._idle_event.set()

    async def _worker(self) -> None:
        loop = self._loop
        assert loop is not None
        task = asyncio.current_task()  # once: on 3.11 each call is a getpid system call
        assert task is not None
        jobs = self._jobs
        while True:
            if jobs:
                # FIFO while the queue keeps up; once the oldest job has used half of its
                # timeout waiting, the newest instead (adaptive LIFO): it still has the time
                # to complete, while the stale ones expire in the queue unsent.
                if jobs[0].deadline - loop.time() >= self._lifo_after:
                    job = jobs.popleft()
                else:
                    job = jobs.pop()
            else:
                waiter: asyncio.Future[Job] = loop.create_future()
                self._idle.append(waiter)
                try:
                    job = await waiter
                except asyncio.CancelledError:
                    if waiter.done() and not waiter.cancelled():
                        self._settle(Outcome.FAILED, waiter.result(), error=ERR_ABANDONED)
                    raise
            await self._run(job, loop, task)

    async def _run(
        self, job: Job, loop: asyncio.AbstractEventLoop, task: asyncio.Task[Any]
    ) -> None:
        if loop.time() >= job.deadline:
            self._settle(Outcome.FAILED, job, error=ERR_EXPIRED, kind=TIMEOUT, cause=ERR_EXPIRED)
            return
        start = loop.time()
        capture = self._capture(job)
        # The deadline as asyncio.timeout_at does it (a timer that cancels this task, told
        # apart from a shutdown by the task's cancel count), at half its cost per job.
        cancelling = task.cancelling()
        expired = _Expired(task)
        timer = loop.call_at(job.deadline, expired.fire)
        try:
            status = await self._send(job, capture)
        except asyncio.CancelledError:
            timer.cancel()
            if expired.fired and task.uncancel() <= cancelling:
                self._settle(
                    Outcome.FAILED,
                    job,
                    error=ERR_TIMEOUT,
                    kind=TIMEOUT,
                    cause=f"no response within the canary's timeout ({self.spec.timeout_s:g} s)",
                )
                return
            self._settle(Outcome.FAILED, job, error=ERR_ABANDONED)
            raise
        except Exception as exc:
            timer.cancel()
            if expired.fired:
                task.uncancel()
            reason = _failure_reason(exc)
            if isinstance(exc, _BackingOff):
                self.backoff_skips += 1  # no attempt: not an error of any kind
                self._settle(Outcome.FAILED, job, error=reason)
            elif reason is not None:
                self._settle(Outcome.FAILED, job, error=reason, kind=classify(exc), cause=exc)
            else:
                log.error(
                    "mirror chain for canary %s raised; counted as panicked",
                    self.name,
                    exc_info=exc,
                )
                self._settle(Outcome.PANICKED, job, error=f"{type(exc).__name__}: {exc}")
        else:
            timer.cancel()
            if expired.fired:
                task.uncancel()
            self._settle(
                Outcome.COMPLETED,
                job,
                status=status,
                duration=loop.time() - start,
                # a custom chain returns only a status: its capture never started, nothing to compare
                captured=capture.finish() if capture is not None and capture.started else None,
            )

    # --- comparison ----------------------------------------------------------------------

    def _capture(self, job: Job) -> Capture | None:
        """The recorder of this tee's response when the request compares it (or uses it as
        a baseline); None otherwise (the response is read and discarded)."""
        rv = job.rendezvous
        if rv is None:
            return None
        spec = rv.capture_spec(self.name)
        return Capture(spec) if spec is not None else None

    def _arrive(self, job: Job, captured: Captured | None) -> None:
        """Tell the request's rendezvous this tee ended (it may judge now, inline); a bug
        there is logged (throttled) and never costs the worker."""
        rv = job.rendezvous
        assert rv is not None
        job.rendezvous = None  # exactly once per tee
        try:
            rv.canary_done(self.name, captured)
        except Exception as exc:
            self._observe_log.report("compare", exc)

    def _shadow(self, job: Job, default_host: bytes | None) -> tuple[bytes, Headers, bytes]:
        body = job.body.bytes() if job.body is not None else b""
        r = job.request
        target, headers = self._template.build(
            raw_path=r.raw_path,
            query_string=r.query_string,
            headers=r.headers,
            client=r.client,
            scheme=r.scheme,
            body_length=len(body),
            default_host=default_host,
        )
        return target, headers, body

    async def _send(self, job: Job, capture: Capture | None = None) -> int | None:
        pause = self._pause
        server = self._pick(probe=pause is not None and job is pause.probe)
        target, headers, body = self._shadow(job, server.host)
        request = ShadowRequest(
            method=job.request.method.encode("ascii"),
            target=target,
            headers=headers,
            body=body,
            canary=self.name,
            rule=job.rule,
        )
        return await server.send(request, capture)

    def _servers_changed(self) -> None:
        """A server's back-off window changed: every server is skipped until the earliest
        end of theirs."""
        self._down_until = min(s.down_until for s in self._servers)

    def _pick(self, probe: bool = False) -> Transport:
        """The next server by weighted round-robin, skipping any in its connect back-off;
        raises ConnectError (a `failed` "connect") when every server is in one. A `probe`
        (the first tee after a pause) takes the next server whatever its back-off."""
        servers = self._servers
        assert self._loop is not None
        now = self._loop.time()
        server = servers[self._wrr.pick() if len(servers) > 1 else 0]
        if probe or now >= server.down_until:
            return server
        for server in servers:  # the pick is backing off: the first server that is up
            if now >= server.down_until:
                return server
        raise _BackingOff("connection refused moments ago; backing off", reason=ERR_CONNECT)

    def _error_summary(
        self, canary: str, kind: str, count: int, interval_s: float, text: str
    ) -> str:
        skips = 0
        if kind == CONNECT:  # the back-off's skips since the last 'connect' line
            skips = self.backoff_skips - self._skips_logged
            self._skips_logged = self.backoff_skips
        return error_summary_line(canary, kind, count, interval_s, text, skips)


class ChainTransport:
    """A library chain (`Mirror.use(callable)`) as the pool's one transport: no connections
    of its own, never in a back-off, the client's Host kept."""

    __slots__ = ("_chain", "down_until", "host")

    def __init__(self, chain: Chain) -> None:
        self._chain = chain
        self.host: bytes | None = None
        self.down_until = 0.0

    @property
    def open_connections(self) -> int:
        return 0

    async def send(self, request: ShadowRequest, capture: Capture | None = None) -> int | None:
        return await self._chain(request)

    async def aclose(self) -> None:
        return None


class _Expired:
    """A job's deadline timer callback: cancels the worker task, remembers that it did."""

    __slots__ = ("fired", "task")

    def __init__(self, task: asyncio.Task[object]) -> None:
        self.task = task
        self.fired = False

    def fire(self) -> None:
        self.fired = True
        self.task.cancel()


def _failure_reason(exc: Exception) -> str | None:
    """The `failed` reason for a client error (connect, reset, protocol); None otherwise."""
    if isinstance(exc, ClientError):
        return exc.reason
    return None
