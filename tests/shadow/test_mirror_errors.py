"""Why canary copies fail: the error kinds, sidecar_mirror_errors_total, the rate-limited log.

Real canaries on loopback: a closed port (connect), a server that resets (reset), one that
never answers (timeout), one that answers garbage (protocol), a self-signed TLS server
(tls). The pool reports through `sidecar.prom`'s hook into a fresh registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import socket
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from sidecar import prom
from sidecar.http import http1
from sidecar.http.connection import (
    ClientError,
    ConnectError,
    LocalProtocolError,
    ReadError,
    RemoteProtocolError,
    WriteError,
)
from sidecar.model.config import CanarySpec, ServerSpec
from sidecar.model.endpoint import Endpoint
from sidecar.shadow import balance as pool_module
from sidecar.shadow import errors as mirror_errors
from sidecar.shadow import tees as tees_module
from sidecar.shadow.errors import ThrottledLog, classify
from sidecar.shadow.pool import CanaryPool
from sidecar.shadow.tees import RequestTees
from sidecar.shadow.types import ClientRequest, Job, MirrorInfo, Outcome
from tests.support.engine import admit
from tests.support.faults import FaultServer
from tests.support.servers import RecordingCanary, wait_until

LOGGER = "sidecar.mirror"


def caused(exc: BaseException, cause: BaseException) -> BaseException:
    exc.__cause__ = cause
    return exc


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (caused(ConnectError("x"), ConnectionRefusedError(111, "refused")), "connect"),
        (caused(ConnectError("x"), OSError(113, "No route to host")), "connect"),
        (caused(ConnectError("x"), socket.gaierror(-2, "Name or service not known")), "connect"),
        (caused(ConnectError("x"), TimeoutError()), "connect"),  # the client's connect timeout
        (caused(ConnectError("x"), ssl.SSLCertVerificationError(1, "self-signed")), "tls"),
        (caused(ConnectError("x"), ssl.SSLError(1, "wrong version number")), "tls"),
        (caused(ReadError("x"), ssl.SSLError(1, "bad record mac")), "tls"),
        (caused(ReadError("x"), ssl.SSLEOFError(8, "EOF in violation")), "reset"),
        (caused(ReadError("x"), ConnectionResetError(104, "reset")), "reset"),
        (caused(ReadError("x"), http1.Truncated("ended early")), "reset"),
        (WriteError("x"), "reset"),
        (caused(RemoteProtocolError("x"), http1.ResponseError("bad")), "protocol"),
        (LocalProtocolError("x"), "protocol"),
        (ClientError("pool closed", reason="closed"), "connect"),
        (TimeoutError(), "timeout"),
        (ssl.SSLCertVerificationError(1, "raw"), "tls"),
        (ConnectionResetError(), "reset"),
        (ConnectionRefusedError(), "connect"),
        (http1.ResponseError("raw"), "protocol"),
    ],
)
def test_classify(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


# --- real canaries ------------------------------------------------------------------------


def spec(url: str, *, timeout_s: float = 5.0, workers: int = 2) -> CanarySpec:
    return CanarySpec(
        name="v2",
        servers=(ServerSpec(endpoint=Endpoint.parse(url)),),
        workers=workers,
        queue=64,
        timeout_s=timeout_s,
    )


def job() -> Job:
    request = ClientRequest("GET", b"/p", b"", [(b"host", b"app")], "10.0.0.1", "http")
    return Job(request, None, None)


class Seen:
    """An observe hook: the prom hook on a fresh registry, plus the infos."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = prom.Metrics(self.registry)
        self.infos: list[MirrorInfo] = []

    def __call__(self, info: MirrorInfo) -> None:
        self.infos.append(info)
        self.metrics.observe(info)

    def errors(self, kind: str) -> float:
        v = self.registry.get_sample_value(
            "sidecar_mirror_errors_total", {"canary": "v2", "error": kind}
        )
        return 0.0 if v is None else v

    def all_errors(self) -> dict[str, float]:
        return {k: self.errors(k) for k in mirror_errors.ERROR_KINDS if self.errors(k)}


