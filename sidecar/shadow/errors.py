"""Why a tee failed: the fixed set of error kinds, the one classifier, and a rate-limited log.

How this works
--------------
`classify(exc)` maps what a canary exchange raised to one of `ERROR_KINDS`, the label values
of `sidecar_mirror_errors_total{canary,error}`. It reads the client's error tree
(`sidecar.http.connection`: `ConnectError`, `ReadError`/`WriteError`, the protocol errors) and
the foreign exception each one was translated from (`__cause__`), because a TLS failure
arrives as a `ConnectError` (or `ReadError`) whose cause is an `ssl.SSLError`.

`ThrottledLog` keeps a log readable while a canary fails thousands of times a second: the
first occurrence of each key is logged at once; later ones are only counted (a dict lookup
and an increment, no formatting) and a timer logs one summary per key at most every
`SUMMARY_INTERVAL_S`. A key that stays quiet for a whole interval goes back to "first
occurrence", so the next error after a calm period is logged at once again.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import Final, Literal

from sidecar.http.connection import (
    ClientError,
    ConnectError,
    LocalProtocolError,
    ReadError,
    RemoteProtocolError,
    WriteError,
)
from sidecar.http.http1 import ProtocolError, Truncated

ErrorKind = Literal["connect", "timeout", "tls", "reset", "protocol"]
CONNECT: Final = "connect"
TIMEOUT: Final = "timeout"
TLS: Final = "tls"
RESET: Final = "reset"
PROTOCOL: Final = "protocol"
ERROR_KINDS: tuple[ErrorKind, ...] = (CONNECT, TIMEOUT, TLS, RESET, PROTOCOL)

# One summary line per key at most this often: a dead canary at 10k tees/s then writes one
# line per error kind every 10 s instead of 10k lines a second. Tests shorten it.
SUMMARY_INTERVAL_S = 10.0

# A TLS session that ends without close_notify is the peer hanging up, not a TLS problem.
_TLS_EOF = (ssl.SSLEOFError, ssl.SSLZeroReturnError)


def classify(exc: BaseException) -> ErrorKind:
    """The error kind of a failed canary exchange (total: every exception gets one).

    tls: an `ssl.SSLError` anywhere in the cause chain (handshake, certificate verification),
    except a TLS EOF. connect: the connection could not be opened (refused, unreachable, DNS,
    the client's connect timeout), and a pool closed under us. reset: the connection broke
    after it was open (reset, EOF mid-response, a failed write). protocol: the response (or
    our own shadow request) is not valid HTTP/1.1. timeout: the tee's deadline (a
    `TimeoutError` that is not a connect timeout).
    """
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ssl.SSLError) and not isinstance(cause, _TLS_EOF):
            return TLS
        cause = cause.__cause__
    if isinstance(exc, ClientError):
        if isinstance(exc, ConnectError):
            return CONNECT
        if isinstance(exc, ReadError | WriteError):
            return RESET
        if isinstance(exc, RemoteProtocolError | LocalProtocolError):
            return PROTOCOL
        # Base ClientError: `reason` names it ("closed": the pool shut while we waited).
        return _BY_REASON.get(exc.reason, CONNECT)
    # Untranslated exceptions (a custom chain's, or a test's).
    if isinstance(exc, Truncated | ConnectionResetError | BrokenPipeError | EOFError):
        return RESET
    if isinstance(exc, ProtocolError):
        return PROTOCOL
    if isinstance(exc, TimeoutError):
        return TIMEOUT
    if isinstance(exc, ssl.SSLError):  # a TLS EOF
        return RESET
    if isinstance(exc, OSError):  # refused, unreachable, no route, DNS
        return CONNECT
    return PROTOCOL


_BY_REASON: dict[str, ErrorKind] = {kind: kind for kind in ERROR_KINDS}


def describe(error: BaseException | str) -> str:
    """The error text of a log line: the exception's type and message, or the given text."""
    if isinstance(error, str):
        return error
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


