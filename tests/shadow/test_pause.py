"""`pause after N failures for D`: a failing canary is paused, probed and resumed.

Real loopback canaries: a fault server that resets (and later answers), a port that
refuses (and later listens). Durations are short (200 ms) and every wait polls with a
deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from prometheus_client import CollectorRegistry

from sidecar import Mirror, Upstream
from sidecar.model.config import CanarySpec, PauseSpec, ServerSpec
from sidecar.model.endpoint import Endpoint
from sidecar.shadow.metrics import Metrics
from sidecar.shadow.pool import CanaryPool
from sidecar.shadow.types import ClientRequest, Job, MirrorInfo, Outcome, Stats
from tests.support.engine import admit
from tests.support.faults import FaultServer
from tests.support.servers import wait_until

PAUSE_S = 0.2


def job() -> Job:
    request = ClientRequest(
        method="GET",
        raw_path=b"/p",
        query_string=b"",
        headers=[(b"host", b"app")],
        client="10.0.0.1",
        scheme="http",
    )
    return Job(request, None, "r")


def spec(port: int, *, failures: int = 3, workers: int = 1) -> CanarySpec:
    return CanarySpec(
        name="c",
        servers=(ServerSpec(endpoint=Endpoint(scheme="http", host="127.0.0.1", port=port)),),
        workers=workers,
        queue=64,
        timeout_s=5.0,
        pause=PauseSpec(failures=failures, duration_s=PAUSE_S),
    )


def settled(s: Stats) -> int:
    return s.completed + s.failed + s.panicked


def every_tee_one_outcome(s: Stats, tees: int) -> None:
    assert s.dispatched == settled(s)
    drops = s.dropped_full + s.dropped_rate + s.dropped_paused + s.dropped_oversize
    assert s.dispatched + drops == tees


async def probe_until(pool: CanaryPool, done: object, what: str) -> int:
    """Offer a tee whenever the pool would take one, until `done()`; returns tees offered."""
    offered = 0

    def step() -> bool:
        nonlocal offered
        if not done():  # type: ignore[operator]
            admit(pool, job())
            offered += 1
        return bool(done())  # type: ignore[operator]

    await wait_until(step, what=what)
    return offered


async def test_resetting_canary_is_paused_dropped_probed_and_resumed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.mirror")
    infos: list[MirrorInfo] = []
    async with FaultServer("reset_early") as srv:
        pool = CanaryPool(spec(srv.port), observe=infos.append)
        tees = 0
        try:
            for n in range(1, 4):  # one at a time: three consecutive failures
                admit(pool, job())
                tees += 1
                await wait_until(lambda n=n: pool.stats().failed == n)  # type: ignore[misc]
            assert pool.paused
            accepted = srv.connections_total
            assert accepted == 3

            # Paused: tees end at admission, no connection is attempted.
            for _ in range(50):
                assert admit(pool, job()) is Outcome.DROPPED_PAUSED
                tees += 1
            assert pool.stats().dropped_paused == 50
            assert srv.connections_total == accepted
            assert [i.outcome for i in infos].count(Outcome.DROPPED_PAUSED) == 50

            # The canary recovers; after the pause one tee goes out as the probe, and its
            # completion resumes the canary.
            srv.fault = "answer"
            tees += await probe_until(pool, lambda: not pool.paused, "the canary to resume")
            assert srv.connections_total == accepted + 1  # exactly one probe
            assert pool.stats().completed == 1

            # Running again: tees are sent.
            for _ in range(5):
                assert admit(pool, job()) is Outcome.DISPATCHED
                tees += 1
            await wait_until(lambda: pool.stats().completed == 6)
        finally:
            await pool.aclose()
    every_tee_one_outcome(pool.stats(), tees)
    lines = [r.getMessage() for r in caplog.records if r.name == "sidecar.mirror"]
    paused = [m for m in lines if "paused for" in m]
    assert len(paused) == 1 and "after 3 consecutive failed tees" in paused[0]
    assert sum("resumed: the probe completed" in m for m in lines) == 1
    assert not any("dropped_paused" in m and "paused for" not in m for m in lines)


def bound_not_listening() -> socket.socket:
    """A port that refuses connections and that no other test can take meanwhile."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def test_a_failed_probe_pauses_again_and_a_dead_canary_comes_back() -> None:
    sock = bound_not_listening()
    pool = CanaryPool(spec(sock.getsockname()[1], failures=2, workers=4))
    loop = asyncio.get_running_loop()
    accepts = 0

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal accepts
        accepts += 1
        try:
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    tees = 0
    try:
        # Concurrent tees to a refusing port: the pause comes after the second failure; the
        # tees admitted before it still end (failed), each with one outcome.
        for _ in range(20):
            admit(pool, job())
            tees += 1
        await wait_until(lambda: pool.paused and pool.stats().dispatched == settled(pool.stats()))
        pause = pool._pause
        assert pause is not None
        first_until = pause.until

        # The pause ends; the probe is refused too (tried despite the connect back-off):
        # paused again, for another PAUSE_S from the probe's failure.
        failed = pool.stats().failed
        tees += await probe_until(pool, lambda: pool.stats().failed > failed, "the probe to fail")
        assert pool.paused and pause.probe is None and pause.until > first_until

        # The canary starts listening: the next probe completes and the canary resumes.
        sock.listen()
        server = await asyncio.start_server(answer, sock=sock)
        try:
            tees += await probe_until(pool, lambda: not pool.paused, "the canary to resume")
            assert accepts == 1
            assert loop.time() >= pause.until
        finally:
            server.close()
            await server.wait_closed()
    finally:
        await pool.aclose()
        sock.close()
    s = pool.stats()
    every_tee_one_outcome(s, tees)
    assert s.completed == 1 and s.dropped_paused > 0