async def fail_one(url: str, **kw: float) -> tuple[CanaryPool, Seen]:
    seen = Seen()
    pool = CanaryPool(spec(url, **kw), observe=seen)
    seen.metrics.track_pool(pool)
    assert admit(pool, job()) is Outcome.DISPATCHED
    await wait_until(lambda: pool.stats().failed + pool.stats().completed == 1)
    return pool, seen


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens once it is closed


# Long enough that a slow CI machine cannot see the back-off end between two lines of a test.
LONG_BACKOFF_S = 60.0


async def test_refused_port_is_connect_and_backoff_skips_are_not_counted(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "CONNECT_BACKOFF_S", LONG_BACKOFF_S)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        pool, seen = await fail_one(f"http://127.0.0.1:{closed_port()}")
        assert seen.all_errors() == {"connect": 1}
        assert seen.infos[-1].error == "connect" and seen.infos[-1].error_kind == "connect"
        # The server is now in its back-off: this tee fails at once, with no attempt.
        admit(pool, job())
        assert pool.stats().failed == 2 and pool.backoff_skips == 1
        assert seen.infos[-1].error == "connect" and seen.infos[-1].error_kind is None
        assert seen.all_errors() == {"connect": 1}
        # Every kind's series exists for a tracked pool, at 0 until it happens.
        assert (
            seen.registry.get_sample_value(
                "sidecar_mirror_errors_total", {"canary": "v2", "error": "tls"}
            )
            == 0.0
        )
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("canary v2: 'connect' error: ConnectError")
    assert "Connect call failed" in lines[0] or "refused" in lines[0].lower()
    assert caplog.records[0].levelno == logging.WARNING
    await pool.aclose()


@pytest.mark.parametrize("fault", ["reset_early", "close_silently", "reset_cl"])
async def test_reset_or_eof_mid_response_is_reset(fault: str) -> None:
    async with FaultServer(fault) as srv:  # type: ignore[arg-type]
        pool, seen = await fail_one(srv.url)
        assert seen.all_errors() == {"reset": 1}
        assert pool.error_stats()["reset"] == 1
        await pool.aclose()


async def test_canary_silent_past_timeout_is_timeout() -> None:
    async with RecordingCanary("hold") as canary:
        pool, seen = await fail_one(canary.url, timeout_s=0.2)
        assert seen.all_errors() == {"timeout": 1}
        assert seen.infos[-1].error == "timeout"
        canary.release.set()
        await pool.aclose()


