"""Misbehaving HTTP/1.1 servers on raw loopback sockets, for fault-injection tests.

    async with FaultServer("endless") as srv:        # 127.0.0.1:<free port>
        srv.url, srv.port, srv.requests, srv.conns
        srv.fault = "answer"                          # change behaviour at any time

Requests are parsed with h11 (so what was *received* is exact); responses are written as
raw bytes so they can be wrong on purpose. With `by_path=True` the fault is the request
path's first segment when that names one (`GET /truncated_cl/x`): one server can play
every fault, which lets one `sidecar serve` process be reused across tests.

Faults:
    answer            200, `Content-Length`, keep-alive (a well-behaved server)
    silent            read the request, never answer (until the peer closes)
    reset_cl          head with Content-Length 100000, 1000 body bytes, then RST
    reset_chunked     chunked head, one chunk, then RST (no terminating chunk)
    truncated_cl      head with Content-Length 100000, 1000 body bytes, then FIN
    truncated_chunked chunked head, one chunk, then FIN (no terminating chunk)
    endless           chunked body forever, paced (ENDLESS_CHUNK_BYTES per ENDLESS_PACE_S),
                      until the peer goes away or ENDLESS_MAX_BYTES
    drip              Content-Length DRIP_BYTES, one byte every `interval_s`
    slow_headers      the response head one byte every `interval_s`
    keepalive_close   a complete keep-alive 200 (no `Connection: close`), then FIN at once
    close_silently    read the request, close without a byte of response
    reset_early       RST as soon as the request head is in (the body not read)

Every connection is recorded in `conns` (`ConnRecord`: when opened, when the request was
in, when closed, bytes written) so a test can tell when the *peer* gave up.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from typing import Literal, get_args

import h11

from tests.support.servers import LoopbackServer, read_request

Fault = Literal[
    "answer",
    "silent",
    "reset_cl",
    "reset_chunked",
    "truncated_cl",
    "truncated_chunked",
    "endless",
    "drip",
    "slow_headers",
    "keepalive_close",
    "close_silently",
    "reset_early",
]
FAULTS: frozenset[str] = frozenset(get_args(Fault))

# The endless body's pace: 6.4 MB/s, enough to keep a reader busy, bounded in total.
ENDLESS_CHUNK_BYTES = 64 * 1024
ENDLESS_PACE_S = 0.01
ENDLESS_MAX_BYTES = 1 << 30
# A drip response's length: long enough that no test's deadline sees its end.
DRIP_BYTES = 10_000
# Declared length of the truncated / reset responses, and what is actually sent of it.
TRUNCATED_DECLARED_BYTES = 100_000
TRUNCATED_SENT_BYTES = 1000
READ_BYTES = 65536


@dataclass(slots=True)
class ConnRecord:
    opened_at: float  # time.monotonic()
    request_at: float | None = None
    closed_at: float | None = None
    bytes_written: int = 0


@dataclass(frozen=True, slots=True)
class FaultRequest:
    method: bytes
    target: bytes
    headers: list[tuple[bytes, bytes]]  # names lower case
    body: bytes
    complete: bool  # the whole body arrived

    def header(self, name: bytes) -> bytes | None:
        values = [v for n, v in self.headers if n == name]
        return values[0] if values else None


@dataclass(slots=True)
class _Stats:
    open: int = 0
    total: int = 0


class FaultServer(LoopbackServer):
    """See the module docstring."""

    def __init__(self, fault: Fault = "answer", *, by_path: bool = False, interval_s: float = 1.0):
        self.fault: Fault = fault
        self.by_path = by_path
        self.interval_s = interval_s
        self.requests: list[FaultRequest] = []
        self.conns: list[ConnRecord] = []
        self._stats = _Stats()
        super().__init__()

    @property
    def connections_open(self) -> int:
        return self._stats.open

    @property
    def connections_total(self) -> int:
        return self._stats.total

    async def __aenter__(self) -> FaultServer:
        await self._listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._close()

    def fault_for(self, target: bytes) -> Fault:
        if self.by_path:
            first = target.split(b"?")[0].split(b"/")[1:2]
            if first and first[0].decode("latin-1") in FAULTS:
                return first[0].decode("latin-1")  # type: ignore[return-value]
        return self.fault

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        record = ConnRecord(opened_at=time.monotonic())
        self.conns.append(record)
        self._stats.open += 1
        self._stats.total += 1
        try:
            await self._serve(reader, writer, record)
        except (ConnectionError, asyncio.CancelledError, h11.RemoteProtocolError):
            pass
        finally:
            record.closed_at = time.monotonic()
            self._stats.open -= 1
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: ConnRecord
    ) -> None:
        conn = h11.Connection(h11.SERVER)

        def on_head(event: h11.Request) -> bool:
            record.request_at = time.monotonic()
            if self.fault_for(event.target) != "reset_early":
                return True
            self._record(event, bytearray(), complete=False)
            _reset(writer)
            return False

        while True:
            got = await read_request(conn, reader, on_head)
            if got is None:
                return
            request, body = got
            self._record(request, bytearray(body), complete=True)
            if not await self._respond(self.fault_for(request.target), reader, writer, record):
                return
            conn.start_next_cycle()

    def _record(self, request: h11.Request, body: bytearray, *, complete: bool) -> None:
        self.requests.append(
            FaultRequest(
                method=request.method,
                target=request.target,
                headers=[(n.lower(), v) for n, v in request.headers.raw_items()],
                body=bytes(body),
                complete=complete,
            )
        )

    async def _respond(
        self,
        fault: Fault,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        record: ConnRecord,
    ) -> bool:
        """Misbehave; True when the connection may serve another request."""

        async def write(data: bytes) -> None:
            writer.write(data)
            record.bytes_written += len(data)
            await writer.drain()

        if fault == "answer":
            await write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return True
        if fault == "keepalive_close":
            await write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            return False
        if fault == "close_silently":
            return False
        if fault == "silent":
            while await reader.read(READ_BYTES):  # until the peer closes
                pass
            return False
        if fault in ("reset_cl", "truncated_cl"):
            await write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % TRUNCATED_DECLARED_BYTES
                + b"t" * TRUNCATED_SENT_BYTES
            )
        elif fault in ("reset_chunked", "truncated_chunked"):
            await write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n"
                % TRUNCATED_SENT_BYTES
                + b"t" * TRUNCATED_SENT_BYTES
                + b"\r\n"
            )
        elif fault == "endless":
            await write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"%x\r\n" % ENDLESS_CHUNK_BYTES + b"e" * ENDLESS_CHUNK_BYTES + b"\r\n"
            while record.bytes_written < ENDLESS_MAX_BYTES:
                await write(chunk)
                await asyncio.sleep(ENDLESS_PACE_S)  # pacing, not synchronisation
        elif fault == "drip":
            await write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % DRIP_BYTES)
            for _ in range(DRIP_BYTES):
                if await _peer_gone(reader, self.interval_s):  # one byte per interval
                    return False
                await write(b"d")
        elif fault == "slow_headers":
            head = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Slow: yes\r\n\r\nok"
            for i in range(len(head)):
                await write(head[i : i + 1])
                if await _peer_gone(reader, self.interval_s):  # one byte per interval
                    return False
        if fault.startswith("reset"):
            _reset(writer)
        return False


async def _peer_gone(reader: asyncio.StreamReader, wait_s: float) -> bool:
    """Wait `wait_s` (the fault's pace) unless the peer closes first: True if it did.

    Notices the close at once, where a sleeping writer would only see it on its next write.
    """
    try:
        async with asyncio.timeout(wait_s):
            while True:
                if not await reader.read(READ_BYTES):
                    return True
    except TimeoutError:
        return False


def _reset(writer: asyncio.StreamWriter) -> None:
    """Abort the connection with a TCP RST (SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


# --- the serve process's sockets and descriptors (Linux /proc) ------------------------------

_TCP_STATES = {
    "01": "ESTABLISHED",
    "02": "SYN_SENT",
    "03": "SYN_RECV",
    "04": "FIN_WAIT1",
    "05": "FIN_WAIT2",
    "06": "TIME_WAIT",
    "07": "CLOSE",
    "08": "CLOSE_WAIT",
    "09": "LAST_ACK",
    "0A": "LISTEN",
    "0B": "CLOSING",
}


@dataclass(frozen=True, slots=True)
class ProcSocket:
    local_port: int
    remote_port: int
    state: str


@dataclass(slots=True)
class FdCensus:
    """A process's open descriptors: the total and its TCP sockets."""

    total: int
    sockets: list[ProcSocket] = field(default_factory=list)

    def to_port(self, port: int) -> list[ProcSocket]:
        """Sockets connected to `port` (outgoing connections)."""
        return [s for s in self.sockets if s.remote_port == port]

    def from_ports(self, *ports: int) -> list[ProcSocket]:
        """Sockets accepted on (or listening on) one of `ports`."""
        return [s for s in self.sockets if s.local_port in ports]


def census(pid: int) -> FdCensus:
    """Count `pid`'s open descriptors and resolve its TCP sockets via /proc/net/tcp{,6}."""
    inodes: list[str] = []
    total = 0
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            link = os.readlink(f"{fd_dir}/{name}")
        except FileNotFoundError:  # closed meanwhile
            continue
        total += 1
        if link.startswith("socket:["):
            inodes.append(link[8:-1])
    table: dict[str, ProcSocket] = {}
    for proto in ("tcp", "tcp6"):
        try:
            with open(f"/proc/{pid}/net/{proto}") as f:
                lines = f.read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            parts = line.split()
            local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
            table[inode] = ProcSocket(
                local_port=int(local.rsplit(":", 1)[1], 16),
                remote_port=int(remote.rsplit(":", 1)[1], 16),
                state=_TCP_STATES.get(state, state),
            )
    return FdCensus(total=total, sockets=[table[i] for i in inodes if i in table])