async def test_without_the_statement_nothing_is_paused() -> None:
    sock = bound_not_listening()
    port = sock.getsockname()[1]
    plain = CanarySpec(
        name="c",
        servers=(ServerSpec(endpoint=Endpoint(scheme="http", host="127.0.0.1", port=port)),),
        workers=1,
    )
    pool = CanaryPool(plain)
    try:
        for _ in range(30):
            admit(pool, job())
        await wait_until(lambda: pool.stats().failed == 30)
        assert not pool.paused and pool.stats().dropped_paused == 0
    finally:
        await pool.aclose()
        sock.close()


async def test_the_paused_gauge_follows_the_pause() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)

    def gauge() -> float | None:
        return registry.get_sample_value("sidecar_mirror_paused", {"canary": "c"})

    async with FaultServer("reset_early") as srv:
        pool = CanaryPool(spec(srv.port, failures=1), observe=metrics.observe)
        metrics.track_pool(pool)
        try:
            assert gauge() == 0
            admit(pool, job())
            await wait_until(lambda: pool.paused)
            assert gauge() == 1
            assert admit(pool, job()) is Outcome.DROPPED_PAUSED
            sample = {"canary": "c", "rule": "r", "outcome": "dropped_paused"}
            assert registry.get_sample_value("sidecar_mirror_requests_total", sample) == 1
            srv.fault = "answer"
            await probe_until(pool, lambda: not pool.paused, "the canary to resume")
            assert gauge() == 0
        finally:
            await pool.aclose()
            metrics.untrack_pool(pool)
    assert gauge() is None


def test_library_pause_settings() -> None:
    mirror = Mirror(pause_after=5, pause_for=0.5).use(Upstream("http://127.0.0.1:9"))

    async def app(scope: object, receive: object, send: object) -> None:
        return None

    mirror.wrap(app)
    (pool,) = mirror.pools
    assert pool.spec.pause == PauseSpec(failures=5, duration_s=0.5)
    plain = Mirror().use(Upstream("http://127.0.0.1:9"))
    plain.wrap(app)
    assert plain.pools[0].spec.pause is None
    with pytest.raises(ValueError, match="pause_after"):
        Mirror(pause_after=0)
    with pytest.raises(ValueError, match="pause_for"):
        Mirror(pause_after=1, pause_for=0)
