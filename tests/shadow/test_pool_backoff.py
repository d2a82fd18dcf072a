"""CanaryPool's connect back-off: a refusing server is skipped for a short, growing window."""

from __future__ import annotations

import asyncio
import socket

from sidecar.model.config import CanarySpec, ServerSpec
from sidecar.model.endpoint import Endpoint
from sidecar.shadow.balance import CONNECT_BACKOFF_MAX_S, CONNECT_BACKOFF_S
from sidecar.shadow.pool import CanaryPool
from sidecar.shadow.types import ClientRequest, Job, MirrorInfo, Outcome
from tests.support.engine import admit
from tests.support.servers import wait_until

RESPONSE = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"


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


def spec(*ports: int) -> CanarySpec:
    servers = tuple(
        ServerSpec(endpoint=Endpoint(scheme="http", host="127.0.0.1", port=p)) for p in ports
    )
    return CanarySpec(name="c", servers=servers, workers=2, queue=64, timeout_s=5.0)


def bound_not_listening() -> socket.socket:
    """A port that refuses connections and that no other test can take meanwhile."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while await reader.readuntil(b"\r\n\r\n"):
            writer.write(RESPONSE)
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def test_refused_server_backs_off_then_heals() -> None:
    infos: list[MirrorInfo] = []
    sock = bound_not_listening()
    port = sock.getsockname()[1]
    pool = CanaryPool(spec(port), observe=infos.append)
    try:
        admit(pool, job())
        await wait_until(lambda: pool.stats().failed == 1)
        server = pool._servers[0]
        assert server.backoff == CONNECT_BACKOFF_S
        assert server.down_until > asyncio.get_running_loop().time() - 1

        # More refusals: every tee still ends as failed (connect), the window only grows.
        for _ in range(20):
            admit(pool, job())
        await wait_until(lambda: pool.stats().failed == 21)
        failures = [i.error for i in infos if i.outcome is Outcome.FAILED]
        assert failures == ["connect"] * 21
        assert CONNECT_BACKOFF_S <= server.backoff <= CONNECT_BACKOFF_MAX_S

        # The canary comes back on the same port: once the window is over, mirrors complete
        # and the window is reset.
        sock.listen()
        server_obj = await asyncio.start_server(answer, sock=sock)
        loop = asyncio.get_running_loop()

        def healed() -> bool:
            if loop.time() >= server.down_until and not pool.queue_depth:
                admit(pool, job())
            return pool.stats().completed > 0

        await wait_until(healed, what="a completed mirror after the back-off window")
        assert server.backoff == 0.0
        server_obj.close()
        await server_obj.wait_closed()
    finally:
        await pool.aclose()
        sock.close()
    s = pool.stats()
    assert s.dispatched == s.completed + s.failed + s.panicked


async def test_refusing_server_is_skipped_for_the_others() -> None:
    dead = bound_not_listening()
    live = await asyncio.start_server(answer, "127.0.0.1", 0)
    live_port = live.sockets[0].getsockname()[1]
    pool = CanaryPool(spec(dead.getsockname()[1], live_port))
    try:
        for _ in range(40):
            admit(pool, job())
        await wait_until(lambda: pool.stats().completed + pool.stats().failed == 40)
        # Round robin alternates, but the refusing server is skipped while backing off:
        # far more than half of the mirrors complete.
        assert pool.stats().completed > 30
    finally:
        await pool.aclose()
        live.close()
        await live.wait_closed()
        dead.close()


async def test_after_its_window_one_trial_tries_a_dead_server_not_every_tee() -> None:
    sock = bound_not_listening()
    wide = CanarySpec(
        name="c",
        servers=spec(sock.getsockname()[1]).servers,
        workers=8,
        queue=64,
        timeout_s=5.0,
    )
    pool = CanaryPool(wide)
    loop = asyncio.get_running_loop()
    try:
        admit(pool, job())
        await wait_until(lambda: pool.stats().failed == 1)
        server = pool._servers[0]
        await wait_until(lambda: loop.time() >= server.down_until, what="the window's end")
        # Eight tees arrive before any of them reaches the server: the first is the trial,
        # the other seven are skipped while it runs (before: eight connect attempts).
        for _ in range(8):
            assert admit(pool, job()) is Outcome.DISPATCHED
        await wait_until(lambda: pool.stats().failed == 9)
        assert pool.error_stats()["connect"] == 2
        assert pool.backoff_skips == 7
        assert server.backoff == 2 * CONNECT_BACKOFF_S and not server.on_trial
    finally:
        await pool.aclose()
        sock.close()


async def test_a_trial_that_connects_ends_the_back_off_before_any_answer() -> None:
    sock = bound_not_listening()
    pool = CanaryPool(spec(sock.getsockname()[1]))
    loop = asyncio.get_running_loop()
    held: list[asyncio.StreamWriter] = []

    async def never_answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepted, read, never answered

    try:
        admit(pool, job())
        await wait_until(lambda: pool.stats().failed == 1)
        server = pool._servers[0]
        sock.listen()
        up = await asyncio.start_server(never_answer, sock=sock)
        await wait_until(lambda: loop.time() >= server.down_until, what="the window's end")
        admit(pool, job())  # the trial: it connects, and no answer ever comes
        await wait_until(lambda: len(held) == 1, what="the trial's connection")
        await wait_until(lambda: server.backoff == 0.0 and not server.on_trial)
        admit(pool, job())  # tried too, not skipped as if the server were still refusing
        await wait_until(lambda: len(held) == 2, what="a second connection")
        assert pool.backoff_skips == 0
        assert pool.busy_workers == 2
        up.close()
    finally:
        await pool.aclose()
        sock.close()
        for writer in held:
            writer.close()
