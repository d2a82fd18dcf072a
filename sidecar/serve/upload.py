"""The client's streamed request body: forwarded chunk by chunk, or its rest discarded.

How this works
--------------
A request whose body does not arrive in one ASGI message gets an `Upload`. `chunks()` is the
async generator the primary client's sender task iterates: every chunk is fed to the tees
and counted, and each step touches the exchange's `ExchangeClock` (a stream that moves is never
cut). Its last step hands the exchange over to the head deadline.

The primary may answer before the body is whole (nginx's 413 for a too large upload): the
client then cancels the sender and the rest of the body is still on its way from the client.
It must not be left unread. The ASGI server (hypercorn) queues body messages in a small
bounded queue and, when the response ends, puts `http.disconnect` into that same queue:
with the queue full and nobody reading, that put blocks forever, the connection is never
closed and the client hangs (issue 13, item 1). So, as nginx does (discard_request_body
plus lingering), the proxy keeps reading:

- `keep_alive_possible` (asked when the response head goes out): the rest is known and at
  most `DISCARD_MAX_BYTES`. Then the head goes out as it is, and before the response's
  final message `settle()` reads and discards the rest (each chunk still fed to the tees: a
  body received whole is mirrored) within `DISCARD_IDLE_TIMEOUT_S` between reads and
  `DISCARD_MAX_S` in all. Whole: the connection stays open for the next request.
- Otherwise the head gets `Connection: close` (HTTP/1.x) and the rest is not read for its
  own sake; from the moment the response ends (its final message, or the request giving
  up), a background task reads and drops messages until the server's `http.disconnect`,
  which frees the server's queue so that it closes the connection at once.

The tees follow what the client did: a body read whole (discarded or not) is mirrored; a
client that disconnected mid-upload ends them as `dropped_aborted`; a rest the proxy chose
not to read (too large, unknown, or past the discard's bounds) as `dropped_unread`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sidecar.asgi import Receive
from sidecar.serve.stall import ExchangeClock
from sidecar.shadow.tees import RequestTees

# An early answer keeps the client's connection when at most this much body is still to
# come: the bytes are read and dropped. 8 MiB covers the usual uploads a primary refuses
# early (nginx's default client_max_body_size is 1 MiB; forms and JSON a few MB) and takes
# well under a second on a LAN; beyond it the bandwidth is not worth one connection, which
# is closed instead (nginx bounds its discard by time only; we bound both).
DISCARD_MAX_BYTES = 8 << 20
# Longest pause between two reads of a discarded body before the connection is given up;
# nginx's lingering_timeout (5 s).
DISCARD_IDLE_TIMEOUT_S = 5.0
# Longest a discard may take in all; nginx's lingering_time (30 s).
DISCARD_MAX_S = 30.0
# After the response's last message, the server puts `http.disconnect` in the queue within
# a loop iteration or two (once it has room); this bound only keeps a server that never does
# from holding the drain task (and its references) forever.
DRAIN_TO_DISCONNECT_S = 10.0

# Drain tasks outlive the request's own task (they end at the server's disconnect); the
# event loop keeps only weak references to tasks, so they are held here until they end.
_DRAINS: set[asyncio.Task[None]] = set()


class UploadAborted(Exception):
    """The client's upload broke off before the body was whole."""