@contextlib.asynccontextmanager
async def raw_server(reply: bytes, ssl_context: ssl.SSLContext | None = None) -> AsyncIterator[int]:
    """Reads a request head, writes `reply` verbatim, closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


async def test_garbage_answer_is_protocol() -> None:
    async with raw_server(b"SSH-2.0-OpenSSH_9.6\r\n\r\n") as port:
        pool, seen = await fail_one(f"http://127.0.0.1:{port}")
        assert seen.all_errors() == {"protocol": 1}
        assert seen.infos[-1].error == "protocol"
        await pool.aclose()


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = where / "cert.pem", where / "key.pem"
    args = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"]
    subprocess.run(
        [openssl, *args, "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return cert, key


async def test_self_signed_tls_canary_is_tls(
    self_signed: tuple[Path, Path], caplog: pytest.LogCaptureFixture
) -> None:
    cert, key = self_signed
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert, key)
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        async with raw_server(reply, ctx) as port:
            pool, seen = await fail_one(f"https://127.0.0.1:{port}")
            assert seen.all_errors() == {"tls": 1}
            assert seen.infos[-1].error_kind == "tls"
            await pool.aclose()
    assert any(
        "'tls' error" in r.getMessage() and "CERTIFICATE_VERIFY_FAILED" in r.getMessage()
        for r in caplog.records
    )


# --- the rate-limited log -----------------------------------------------------------------


async def test_many_resets_log_one_line_then_one_summary(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mirror_errors, "SUMMARY_INTERVAL_S", 0.05)
    n = 40
    async with FaultServer("reset_early") as srv:
        seen = Seen()
        pool = CanaryPool(spec(srv.url, workers=4), observe=seen)
        with caplog.at_level(logging.WARNING, logger=LOGGER):
            for _ in range(n):
                admit(pool, job())
            await wait_until(lambda: pool.stats().failed == n)
            assert seen.errors("reset") == n
            await wait_until(lambda: len(caplog.records) >= 2, what="the summary line")
            await pool.aclose()
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0].startswith("canary v2: 'reset' error: ReadError")
    summaries = lines[1:]
    counts = [int(s.split()[2]) for s in summaries]
    assert all(
        s.startswith("canary v2: ") and "more 'reset' errors in the last 0.05 s: " in s
        for s in summaries
    )
    assert sum(counts) == n - 1  # every error after the first is in exactly one summary


async def test_throttled_log_summarizes_per_key_and_relogs_after_quiet(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(mirror_errors, "SUMMARY_INTERVAL_S", 0.02)
    tl = ThrottledLog(
        logging.getLogger(LOGGER),
        "v2",
        first=lambda c, k, t: f"first {c} {k} {t}",
        summary=lambda c, k, n, i, t: f"summary {c} {k} {n} {t}",
    )
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        for i in range(1000):
            tl.report("connect", ConnectionRefusedError(f"#{i}"))
        tl.report("reset", "peer reset")
        assert [r.getMessage() for r in caplog.records] == [
            "first v2 connect ConnectionRefusedError: #0",
            "first v2 reset peer reset",
        ]
        assert tl.pending("connect") == 999
        await wait_until(lambda: len(caplog.records) == 3, what="the summary")
        assert (
            caplog.records[2].getMessage() == "summary v2 connect 999 ConnectionRefusedError: #999"
        )
        # Quiet for a whole interval: the next one is a first occurrence again, at once.
        tally = tl._tallies["connect"]
        await wait_until(lambda: tally.timer is None, what="the quiet interval")
        tl.report("connect", "back")
        assert caplog.records[-1].getMessage() == "first v2 connect back"
        tl.flush()
    assert len(caplog.records) == 4


async def test_tees_in_the_backoff_are_settled_before_a_job_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """RequestTees.begin (the proxy's way in) settles a tee to a canary in its connect
    back-off without building a Job or a ClientRequest, counted exactly as dispatch() would
    count it (issue 20); with no tee left pending, begin returns None."""
    monkeypatch.setattr(pool_module, "CONNECT_BACKOFF_S", LONG_BACKOFF_S)
    pool, seen = await fail_one(f"http://127.0.0.1:{closed_port()}")
    built: list[object] = []
    monkeypatch.setattr(tees_module, "ClientRequest", lambda *a: built.append(a))
    for _ in range(3):
        tees = RequestTees.begin([(pool, "r")], "GET", b"/", b"", [], None, "http", 0)
        assert tees is None
    assert built == []
    assert pool.stats().dispatched == 4 and pool.stats().failed == 4
    assert pool.backoff_skips == 3
    assert [(i.outcome, i.error, i.error_kind) for i in seen.infos[-6:]] == [
        (Outcome.DISPATCHED, None, None),
        (Outcome.FAILED, "connect", None),
    ] * 3
    assert seen.all_errors() == {"connect": 1}  # the one attempt; skips are no attempts
    await pool.aclose()


async def test_connect_summary_tells_attempts_from_backoff_skips(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pool_module, "CONNECT_BACKOFF_S", LONG_BACKOFF_S)
    seen = Seen()
    pool = CanaryPool(spec(f"http://127.0.0.1:{closed_port()}"), observe=seen)
    loop = asyncio.get_running_loop()
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        admit(pool, job())
        await wait_until(lambda: pool.stats().failed == 1)
        for _ in range(5):  # the server backs off: failed at once, no attempt
            admit(pool, job())
        assert pool.backoff_skips == 5
        # End the window now (rather than waiting for it): the next tee is an attempt again.
        pool._servers[0].down_until = pool._down_until = loop.time()
        admit(pool, job())
        await wait_until(lambda: pool.stats().failed == 7)
        await pool.aclose()  # flushes the pending summary
    assert seen.all_errors() == {"connect": 2}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2
    assert lines[1].startswith("canary v2: 1 more 'connect' errors in the last 10 s: ConnectError")
    assert lines[1].endswith("(and 5 tees failed at once during the connect back-off)")
