"""A canary's pause: `pause after N failures for D` stops sending to a failing canary.

How this works
--------------
A pool whose spec has a `pause` owns one `Pause`; the pool calls it at three points and it
only keeps state and logs (no clock, no I/O of its own):

- `settled(job, outcome, now, error)` for every admitted tee as it ends. While running it
  counts consecutive `failed` tees (a `completed` one resets the count; `panicked` is a bug
  in a chain, not the canary's failure, and changes nothing); at N the canary is paused
  until `now + D`.
- `refuses(now)` on the admission path, only while `paused`: True (the tee ends as
  `dropped_paused`, no job built) until D has passed and, after that, while the probe is out.
- `admitted(job)`: the first tee admitted once D has passed is the probe. Only the probe's
  own ending moves the state: `completed` resumes, anything else pauses again for D.
  Tees admitted before the pause that end during it change nothing.

One log line per pause and per resume, never one per dropped tee.
"""

from __future__ import annotations

import logging

from sidecar.model.config import PauseSpec
from sidecar.shadow.types import ERR_ABANDONED, Job, Outcome

log = logging.getLogger("sidecar.mirror")


class Pause:
    """The pause state of one canary (see the module docstring)."""

    __slots__ = ("_canary", "_duration_s", "_failures", "_limit", "paused", "probe", "until")

    def __init__(self, canary: str, spec: PauseSpec) -> None:
        self._canary = canary
        self._limit = spec.failures
        self._duration_s = spec.duration_s
        self._failures = 0  # consecutive `failed` tees while running
        self.paused = False
        self.until = 0.0  # loop time the pause (or the current repeat of it) ends
        self.probe: Job | None = None  # the tee sent to test the canary, until it ends

    def refuses(self, now: float) -> bool:
        """While paused: whether a tee arriving now is dropped (not yet, or a probe is out)."""
        return now < self.until or self.probe is not None

    def admitted(self, job: Job) -> None:
        """A tee was admitted while paused (`refuses` said no): it is the probe."""
        self.probe = job

    def settled(self, job: Job, outcome: Outcome, now: float, error: str | None) -> None:
        """An admitted tee ended with `outcome` (`error`: its failure reason)."""
        if error == ERR_ABANDONED:
            return  # shutdown, not the canary's doing
        if self.paused:
            if job is not self.probe:
                return
            self.probe = None
            if outcome is Outcome.COMPLETED:
                self.paused = False
                self._failures = 0
                log.info("canary %s resumed: the probe completed", self._canary)
            else:
                self.until = now + self._duration_s
                log.warning(
                    "canary %s stays paused for %gs: the probe %s (%s)",
                    self._canary,
                    self._duration_s,
                    outcome.value,
                    error or "no reason",
                )
            return
        if outcome is Outcome.FAILED:
            self._failures += 1
            if self._failures >= self._limit:
                self.paused = True
                self.until = now + self._duration_s
                log.warning(
                    "canary %s paused for %gs after %d consecutive failed tees (last: %s);"
                    " its tees are dropped_paused until a probe completes",
                    self._canary,
                    self._duration_s,
                    self._failures,
                    error or "no reason",
                )
        elif outcome is Outcome.COMPLETED:
            self._failures = 0
