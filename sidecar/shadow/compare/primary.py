"""The primary's response as the client received it, captured for the compared tees.

The proxy makes one `PrimaryCapture` per request whose `RequestTees.rendezvous` is set (and
none otherwise). It holds one `Capture` per distinct spec of the rendezvous (usually one):
`start()` with the response head as the primary sent it, `feed()` with each chunk object
right after it was handed to the client (hashing never delays a send; nothing is copied),
`finish()` once the final body message went out. Exactly one arrival reaches the
rendezvous, from `failed()` or `end()`:

- `failed()`: the proxy answered 502/504 itself; there is no primary response to compare.
- `end()` (always, in the request's `finally`): when the body went out whole, the captures;
  otherwise (the client went away, the primary stalled past `idle_timeout` or broke off,
  or no head ever reached the client) incomplete captures, which the rendezvous judges
  `skipped` as `primary_incomplete`.

An arrival judges (and reports) on the request's own task, once the response went out or
just before a 502/504 of our own. A bug there must never cost the client its response: an
exception is logged with its traceback (at most once per `ERROR_LOG_INTERVAL_S`) and the
request carries on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable

from sidecar.model.compare import CompareSpec
from sidecar.shadow.compare.capture import Capture, Captured
from sidecar.shadow.compare.rendezvous import Rendezvous

log = logging.getLogger("sidecar.compare")

# A failing comparison is logged at most this often (it would fail for every request).
ERROR_LOG_INTERVAL_S = 10.0
_last_error_log = -ERROR_LOG_INTERVAL_S

# The status an incomplete capture carries when no response head reached the client (it is
# never judged: an incomplete primary makes every comparison `skipped`).
NO_RESPONSE_STATUS = 0


class PrimaryCapture:
    """One request's primary response, captured once per spec (see the module docstring)."""

    __slots__ = ("_captures", "_complete", "_reported", "_rv", "_started")

    def __init__(self, rv: Rendezvous) -> None:
        self._rv = rv
        self._captures = [(spec, Capture(spec)) for spec in rv.primary_specs]
        self._started = False
        self._complete = False
        self._reported = False

    def start(self, status: int, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """The response head, as the primary sent it."""
        if len(self._captures) == 1:
            self._captures[0][1].start(status, headers)
        else:
            listed = list(headers)  # an iterable may be read only once
            for _, capture in self._captures:
                capture.start(status, listed)
        self._started = True

    def feed(self, chunk: bytes) -> None:
        """A body chunk that was just handed to the client."""
        for _, capture in self._captures:
            capture.feed(chunk)

    def finish(self) -> None:
        """The final body message went out: the response is whole."""
        self._complete = self._started

    def failed(self) -> None:
        """The proxy answered 502/504 itself."""
        if not self._reported:
            self._reported = True
            _guarded(self._rv.primary_failed)

    def end(self) -> None:
        """The request is over: report the captures (whole or cut) unless already failed."""
        if self._reported:
            return
        self._reported = True
        _guarded(self._arrive)

    def _arrive(self) -> None:
        captured: dict[CompareSpec, Captured] = {}
        for spec, capture in self._captures:
            if not self._started:
                capture.start(NO_RESPONSE_STATUS, ())
            captured[spec] = capture.finish() if self._complete else capture.incomplete()
        self._rv.primary_done(captured)


def _guarded(arrival: Callable[[], None]) -> None:
    global _last_error_log
    try:
        arrival()
    except Exception:
        now = time.monotonic()
        if now - _last_error_log >= ERROR_LOG_INTERVAL_S:
            _last_error_log = now
            log.exception("comparing the primary's response failed (the client was served)")
