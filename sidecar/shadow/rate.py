"""A canary's `rate` limit: a token bucket, checked on the request path without awaiting."""

from __future__ import annotations

from sidecar.model.config import RateSpec


class TokenBucket:
    """At most `burst` tokens, full at start, refilled continuously at `per_second`."""

    __slots__ = ("_burst", "_last", "_rate", "_tokens")

    def __init__(self, spec: RateSpec, now: float) -> None:
        self._burst = spec.burst
        self._rate = spec.per_second
        self._tokens = spec.burst
        self._last = now

    def has_token(self, now: float) -> bool:
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        return self._tokens >= 1.0

    def take(self) -> None:
        self._tokens -= 1.0
