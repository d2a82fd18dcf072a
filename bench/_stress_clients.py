"""The client kinds of bench_stress.py: raw-socket HTTP/1.1 clients on asyncio streams.

Each kind is one bounded loop: `paced()` starts one client task per slot of a fixed rate
(open loop; a slot that finds the kind's concurrency cap reached is skipped and counted,
never queued), and every client runs under CLIENT_TIMEOUT_S. The keep-alive clients are a
fixed number of connections, each sending at its own pace. What each client observes is
counted in its kind's `Tally`: ok, 5xx answers, other unexpected answers, and errors by
kind (timeout, reset, closed, refused, ...). Nothing here knows about the processes under
test: a client gets a host and a port.
"""

from __future__ import annotations

import asyncio
import errno
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

CLIENT_TIMEOUT_S = 5.0  # one client's whole exchange; a hung proxy shows up as "timeout"
CLOSE_TIMEOUT_S = 1.0  # a close that has not flushed by then is aborted
RECONNECT_PAUSE_S = 0.2  # a keep-alive client's pause after an error, before reconnecting
REQUESTS_PER_CONN = 200  # then a keep-alive client closes (as a browser or pool would)
UPLOAD_BYTES = 2_000_000  # over nginx's default client_max_body_size (1m): an early 413
ABORT_DECLARED_BYTES = 1 << 20  # the aborted upload's Content-Length (accepted by nginx)
ABORT_SENT_BYTES = 64 * 1024  # what of it is sent before the client closes
DOWNLOAD_READ_BYTES = 64 * 1024  # what of a large download is read before closing
SLOW_EVERY = 10  # every 10th keep-alive request goes to the primary's slow location


# What a client counts as a failure of the exchange (anything else is a bug here).
FAILURES = (
    OSError,
    TimeoutError,
    ValueError,
    asyncio.IncompleteReadError,
    asyncio.LimitOverrunError,
)


@dataclass(slots=True)
class Tally:
    """What the clients of one kind observed (cumulative)."""

    attempts: int = 0
    ok: int = 0
    status_5xx: int = 0
    unexpected: int = 0  # an answer that is neither the expected one nor a 5xx
    skipped: int = 0  # slots not started: the kind's concurrency cap was reached
    errors: Counter[str] = field(default_factory=Counter)
    notes: Counter[str] = field(default_factory=Counter)  # observations that are no error

    def error_total(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, object]:
        return {
            "attempts": self.attempts,
            "ok": self.ok,
            "5xx": self.status_5xx,
            "unexpected": self.unexpected,
            "skipped": self.skipped,
            "errors": dict(self.errors),
            "notes": dict(self.notes),
        }


@dataclass(frozen=True, slots=True)
class Response:
    status: int
    close: bool  # `Connection: close`, or a body delimited by the close


def classify(exc: BaseException) -> str:
    """A client-side failure as one short word."""
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset"
    if isinstance(exc, asyncio.IncompleteReadError):
        return "closed"  # the proxy closed before a whole answer
    if isinstance(exc, ValueError | asyncio.LimitOverrunError):
        return "protocol"
    if isinstance(exc, OSError) and exc.errno is not None:
        return errno.errorcode.get(exc.errno, str(exc.errno))
    return type(exc).__name__


def head(method: str, path: str, length: int | None = None) -> bytes:
    extra = f"Content-Length: {length}\r\n" if length is not None else ""
    return f"{method} {path} HTTP/1.1\r\nHost: stress\r\n{extra}\r\n".encode()


