"""The diff records a process keeps: the newest in memory (for `/diffs`), all to `diff_log`.

`DiffStore.add(record)` keeps the newest `MAX_KEPT_RECORDS` in a ring (oldest dropped
first) and, when a log is configured, appends the record as one JSON line: to a file
(renamed to `<path>.1` once it reaches `DIFF_LOG_ROTATE_BYTES`, replacing the previous
`.1`, and started afresh) or to standard error. A log that cannot be written (disk full,
directory removed) never stops the proxy: the record stays in memory, the failure is
logged at most once per `LOG_ERROR_INTERVAL_S` with a count, and the next record tries
again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from collections import deque
from typing import IO, Any, Final

log = logging.getLogger("sidecar.diffs")

# Records kept in memory for GET /diffs: at most ~2-5 KiB each (20 differences of at most
# 256 characters per value), so ~5 MiB at worst per process.
MAX_KEPT_RECORDS: Final = 1000
# A diff log file is rotated when it reaches this size (one `.1` generation is kept).
DIFF_LOG_ROTATE_BYTES: Final = 64 << 20
# A failing log is reported at most this often.
LOG_ERROR_INTERVAL_S: Final = 10.0
# The `diff_log` value meaning standard error.
STDERR: Final = "stderr"


class DiffStore:
    """The newest diff records, and the optional diff log; see the module docstring."""

    __slots__ = (
        "_errors",
        "_file",
        "_last_error_log",
        "_path",
        "_records",
        "_rotate_bytes",
        "_size",
    )

    def __init__(
        self,
        *,
        keep: int = MAX_KEPT_RECORDS,
        log_to: str | None = None,
        rotate_bytes: int = DIFF_LOG_ROTATE_BYTES,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        self._records: deque[dict[str, Any]] = deque(maxlen=keep)
        self._rotate_bytes = rotate_bytes
        self._path: str | None = None
        self._file: IO[str] | None = None
        self._size = 0
        self._errors = 0
        self._last_error_log = -LOG_ERROR_INTERVAL_S
        self.log_to(log_to)

    @property
    def target(self) -> str | None:
        """Where records are logged: a file path, `stderr`, or None."""
        return self._path

    def log_to(self, target: str | None) -> None:
        """Log to `target` from now on (a reload may change it); the kept records stay."""
        if target == self._path:
            return
        self._close_file()
        self._path = target

    def add(self, record: dict[str, Any]) -> None:
        self._records.append(record)
        if self._path is not None:
            self._write(json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n")

    def query(
        self, *, canary: str | None = None, rule: str | None = None, limit: int | None = None
    ) -> list[dict[str, Any]]:
        """Kept records, newest first, filtered by canary name and rule."""
        out: list[dict[str, Any]] = []
        if limit is not None and limit <= 0:
            return out
        for record in reversed(self._records):
            if canary is not None and record.get("canary", {}).get("name") != canary:
                continue
            if rule is not None and record.get("rule") != rule:
                continue
            out.append(record)
            if limit is not None and len(out) >= limit:
                break
        return out

    def __len__(self) -> int:
        return len(self._records)

    def close(self) -> None:
        self._close_file()

    # --- the log ----------------------------------------------------------------------------

    def _write(self, line: str) -> None:
        try:
            if self._path == STDERR:
                sys.stderr.write(line)
                sys.stderr.flush()
                return
            stream = self._open()
            stream.write(line)
            stream.flush()
            self._size += len(line.encode("utf-8"))
            if self._size >= self._rotate_bytes:
                self._rotate()
        except OSError as exc:
            self._close_file()
            self._failed(exc)

    def _open(self) -> IO[str]:
        if self._file is None:
            assert self._path is not None
            self._file = open(self._path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            self._size = self._file.tell()
        return self._file

    def _rotate(self) -> None:
        assert self._path is not None
        self._close_file()
        os.replace(self._path, self._path + ".1")
        self._size = 0

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None

    def _failed(self, exc: OSError) -> None:
        self._errors += 1
        now = time.monotonic()
        if now - self._last_error_log >= LOG_ERROR_INTERVAL_S:
            log.warning(
                "cannot write the diff log %s: %s (%d records not logged since the last "
                "report; they stay in memory for /diffs)",
                self._path,
                exc.strerror or exc,
                self._errors,
            )
            self._last_error_log = now
            self._errors = 0