class Upload:
    """One streamed request body (see the module docstring)."""

    __slots__ = (
        "_discard",
        "_draining",
        "_first",
        "_receive",
        "complete",
        "declared",
        "gone",
        "received",
        "tees",
        "waiting",
    )

    def __init__(
        self,
        receive: Receive,
        declared: int,
        first: bytes,
        tees: RequestTees | None,
    ) -> None:
        """`declared`: the Content-Length, or -1 (chunked); `first`: the body of the first
        message, already taken from `receive`."""
        self._receive = receive
        self.declared = declared
        self._first = first
        self.received = len(first)
        self.tees = tees
        self.complete = False  # the last body message was read
        self.gone = False  # the client disconnected before that
        self.waiting = False  # waiting for the client's next chunk (a stall is the client's)
        self._discard: asyncio.Task[bool] | None = None
        self._draining = False

    async def chunks(self, clock: ExchangeClock) -> AsyncIterator[bytes]:
        """The body for the primary: the first message's, then every chunk as it arrives
        (each touching `clock`); raises UploadAborted when the client disconnects. After the
        last chunk was written, the exchange's head deadline starts."""
        tees = self.tees
        first, self._first = self._first, b""
        if first:
            if tees is not None:
                tees.feed(first)
            yield first
        receive = self._receive
        while True:
            clock.touch()  # the previous chunk was written
            self.waiting = True
            message = await receive()
            self.waiting = False
            if message["type"] == "http.disconnect":
                self._gone()
                raise UploadAborted
            chunk: bytes = message.get("body", b"")
            more: bool = message.get("more_body", False)
            self.received += len(chunk)
            if chunk:
                clock.touch()
                if tees is not None:
                    tees.feed(chunk)
            if not more:
                # Whole: the tees are admitted now, even if the primary answers (and the
                # sender stops) before this last chunk is written.
                self.complete = True
                if tees is not None:
                    self.tees = None
                    tees.finish()
                    tees = None
            if chunk:
                yield chunk
            if not more:
                break
        clock.expect_head()

    @property
    def keep_alive_possible(self) -> bool:
        """Whether the rest may be discarded to keep the connection (see the module doc)."""
        return (
            self.complete or self.gone or (0 <= self.declared - self.received <= DISCARD_MAX_BYTES)
        )

    @property
    def discarding(self) -> bool:
        """The rest is being read by the discard task (nobody else may call `receive`)."""
        task = self._discard
        return task is not None and not task.done()

    def after_head(self, *, discard: bool) -> None:
        """The response head is going out; the sender is done with the body. `discard`:
        read the rest now (keep-alive), else leave it unread (the client waits, held by TCP
        flow control) until the response ends and `settle()` or `end()` drains to the close."""
        if discard and not (self.complete or self.gone):
            self._discard = asyncio.get_running_loop().create_task(self._discard_rest())

    async def settle(self) -> bool:
        """Before the response's final message: True when the whole body has been read (the
        connection may be kept); otherwise the drain to the disconnect is started."""
        if self.complete:
            return True
        task = self._discard
        if task is not None:
            self._discard = None
            try:
                if await asyncio.shield(task):
                    return True
            except asyncio.CancelledError:
                task.cancel()
                raise
        if not self.gone:
            self._drain_at_close()
        return False

    def end(self) -> None:
        """The request is over (whatever happened): an unread rest is drained to the close,
        tees still waiting for the body end as `dropped_unread`."""
        task = self._discard
        if task is not None:
            self._discard = None
            task.cancel()
        if not self.complete and not self.gone:
            self._drain_at_close()
        tees, self.tees = self.tees, None
        if tees is not None:
            tees.unread()

    # -- internals ----------------------------------------------------------------------

    def _gone(self) -> None:
        self.gone = True
        tees, self.tees = self.tees, None
        if tees is not None:
            tees.abort()

    async def _discard_rest(self) -> bool:
        """Read and drop the rest (fed to the tees) within the bounds; True when whole."""
        receive = self._receive
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DISCARD_MAX_S
        limit = self.received + DISCARD_MAX_BYTES
        try:
            while self.received <= limit:
                wait_s = min(DISCARD_IDLE_TIMEOUT_S, deadline - loop.time())
                async with asyncio.timeout(wait_s):
                    message = await receive()
                if message["type"] == "http.disconnect":
                    self._gone()
                    return False
                chunk: bytes = message.get("body", b"")
                self.received += len(chunk)
                tees = self.tees
                if tees is not None:
                    tees.feed(chunk)
                if not message.get("more_body", False):
                    self.complete = True
                    self.tees = None
                    if tees is not None:
                        tees.finish()
                    return True
        except TimeoutError:
            pass
        return False

    def _drain_at_close(self) -> None:
        if self._draining:
            return
        self._draining = True
        task = asyncio.get_running_loop().create_task(self._drain_to_disconnect())
        _DRAINS.add(task)
        task.add_done_callback(_DRAINS.discard)

    async def _drain_to_disconnect(self) -> None:
        receive = self._receive
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_TO_DISCONNECT_S):
                while (await receive())["type"] != "http.disconnect":
                    pass
