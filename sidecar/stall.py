"""The primary exchange's two clocks on one `asyncio.Timeout`: the head deadline and idleness.

How this works
--------------
The exchange runs inside one `asyncio.timeout(...)` block. While the proxy waits for the
response head, the block's own deadline is the primary `timeout` (`expect_head`). While a
body moves (the upload toward the primary, the response toward the client), the block has
no deadline and an `IdleWatch` timer stands in: each chunk only stores the time
(`touch()`: one clock read), and the timer, when it comes due, re-arms itself for
`last touch + idle_timeout` if anything moved meanwhile. Only when nothing did does it set
the block's deadline to now, and asyncio's own `Timeout` cancels the task and turns the
cancellation into `TimeoutError` (with its correct bookkeeping of other cancellations).

So a stream costs one timer handle per `idle_timeout` of its life, not one per chunk (an
`asyncio.timeout` per chunk, or a `reschedule` per chunk, creates and cancels a heap entry
each time), and a short exchange costs one handle created and cancelled.
"""

from __future__ import annotations

import asyncio


class IdleWatch:
    """Idleness of the exchange running in `timeout`'s block (see the module docstring)."""

    __slots__ = ("_closed", "_handle", "_loop", "_now", "_timeout", "fired", "idle_s", "last")

    def __init__(self, timeout: asyncio.Timeout, idle_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._now = self._loop.time
        self._timeout = timeout
        self._handle: asyncio.TimerHandle | None = None
        self.idle_s = idle_s
        self.last = 0.0  # loop time of the last progress
        self.fired = False  # the block timed out because nothing moved for `idle_s`
        self._closed = False

    def expect_progress(self) -> None:
        """From now on, time out only when nothing moves for `idle_s`."""
        if self._closed:
            return
        self._timeout.reschedule(None)
        self.last = now = self._now()
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(now + self.idle_s, self._check)

    def expect_head(self, timeout_s: float) -> None:
        """From now on, time out `timeout_s` from now whatever moves (the head's wait)."""
        if self._closed:
            return  # a late call from the sender task after the block was left
        self.stop()
        self._timeout.reschedule(self._now() + timeout_s)

    def touch(self) -> None:
        """Something moved (a chunk read or written)."""
        self.last = self._now()

    def stop(self) -> None:
        """No more idle checks (the exchange is over, or another clock takes over)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def close(self) -> None:
        """The block is being left: stop, and ignore any later call (the upload's sender
        task may still be winding down)."""
        self._closed = True
        self.stop()

    def _check(self) -> None:
        now = self._now()
        due = self.last + self.idle_s
        if due > now:
            self._handle = self._loop.call_at(due, self._check)
            return
        self._handle = None
        self.fired = True
        self._timeout.reschedule(now)  # due now: asyncio cancels the block's task
