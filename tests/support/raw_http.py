"""Raw HTTP clients for tests that need bytes on the wire: HTTP/1.1 and HTTP/2 (h2).

    reply = await exchange(url, b"GET / HTTP/1.1\\r\\nHost: a\\r\\n\\r\\n")  # read to EOF
    async with H2Conn.open(url) as h2c:                       # prior knowledge, h2c
        sid = await h2c.request("GET", "/echo/x")
        frames = await h2c.events_until(lambda e: ...)       # h2 events, with a deadline

    body, version = await curl("--http2-prior-knowledge", url)   # curl's body, "2" or "1.1"

Every read has a deadline (READ_TIMEOUT_S); nothing sleeps for synchronisation.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Callable
from typing import Any

import h2.config
import h2.connection
import h2.events

READ_TIMEOUT_S = 10.0


def host_port(url: str) -> tuple[str, int]:
    host, _, port = url.removeprefix("http://").rstrip("/").rpartition(":")
    return host, int(port)


async def exchange(url: str, data: bytes, timeout: float = READ_TIMEOUT_S) -> bytes:
    """Send `data` on a new connection and return everything read until the server closes."""
    reader, writer = await asyncio.open_connection(*host_port(url))
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(read_to_eof(reader), timeout)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    try:
        while chunk := await reader.read(65536):
            out += chunk
    except ConnectionResetError:
        out += b"<RST>"
    return bytes(out)


async def curl(*args: str, timeout: float = READ_TIMEOUT_S) -> tuple[bytes, bytes]:
    """Run curl with `args` (the URL last); (the body, the HTTP version it spoke)."""
    argv = ["curl", "-sS", "-w", "\\n%{http_version}", *args]
    done = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, timeout=timeout, check=True
    )
    body, version = done.stdout.rsplit(b"\n", 1)
    return body, version


def status_line(reply: bytes) -> bytes:
    return reply.split(b"\r\n", 1)[0]


class H2Conn:
    """One HTTP/2 client connection (prior knowledge) driven by the `h2` package."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding=None)
        )
        self.events: list[Any] = []  # every event received, in order
        self._unseen: list[Any] = []  # received after a match, not yet looked at by a call

    @classmethod
    @contextlib.asynccontextmanager
    async def open(cls, url: str) -> AsyncIterator[H2Conn]:
        reader, writer = await asyncio.open_connection(*host_port(url))
        h2c = cls(reader, writer)
        h2c.conn.initiate_connection()
        await h2c.flush()
        try:
            yield h2c
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def flush(self) -> None:
        self.writer.write(self.conn.data_to_send())
        await self.writer.drain()

    async def request(
        self, method: str, path: str, authority: str = "proxy.test", end: bool = True
    ) -> int:
        sid: int = self.conn.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", authority.encode()),
            (b":path", path.encode()),
        ]
        self.conn.send_headers(sid, headers, end_stream=end)
        await self.flush()
        return sid

    async def events_until(
        self, done: Callable[[Any], bool], timeout: float = READ_TIMEOUT_S
    ) -> list[Any]:
        """Read until an event satisfies `done` (the returned list ends with it) or EOF.

        A batch of frames is recorded whole (status() and body() see all of it); the
        events after a match are kept for the next call to look at before it reads."""
        got: list[Any] = []

        def take(events: list[Any]) -> bool:
            for n, event in enumerate(events):
                got.append(event)
                if done(event):
                    self._unseen = events[n + 1 :] + self._unseen
                    return True
            return False

        async def run() -> None:
            pending, self._unseen = self._unseen, []
            if take(pending):
                return
            while True:
                data = await self.reader.read(65536)
                if not data:
                    return
                batch = self.conn.receive_data(data)
                for event in batch:
                    self.events.append(event)
                    if isinstance(event, h2.events.DataReceived):
                        self.conn.acknowledge_received_data(
                            event.flow_controlled_length, event.stream_id
                        )
                await self.flush()
                if take(batch):
                    return

        await asyncio.wait_for(run(), timeout)
        return got

    def status(self, stream_id: int) -> int | None:
        for event in self.events:
            if isinstance(event, h2.events.ResponseReceived) and event.stream_id == stream_id:
                return int(dict(event.headers)[b":status"])
        return None

    def body(self, stream_id: int) -> bytes:
        return b"".join(
            e.data
            for e in self.events
            if isinstance(e, h2.events.DataReceived) and e.stream_id == stream_id
        )
