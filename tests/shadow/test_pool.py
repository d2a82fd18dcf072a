"""CanaryPool and RequestTees against real loopback canaries (tests/support/servers.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter

import pytest

from sidecar.model.config import CanarySpec, RateSpec, ServerSpec
from sidecar.model.endpoint import Endpoint
from sidecar.shadow.balance import SmoothWeightedRoundRobin, connection_shares
from sidecar.shadow.pool import CanaryPool
from sidecar.shadow.tees import RequestTees
from sidecar.shadow.types import (
    ERR_ABANDONED,
    ERR_EXPIRED,
    ClientRequest,
    Job,
    MirrorInfo,
    Outcome,
    ShadowRequest,
)
from tests.support.engine import admit
from tests.support.servers import RecordingCanary, wait_until

PLACEHOLDER = (ServerSpec(endpoint=Endpoint.parse("http://127.0.0.1:9")),)


def canary_spec(
    *canaries: RecordingCanary, weights: tuple[int, ...] = (), **kw: object
) -> CanarySpec:
    servers = tuple(
        ServerSpec(endpoint=c.endpoint, weight=weights[i] if weights else 1)
        for i, c in enumerate(canaries)
    )
    return CanarySpec(name="c", servers=servers or PLACEHOLDER, **kw)  # type: ignore[arg-type]


def job(rule: str | None = "r", body: bytes = b"", method: str = "GET") -> Job:
    from sidecar.shadow.types import Body

    b = None
    if body:
        b = Body()
        b.chunks.append(body)
        b.length = len(body)
    request = ClientRequest(
        method=method,
        raw_path=b"/p",
        query_string=b"",
        headers=[(b"host", b"app")],
        client="10.0.0.1",
        scheme="http",
    )
    return Job(request, b, rule)


class Events:
    def __init__(self) -> None:
        self.infos: list[MirrorInfo] = []

    def __call__(self, info: MirrorInfo) -> None:
        self.infos.append(info)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for i in self.infos if i.outcome is outcome)


def settled(pool: CanaryPool) -> bool:
    s = pool.stats()
    return s.dispatched == s.completed + s.failed + s.panicked


# --- pure parts ---------------------------------------------------------------------------


def test_smooth_weighted_round_robin_is_nginx_sequence() -> None:
    wrr = SmoothWeightedRoundRobin([5, 1, 1])
    assert [wrr.pick() for _ in range(7)] == [0, 0, 1, 0, 2, 0, 0]
    wrr = SmoothWeightedRoundRobin([3, 1])
    assert Counter(wrr.pick() for _ in range(400)) == {0: 300, 1: 100}


@pytest.mark.parametrize(
    ("weights", "workers", "shares"),
    [
        ([1], 8, [8]),
        ([1, 1], 8, [4, 4]),
        ([2, 1], 8, [5, 3]),
        ([1, 1, 1], 3, [1, 1, 1]),
        ([10, 1], 4, [3, 1]),
        ([1, 1, 1], 2, None),
    ],
)
def test_connection_shares_sum_to_workers(
    weights: list[int], workers: int, shares: list[int] | None
) -> None:
    got = connection_shares(weights, workers)
    assert got == shares
    if got is not None:
        assert sum(got) == workers


# --- pool with a custom chain --------------------------------------------------------------


async def test_rate_cap_drops_excess_as_dropped_rate() -> None:
    async def chain(req: ShadowRequest) -> int:
        return 200

    events = Events()
    spec = canary_spec(rate=RateSpec(burst=5, per_second=0.001), queue=100)
    pool = CanaryPool(spec, observe=events, chain=chain)
    outcomes = Counter(admit(pool, job()) for _ in range(20))
    assert outcomes == {Outcome.DISPATCHED: 5, Outcome.DROPPED_RATE: 15}
    await wait_until(lambda: pool.stats().completed == 5)
    assert pool.stats().dropped_rate == 15
    await pool.aclose()


async def test_rate_bucket_refills_continuously() -> None:
    async def chain(req: ShadowRequest) -> int:
        return 200

    pool = CanaryPool(canary_spec(rate=RateSpec(burst=1, per_second=50.0)), chain=chain)
    assert admit(pool, job()) is Outcome.DISPATCHED
    assert admit(pool, job()) is Outcome.DROPPED_RATE
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await wait_until(lambda: loop.time() - t0 > 0.03)  # > 1 token at 50/s
    assert admit(pool, job()) is Outcome.DISPATCHED
    await pool.aclose(drain=5)


async def test_queue_zero_admits_only_when_a_worker_is_idle() -> None:
    gate = asyncio.Event()

    async def chain(req: ShadowRequest) -> int:
        await gate.wait()
        return 200

    pool = CanaryPool(canary_spec(workers=2, queue=0), chain=chain)
    pool.start()
    await wait_until(lambda: pool.busy_workers == 0, what="workers parked")
    assert admit(pool, job()) is Outcome.DISPATCHED
    assert admit(pool, job()) is Outcome.DISPATCHED
    assert admit(pool, job()) is Outcome.DROPPED_FULL
    assert pool.busy_workers == 2 and pool.queue_depth == 0
    gate.set()
    await wait_until(lambda: pool.stats().completed == 2)
    await wait_until(lambda: pool.busy_workers == 0)
    assert admit(pool, job()) is Outcome.DISPATCHED
    await pool.aclose(drain=5)
    assert pool.stats().completed == 3


async def test_full_queue_drops_and_counts() -> None:
    gate = asyncio.Event()

    async def chain(req: ShadowRequest) -> int:
        await gate.wait()
        return 200

    pool = CanaryPool(canary_spec(workers=1, queue=3), chain=chain)
    pool.start()
    await wait_until(lambda: pool.busy_workers == 0)
    outcomes = Counter(admit(pool, job()) for _ in range(10))
    assert outcomes == {Outcome.DISPATCHED: 4, Outcome.DROPPED_FULL: 6}
    assert pool.queue_depth == 3
    gate.set()
    await pool.aclose(drain=5)
    assert pool.stats().completed == 4


async def test_job_expired_in_queue_is_not_sent() -> None:
    sent: list[ShadowRequest] = []

    async def chain(req: ShadowRequest) -> int:
        sent.append(req)
        return 200

    events = Events()
    pool = CanaryPool(canary_spec(workers=1, queue=5, timeout_s=0.05), observe=events, chain=chain)
    for _ in range(3):
        assert admit(pool, job()) is Outcome.DISPATCHED
    # The loop is stalled (as under heavy load) past every job's deadline before any
    # worker runs: the jobs sat in the queue too long.
    time.sleep(0.1)
    await wait_until(lambda: pool.stats().failed == 3)
    assert sent == []
    assert {i.error for i in events.infos if i.outcome is Outcome.FAILED} == {ERR_EXPIRED}
    await pool.aclose()


async def test_chain_exception_is_panicked_logged_and_worker_survives(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def chain(req: ShadowRequest) -> int:
        if req.rule == "boom":
            raise RuntimeError("chain bug")
        return 201

    events = Events()
    pool = CanaryPool(canary_spec(workers=2), observe=events, chain=chain)
    with caplog.at_level(logging.ERROR, logger="sidecar.mirror"):
        for _ in range(5):
            admit(pool, job("boom"))
        await wait_until(lambda: pool.stats().panicked == 5)
    assert pool.alive_workers == 2
    for _ in range(4):
        admit(pool, job("ok"))
    await wait_until(lambda: pool.stats().completed == 4)
    assert len([r for r in caplog.records if r.exc_info]) == 5  # once each, with traceback
    panics = [i for i in events.infos if i.outcome is Outcome.PANICKED]
    assert all(i.error == "RuntimeError: chain bug" for i in panics)
    assert {i.status for i in events.infos if i.outcome is Outcome.COMPLETED} == {201}
    await pool.aclose()
    assert settled(pool)


async def test_observe_errors_are_logged_not_counted_twice(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def chain(req: ShadowRequest) -> int:
        return 200

    def observe(info: MirrorInfo) -> None:
        raise ValueError("hook bug")

    pool = CanaryPool(canary_spec(), observe=observe, chain=chain)
    with caplog.at_level(logging.ERROR, logger="sidecar.mirror"):
        for _ in range(3):
            admit(pool, job())
        await wait_until(lambda: pool.stats().completed == 3)
        s = pool.stats()
        assert (s.dispatched, s.completed, s.panicked) == (3, 3, 0)
        # Six failing calls: the first logged with its traceback, the other five counted and
        # summarized (at aclose() here, as the summary interval has not passed).
        assert len(caplog.records) == 1 and caplog.records[0].exc_info is not None
        await pool.aclose()
    assert len(caplog.records) == 2 and caplog.records[1].exc_info is None
    assert "observe hook raised 5 more times" in caplog.records[1].getMessage()


async def test_aclose_drains_or_abandons_and_invariant_holds() -> None:
    gate = asyncio.Event()

    async def chain(req: ShadowRequest) -> int:
        await gate.wait()
        return 200

    pool = CanaryPool(canary_spec(workers=1, queue=10), chain=chain)
    for _ in range(5):
        admit(pool, job())
    asyncio.get_running_loop().call_soon(gate.set)
    await pool.aclose(drain=5.0)
    assert pool.stats().completed == 5

    gate2 = asyncio.Event()

    async def stuck(req: ShadowRequest) -> int:
        await gate2.wait()
        return 200

    events = Events()
    pool = CanaryPool(canary_spec(workers=1, queue=10), observe=events, chain=stuck)
    for _ in range(5):
        admit(pool, job())
    await wait_until(lambda: pool.queue_depth == 4)
    await pool.aclose(drain=0.05)
    s = pool.stats()
    assert (s.dispatched, s.failed) == (5, 5)
    assert {i.error for i in events.infos if i.outcome is Outcome.FAILED} == {ERR_ABANDONED}
    assert admit(pool, job()) is Outcome.DROPPED_FULL  # closed: counted, never lost


# --- pool against real canaries ------------------------------------------------------------


async def test_completed_with_status_and_duration_response_drained() -> None:
    events = Events()
    async with RecordingCanary(status=503, response_body=b"x" * 100_000) as canary:
        pool = CanaryPool(canary_spec(canary), observe=events)
        admit(pool, job(body=b"hello", method="POST"))
        await wait_until(lambda: pool.stats().completed == 1)
        req = canary.requests[0]
        assert (req.method, req.target, req.body) == (b"POST", b"/p", b"hello")
        assert req.header(b"content-length") == b"5"
        done = next(i for i in events.infos if i.outcome is Outcome.COMPLETED)
        assert done.status == 503 and done.duration is not None and done.duration > 0
        # drained: the connection went back to the pool and is reused
        admit(pool, job())
        await wait_until(lambda: pool.stats().completed == 2)
        assert canary.connections_total == 1
        await pool.aclose()


@pytest.mark.parametrize(("behaviour", "reason"), [("reset", "reset"), ("close", "reset")])
async def test_reset_canary_ends_as_failed(behaviour: str, reason: str) -> None:
    events = Events()
    async with RecordingCanary(behaviour) as canary:  # type: ignore[arg-type]
        pool = CanaryPool(canary_spec(canary), observe=events)
        admit(pool, job())
        await wait_until(lambda: pool.stats().failed == 1)
        assert [i.error for i in events.infos if i.outcome is Outcome.FAILED] == [reason]
        await pool.aclose()


async def test_dead_canary_ends_as_failed_connect() -> None:
    canary = await RecordingCanary().start()
    await canary.aclose()  # nothing listens on that port any more
    events = Events()
    pool = CanaryPool(canary_spec(canary), observe=events)
    admit(pool, job())
    await wait_until(lambda: pool.stats().failed == 1)
    assert [i.error for i in events.infos if i.outcome is Outcome.FAILED] == ["connect"]
    await pool.aclose()


async def test_hung_canary_ends_at_the_timeout() -> None:
    events = Events()
    async with RecordingCanary("hold") as canary:
        pool = CanaryPool(canary_spec(canary, timeout_s=0.2), observe=events)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        admit(pool, job())
        await wait_until(lambda: pool.stats().failed == 1)
        elapsed = loop.time() - t0
        assert 0.15 <= elapsed < 2.0
        assert [i.error for i in events.infos if i.outcome is Outcome.FAILED] == ["timeout"]
        await pool.aclose()


async def test_weighted_round_robin_proportions_on_real_servers() -> None:
    async with RecordingCanary() as a, RecordingCanary() as b:
        pool = CanaryPool(canary_spec(a, b, weights=(3, 1), queue=100))
        for _ in range(40):
            assert admit(pool, job()) is Outcome.DISPATCHED
        await wait_until(lambda: pool.stats().completed == 40)
        assert (len(a.requests), len(b.requests)) == (30, 10)
        await pool.aclose()


@pytest.mark.parametrize("servers", [1, 2, 3])
async def test_connections_and_requests_never_exceed_workers(servers: int) -> None:
    workers = 3
    canaries = [await RecordingCanary("delay", delay_s=0.01).start() for _ in range(servers)]
    try:
        pool = CanaryPool(canary_spec(*canaries, workers=workers, queue=200))
        for _ in range(120):
            admit(pool, job())
        await wait_until(lambda: pool.stats().completed == 120)
        assert sum(c.max_connections_open for c in canaries) <= workers
        assert sum(c.max_in_flight for c in canaries) <= workers
        assert pool.open_connections <= workers
        await pool.aclose()
        await wait_until(lambda: sum(c.connections_open for c in canaries) == 0)
    finally:
        for c in canaries:
            await c.aclose()


async def test_more_servers_than_workers_still_bounded() -> None:
    canaries = [await RecordingCanary("delay", delay_s=0.005).start() for _ in range(3)]
    try:
        pool = CanaryPool(canary_spec(*canaries, workers=2, queue=100))
        for _ in range(30):
            admit(pool, job())
        await wait_until(lambda: pool.stats().completed == 30)
        # a throw-away connection per request, closed right after it: open connections are
        # exactly the requests in flight (counted client-side; the server notices closes late)
        assert sum(c.connections_total for c in canaries) == 30
        assert all(c.max_in_flight <= 2 for c in canaries)
        assert pool.open_connections == 0
        await pool.aclose()
    finally:
        for c in canaries:
            await c.aclose()


# --- RequestTees ---------------------------------------------------------------------------


def begin(
    targets: list[tuple[CanaryPool, str | None]], content_length: int | None
) -> RequestTees | None:
    return RequestTees.begin(
        targets,
        "POST",
        b"/up",
        b"",
        [(b"host", b"app")],
        "10.0.0.1",
        "http",
        content_length,
    )


async def test_tees_known_oversize_dropped_at_once_and_body_off_admitted_at_once() -> None:
    async with RecordingCanary() as canary:
        small = CanaryPool(canary_spec(canary, max_body_bytes=10))
        nobody = CanaryPool(canary_spec(canary, body=False))
        big = CanaryPool(canary_spec(canary, max_body_bytes=100))
        tees = begin([(small, "r"), (nobody, "r"), (big, "r")], content_length=50)
        assert small.stats().dropped_oversize == 1
        assert nobody.stats().dispatched == 1
        assert tees is not None and tees.pending
        tees.feed(b"x" * 50)
        tees.finish()
        assert big.stats().dispatched == 1
        await wait_until(lambda: len(canary.requests) == 2)
        bodies = sorted(r.body for r in canary.requests)
        assert bodies == [b"", b"x" * 50]
        for p in (small, nobody, big):
            await p.aclose()


async def test_tees_streamed_body_shares_chunks_and_drops_when_outgrown() -> None:
    async def chain(req: ShadowRequest) -> int:
        return 200

    p4 = CanaryPool(canary_spec(max_body_bytes=4), chain=chain)
    p8 = CanaryPool(canary_spec(max_body_bytes=8), chain=chain)
    tees = begin([(p8, "a"), (p4, "b")], content_length=None)
    assert tees is not None
    c1, c2 = b"abc", b"defg"
    tees.feed(c1)
    tees.feed(c2)
    assert p4.stats().dropped_oversize == 1
    assert tees._body.chunks[0] is c1 and tees._body.chunks[1] is c2  # no copies
    tees.feed(b"h")  # exactly 8: still mirrored
    tees.finish()
    assert p8.stats().dispatched == 1
    tees.abort()  # after finish: nothing pending, nothing counted
    assert p8.stats().dropped_aborted == 0
    await p4.aclose()
    await p8.aclose(drain=5)


async def test_tees_abort_drops_pending_as_aborted() -> None:
    async def chain(req: ShadowRequest) -> int:
        return 200

    pool = CanaryPool(canary_spec(), chain=chain)
    tees = begin([(pool, "r")], content_length=100)
    assert tees is not None
    tees.feed(b"partial")
    tees.abort()
    s = pool.stats()
    assert (s.dropped_aborted, s.dispatched) == (1, 0)
    assert not tees.pending
    await pool.aclose()


async def test_tees_bodiless_request_admitted_at_begin() -> None:
    async def chain(req: ShadowRequest) -> int:
        return 200

    pool = CanaryPool(canary_spec(), chain=chain)
    assert begin([(pool, "r")], content_length=0) is None
    assert pool.stats().dispatched == 1
    await pool.aclose(drain=5)


# --- what a misbehaving canary costs the request path --------------------------------------


async def test_expired_queued_jobs_free_room_at_admission_while_workers_stay_busy() -> None:
    """Queued jobs past their deadline are settled as `failed` when the next tee arrives,
    not only when a worker frees up: a stuck canary's queue does not hold dead jobs."""
    release = asyncio.Event()

    async def stubborn(req: ShadowRequest) -> int:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # outlives its deadline: the worker stays busy
        return 200

    events = Events()
    pool = CanaryPool(
        canary_spec(workers=1, queue=2, timeout_s=0.1), observe=events, chain=stubborn
    )
    loop = asyncio.get_running_loop()
    try:
        assert admit(pool, job()) is Outcome.DISPATCHED
        await wait_until(lambda: pool.busy_workers == 1 and pool.queue_depth == 0)
        assert admit(pool, job()) is Outcome.DISPATCHED
        assert admit(pool, job()) is Outcome.DISPATCHED
        assert admit(pool, job()) is Outcome.DROPPED_FULL
        assert pool.queue_depth == 2
        past = loop.time() + 0.1
        await wait_until(lambda: loop.time() > past, what="the queued jobs' deadline")
        assert pool.busy_workers == 1  # still stuck on the first job

        assert admit(pool, job()) is Outcome.DISPATCHED
        assert pool.queue_depth == 1
        expired = [i.error for i in events.infos if i.outcome is Outcome.FAILED]
        assert expired == [ERR_EXPIRED, ERR_EXPIRED]
    finally:
        release.set()
        await pool.aclose(drain=1.0)
    assert settled(pool)