# --- the lines a canary's errors and its observe hook's errors are logged with -------------


def error_line(canary: str, kind: str, text: str) -> str:
    return f"canary {canary}: '{kind}' error: {text} (more are counted, summarized periodically)"


def error_summary_line(
    canary: str, kind: str, count: int, interval_s: float, text: str, backoff_skips: int
) -> str:
    line = f"canary {canary}: {count} more '{kind}' errors in the last {interval_s:g} s: {text}"
    if backoff_skips:
        line += f" (and {backoff_skips} tees failed at once during the connect back-off)"
    return line


def observe_error_line(canary: str, _key: str, text: str) -> str:
    return (
        f"observe hook raised for canary {canary}: {text} "
        "(later errors are counted, summarized periodically)"
    )


def observe_summary_line(canary: str, _key: str, count: int, interval_s: float, text: str) -> str:
    return f"canary {canary}: observe hook raised {count} more times in the last {interval_s:g} s: {text}"


# --- the throttle ---------------------------------------------------------------------------


class _Tally:
    __slots__ = ("count", "last", "timer")

    def __init__(self) -> None:
        self.count = 0  # occurrences since the last line
        self.last: BaseException | str = ""
        self.timer: asyncio.TimerHandle | None = None  # None: quiet, log the next one at once


class ThrottledLog:
    """The first occurrence of each key logged at once, then a summary every interval.

    `first(subject, key, error_text)` and `summary(subject, key, count, interval_s, error_text)`
    build the messages; `traceback` logs the first occurrence with its traceback.
    """

    __slots__ = ("_first", "_level", "_logger", "_summary", "_tallies", "_traceback", "subject")

    def __init__(
        self,
        logger: logging.Logger,
        subject: str,
        *,
        first: Callable[[str, str, str], str],
        summary: Callable[[str, str, int, float, str], str],
        level: int = logging.WARNING,
        traceback: bool = False,
    ) -> None:
        self._logger = logger
        self.subject = subject
        self._first = first
        self._summary = summary
        self._level = level
        self._traceback = traceback
        self._tallies: dict[str, _Tally] = {}

    def report(self, key: str, error: BaseException | str) -> None:
        """One occurrence; on the hot path only a lookup and a counter while throttled."""
        tally = self._tallies.get(key)
        if tally is not None and tally.timer is not None:
            tally.count += 1
            tally.last = error
            return
        if tally is None:
            tally = self._tallies[key] = _Tally()
        exc_info = error if self._traceback and isinstance(error, BaseException) else None
        self._logger.log(
            self._level, self._first(self.subject, key, describe(error)), exc_info=exc_info
        )
        self._arm(key, tally)

    def flush(self) -> None:
        """Log what is pending now and stop the timers (at shutdown)."""
        for key, tally in self._tallies.items():
            if tally.timer is not None:
                tally.timer.cancel()
                tally.timer = None
            self._log_summary(key, tally)

    def pending(self, key: str) -> int:
        """Occurrences counted since the last line for `key` (for tests and diagnostics)."""
        tally = self._tallies.get(key)
        return 0 if tally is None else tally.count

    def _arm(self, key: str, tally: _Tally) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a synchronous caller): every occurrence is logged
            return
        tally.timer = loop.call_later(SUMMARY_INTERVAL_S, self._tick, key, tally)

    def _tick(self, key: str, tally: _Tally) -> None:
        tally.timer = None
        if tally.count:
            self._log_summary(key, tally)
            self._arm(key, tally)  # still failing: the next summary in one interval
        # else quiet for a whole interval: the next occurrence is logged at once

    def _log_summary(self, key: str, tally: _Tally) -> None:
        if not tally.count:
            return
        count, tally.count = tally.count, 0
        last, tally.last = tally.last, ""
        self._logger.log(
            self._level,
            self._summary(self.subject, key, count, SUMMARY_INTERVAL_S, describe(last)),
        )
