"""The primary exchange's two clocks on one timer: the head deadline and idleness.

How this works
--------------
The exchange runs inside `async with ExchangeClock(timeout_s, idle_s)`. Until the response
head arrives the block times out `timeout_s` after it was entered, or after the upload's
last chunk (`expect_head`). While a body moves (the upload toward the primary, the
response toward the client: `expect_progress`), only pauses count: each chunk stores the
time (`touch()`: one clock read) and nothing else.

There is one timer handle. When it comes due, it looks at the clock it serves: if the
deadline moved on meanwhile (a chunk came since), it re-arms itself for the new due time;
only when nothing did does it cancel the task, and `__aexit__` turns that cancellation
into `TimeoutError`, with `asyncio.Timeout`'s bookkeeping of other cancellations
(`uncancel`). So a stream costs one timer handle per `idle_s` of its life instead of one
per chunk (an `asyncio.timeout` per chunk, or a `reschedule` per chunk, each create and
cancel a heap entry); a short exchange costs exactly one handle, as a plain
`asyncio.timeout` would: the switch from the head's clock to the idle one re-arms only when
the idle due time comes before the armed one.
"""

from __future__ import annotations

import asyncio
from types import TracebackType


class ExchangeClock:
    """The two clocks of one exchange (see the module docstring)."""

    __slots__ = (
        "_cancelling",
        "_closed",
        "_handle",
        "_idle",
        "_loop",
        "_now",
        "_task",
        "deadline",
        "fired",
        "head_s",
        "idle_s",
        "last",
        "stalled",
    )

    def __init__(self, head_s: float, idle_s: float) -> None:
        self._loop = asyncio.get_running_loop()
        self._now = self._loop.time
        self.head_s = head_s
        self.idle_s = idle_s
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        self._cancelling = 0
        self._idle = False  # which clock runs: idleness, or the head deadline
        self._closed = False
        self.deadline = 0.0  # the head's, in loop time
        self.last = 0.0  # loop time of the last progress
        self.fired = False  # the block timed out
        self.stalled = False  # ... because nothing moved for `idle_s` (not the head's wait)

    async def __aenter__(self) -> ExchangeClock:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("ExchangeClock must be used inside a task")
        self._task = task
        self._cancelling = task.cancelling()
        self.deadline = self._now() + self.head_s
        self._handle = self._loop.call_at(self.deadline, self._check)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        task = self._task
        # The cancellation is ours unless someone else cancelled the task as well
        # (asyncio.Timeout's rule: then it stays a cancellation).
        if (
            self.fired
            and exc_type is asyncio.CancelledError
            and task is not None
            and task.uncancel() <= self._cancelling
        ):
            raise TimeoutError from exc

    def expect_progress(self) -> None:
        """From now on, time out only when nothing moves for `idle_s`."""
        if self._closed:
            return
        self._idle = True
        self.last = now = self._now()
        due = now + self.idle_s
        handle = self._handle
        if handle is None or handle.when() > due:
            if handle is not None:
                handle.cancel()
            self._handle = self._loop.call_at(due, self._check)
        # else: the armed handle comes first and re-arms itself for the idle clock

    def expect_head(self) -> None:
        """From now on, time out `head_s` from now whatever moves (the head's wait)."""
        if self._closed:
            return  # a late call from the upload's sender task after the block was left
        self._idle = False
        self.deadline = due = self._now() + self.head_s
        if self._handle is not None:
            self._handle.cancel()
        self._handle = self._loop.call_at(due, self._check)

    def touch(self) -> None:
        """Something moved (a chunk read or written)."""
        self.last = self._now()

    def pause(self) -> None:
        """No clock until the next `expect_*` (another bound takes over meanwhile)."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _check(self) -> None:
        now = self._now()
        due = self.last + self.idle_s if self._idle else self.deadline
        if due > now:
            self._handle = self._loop.call_at(due, self._check)
            return
        self._handle = None
        self.fired = True
        self.stalled = self._idle
        assert self._task is not None
        self._task.cancel()