async def test_dead_canary_tees_fail_at_admission_during_back_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Once the only server refused a connect, tees in its back-off window are settled on
    the request path (dispatched, then failed "connect") without waking a worker."""
    import socket

    import sidecar.shadow.balance

    monkeypatch.setattr(sidecar.shadow.balance, "CONNECT_BACKOFF_S", 30.0)  # outlasts the test

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))  # bound, never listening: connects are refused
    endpoint = Endpoint(scheme="http", host="127.0.0.1", port=sock.getsockname()[1])
    spec = CanarySpec(name="c", servers=(ServerSpec(endpoint=endpoint),), workers=2, queue=8)
    events = Events()
    pool = CanaryPool(spec, observe=events)
    try:
        admit(pool, job())
        await wait_until(lambda: pool.stats().failed == 1)
        for n in range(2, 12):
            assert admit(pool, job()) is Outcome.DISPATCHED
            s = pool.stats()
            assert (s.dispatched, s.failed) == (n, n)  # settled before any await
            assert pool.queue_depth == 0
        assert [i.error for i in events.infos if i.outcome is Outcome.FAILED] == ["connect"] * 11
    finally:
        await pool.aclose()
        sock.close()
    assert settled(pool)


def _job_for(path: bytes) -> Job:
    request = ClientRequest(
        method="GET",
        raw_path=path,
        query_string=b"",
        headers=[(b"host", b"app")],
        client="10.0.0.1",
        scheme="http",
    )
    return Job(request, None, "r")


async def _order_sent(wait_until_oldest_remaining: float | None) -> list[bytes]:
    """One worker busy with /a while /b, /c, /d queue; optionally wait until the oldest
    queued job has only `wait_until_oldest_remaining` seconds left; the order sent."""
    sent: list[bytes] = []
    gates = {b"/a": asyncio.Event()}

    async def chain(req: ShadowRequest) -> int:
        sent.append(req.target)
        gate = gates.get(req.target)
        if gate is not None:
            await gate.wait()
        return 200

    pool = CanaryPool(canary_spec(workers=1, queue=3, timeout_s=2.0), chain=chain)
    loop = asyncio.get_running_loop()
    try:
        admit(pool, _job_for(b"/a"))
        await wait_until(lambda: sent == [b"/a"])
        for path in (b"/b", b"/c", b"/d"):
            assert admit(pool, _job_for(path)) is Outcome.DISPATCHED
        if wait_until_oldest_remaining is not None:
            oldest = pool._jobs[0].deadline
            await wait_until(lambda: oldest - loop.time() < wait_until_oldest_remaining)
        gates[b"/a"].set()
        await wait_until(lambda: len(sent) == 4, what="every queued job sent")
    finally:
        await pool.aclose(drain=1.0)
    return sent


async def test_queue_is_fifo_while_it_keeps_up() -> None:
    assert await _order_sent(None) == [b"/a", b"/b", b"/c", b"/d"]


async def test_backed_up_queue_serves_the_newest_job_first() -> None:
    """Adaptive LIFO: once the oldest queued job has used half its timeout (2 s), the
    worker takes the newest, which has time to complete."""
    sent = await _order_sent(0.9)
    assert sent[:2] == [b"/a", b"/d"]
    assert sorted(sent) == [b"/a", b"/b", b"/c", b"/d"]


async def test_closed_pool_refuses_without_starting_workers() -> None:
    pool = CanaryPool(canary_spec(workers=3))
    await pool.aclose()
    assert admit(pool, job()) is Outcome.DROPPED_FULL
    assert pool.alive_workers == 0


async def test_unequal_weights_still_reach_the_server_that_is_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Round robin over (3, 1) with the weight-3 server in back-off: the live one gets
    every tee rather than some failing as "connect" while it is reachable."""
    import socket

    from sidecar.shadow import balance

    # A window longer than the test: on a loaded machine eight tees can outlast 50 ms.
    monkeypatch.setattr(balance, "CONNECT_BACKOFF_S", 30.0)

    dead = socket.socket()
    dead.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    dead.bind(("127.0.0.1", 0))  # never listening: refused
    dead_ep = Endpoint(scheme="http", host="127.0.0.1", port=dead.getsockname()[1])
    async with RecordingCanary() as live:
        servers = (ServerSpec(endpoint=dead_ep, weight=3), ServerSpec(endpoint=live.endpoint))
        spec = CanarySpec(name="c", servers=servers, workers=1, queue=0, timeout_s=5.0)
        events = Events()
        pool = CanaryPool(spec, observe=events)
        try:
            for n in range(1, 9):
                assert admit(pool, job()) is Outcome.DISPATCHED
                await wait_until(lambda n=n: pool.stats().completed + pool.stats().failed == n)
        finally:
            await pool.aclose()
            dead.close()
    # Only the first pick of the refusing server fails; the back-off then skips it.
    assert pool.stats().failed == 1
    assert pool.stats().completed == 7