async def read_response(reader: asyncio.StreamReader, *, body_limit: int | None = None) -> Response:
    """Read one response; its body is read whole, or only `body_limit` bytes of it."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if sep:
            headers[name.strip().lower()] = value.strip().lower()
    close = headers.get(b"connection") == b"close"
    length = int(headers[b"content-length"]) if b"content-length" in headers else None
    if body_limit is not None and (length is None or length > body_limit):
        await reader.readexactly(body_limit)  # (a chunked body: its chunk lines included)
        return Response(status, close=True)
    if headers.get(b"transfer-encoding") == b"chunked":
        while True:  # bounded by the client's timeout
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:  # (the CRLF read above ends the empty trailer section)
                break
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()  # delimited by the close
        close = True
    return Response(status, close=close)


async def connect(host: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection(host, port)


async def close(writer: asyncio.StreamWriter) -> None:
    """Close (FIN after what is buffered); abort (RST) when that does not finish in
    CLOSE_TIMEOUT_S, e.g. a body the proxy stopped reading. Safe in a cancelled task."""
    writer.close()
    try:
        async with asyncio.timeout(CLOSE_TIMEOUT_S):
            await writer.wait_closed()
    except (OSError, TimeoutError):
        writer.transport.abort()


def judge(tally: Tally, resp: Response, expected: int) -> bool:
    if resp.status == expected:
        tally.ok += 1
        return True
    if resp.status >= 500:
        tally.status_5xx += 1
    else:
        tally.unexpected += 1
    return False


async def guarded(tally: Tally, one: Callable[[], Awaitable[None]]) -> None:
    """One client under CLIENT_TIMEOUT_S, its failure counted by kind."""
    tally.attempts += 1
    try:
        async with asyncio.timeout(CLIENT_TIMEOUT_S):
            await one()
    except FAILURES as exc:
        tally.errors[classify(exc)] += 1


async def paced(
    tally: Tally, rate: float, cap: int, until: float, one: Callable[[], Awaitable[None]]
) -> None:
    """Start `one` at `rate` per second until `until` (loop time), at most `cap` at once."""
    if rate <= 0:
        return
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    running: set[asyncio.Task[None]] = set()
    next_at = loop.time()
    while next_at < until:  # bounded by the deadline
        delay = next_at - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        next_at = max(next_at + interval, loop.time() - interval)  # skip, never burst
        if len(running) >= cap:
            tally.skipped += 1
            continue
        task = asyncio.create_task(guarded(tally, one))
        running.add(task)
        task.add_done_callback(running.discard)
    if running:
        await asyncio.gather(*running)  # each bounded by CLIENT_TIMEOUT_S


# --- the kinds ---------------------------------------------------------------------------


async def one_shot(host: str, port: int, tally: Tally, *, read: bool) -> None:
    """Connect, one GET, close; with `read=False` close right after sending it."""
    reader, writer = await connect(host, port)
    try:
        writer.write(head("GET", "/"))
        await writer.drain()
        if not read:
            tally.ok += 1
            tally.notes["closed without reading"] += 1
            return
        judge(tally, await read_response(reader), 200)
    finally:
        await close(writer)


async def early_413(host: str, port: int, tally: Tally, body: bytes) -> None:
    """POST a body over the primary's limit on a keep-alive connection (expect 413, as
    http.client sends it: the whole body, then read), then a GET on the same connection."""
    reader, writer = await connect(host, port)
    try:
        writer.write(head("POST", "/upload", len(body)))
        writer.write(body)
        await writer.drain()
        first = await read_response(reader)
        if first.status != 413:
            judge(tally, first, 413)
            return
        if first.close:
            tally.ok += 1
            tally.notes["413 with Connection: close"] += 1
            return
        writer.write(head("GET", "/"))
        await writer.drain()
        if judge(tally, await read_response(reader), 200):
            tally.notes["413, then the connection reused"] += 1
    finally:
        await close(writer)


async def aborted_upload(host: str, port: int, tally: Tally) -> None:
    """A head announcing ABORT_DECLARED_BYTES, part of the body, then close."""
    _, writer = await connect(host, port)
    try:
        writer.write(head("POST", "/upload", ABORT_DECLARED_BYTES))
        writer.write(b"a" * ABORT_SENT_BYTES)
        await writer.drain()
        tally.ok += 1
    finally:
        await close(writer)


async def aborted_download(host: str, port: int, tally: Tally) -> None:
    """GET the large file, read the head and DOWNLOAD_READ_BYTES of the body, close."""
    reader, writer = await connect(host, port)
    try:
        writer.write(head("GET", "/big"))
        await writer.drain()
        judge(tally, await read_response(reader, body_limit=DOWNLOAD_READ_BYTES), 200)
    finally:
        await close(writer)


async def keep_alive(host: str, port: int, tally: Tally, rate: float, until: float) -> None:
    """One keep-alive client: GETs at `rate` per second until `until`, reconnecting after
    REQUESTS_PER_CONN requests, after an error, or when the proxy says `Connection: close`."""
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    next_at = loop.time()
    sent = 0
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    try:
        while next_at < until:  # bounded by the deadline
            delay = next_at - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            next_at = max(next_at + interval, loop.time() - interval)
            tally.attempts += 1
            sent += 1
            try:
                async with asyncio.timeout(CLIENT_TIMEOUT_S):
                    if conn is None:
                        conn = await connect(host, port)
                    reader, writer = conn
                    path = "/slow" if sent % SLOW_EVERY == 0 else "/"
                    writer.write(head("GET", path))
                    await writer.drain()
                    resp = await read_response(reader)
                judge(tally, resp, 200)
                if resp.close or sent % REQUESTS_PER_CONN == 0:
                    if resp.close:
                        tally.notes["Connection: close"] += 1
                    await close(conn[1])
                    conn = None
            except FAILURES as exc:
                tally.errors[classify(exc)] += 1
                if conn is not None:
                    await close(conn[1])
                    conn = None
                await asyncio.sleep(RECONNECT_PAUSE_S)
    finally:
        if conn is not None:
            await close(conn[1])


async def get_status(host: str, port: int, path: str, timeout_s: float) -> int | str:
    """One GET on a fresh connection: the status, or the error's kind."""
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await connect(host, port)
            try:
                writer.write(head("GET", path))
                await writer.drain()
                return (await read_response(reader)).status
            finally:
                await close(writer)
    except FAILURES as exc:
        return classify(exc)
