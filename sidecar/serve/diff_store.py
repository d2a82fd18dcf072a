"""The diff records a process keeps: the newest in memory (for `/diffs`), all to `diff_log`.

`DiffStore.add(record)` keeps the newest `MAX_KEPT_RECORDS` in a ring (oldest dropped
first) and, when a log is configured, hands the record, encoded as one JSON line, to a
writer thread: the event loop never waits for a disk. The thread appends to the file
(renamed to `<path>.1` once it reaches `DIFF_LOG_ROTATE_BYTES`, replacing the previous
`.1`, and started afresh) or to standard error. At most `MAX_PENDING_LOG_LINES` lines wait
for it: when the disk is slower than the diffs, further lines are dropped and counted
(`dropped`, and the `on_drop` callback: `sidecar_diff_log_dropped_total`) rather than held
in memory. A log that cannot be written (disk full, directory removed) never stops the
proxy: the record stays in memory, the failure is logged at most once per
`LOG_ERROR_INTERVAL_S` with a count, and the next line tries again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import IO, Any, Final

log = logging.getLogger("sidecar.diffs")

# Records kept in memory for GET /diffs: at most ~2-5 KiB each (20 differences of at most
# 256 characters per value), so ~5 MiB at worst per process.
MAX_KEPT_RECORDS: Final = 1000
# A diff log file is rotated when it reaches this size (one `.1` generation is kept).
DIFF_LOG_ROTATE_BYTES: Final = 64 << 20
# Lines waiting for the writer thread: a burst of diffs while the disk stalls for a moment
# (~2-5 KiB each: a few MiB at most); past it lines are dropped and counted.
MAX_PENDING_LOG_LINES: Final = 1000
# How long close() waits for the writer thread to write what is pending.
CLOSE_FLUSH_TIMEOUT_S: Final = 5.0
_STOP: Final = ("", "")
# A failing log is reported at most this often.
LOG_ERROR_INTERVAL_S: Final = 10.0
# The `diff_log` value meaning standard error.
STDERR: Final = "stderr"


class DiffStore:
    """The newest diff records, and the optional diff log; see the module docstring."""

    __slots__ = (
        "_errors",
        "_file",
        "_file_path",
        "_last_error_log",
        "_lines",
        "_on_drop",
        "_path",
        "_records",
        "_rotate_bytes",
        "_size",
        "_thread",
        "dropped",
    )

    def __init__(
        self,
        *,
        keep: int = MAX_KEPT_RECORDS,
        log_to: str | None = None,
        rotate_bytes: int = DIFF_LOG_ROTATE_BYTES,
        pending: int = MAX_PENDING_LOG_LINES,
        on_drop: Callable[[], None] | None = None,
    ) -> None:
        if keep < 1:
            raise ValueError(f"keep must be at least 1, not {keep}")
        self._records: deque[dict[str, Any]] = deque(maxlen=keep)
        self._rotate_bytes = rotate_bytes
        self._on_drop = on_drop
        self.dropped = 0  # log lines dropped because the writer fell behind
        self._path: str | None = None
        # (target, line) pairs for the writer thread; started with the first line.
        self._lines: queue.Queue[tuple[str, str]] = queue.Queue(maxsize=pending)
        self._thread: threading.Thread | None = None
        # Owned by the writer thread:
        self._file: IO[str] | None = None
        self._file_path: str | None = None
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
        self._path = target

    def add(self, record: dict[str, Any]) -> None:
        self._records.append(record)
        target = self._path
        if target is None:
            return
        line = json.dumps(record, separators=(",", ":"), ensure_ascii=False) + "\n"
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._write_lines, name="sidecar-diff-log", daemon=True
            )
            self._thread.start()
        try:
            self._lines.put_nowait((target, line))
        except queue.Full:
            self.dropped += 1
            if self._on_drop is not None:
                self._on_drop()

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

    def flush(self, timeout: float = CLOSE_FLUSH_TIMEOUT_S) -> bool:
        """Wait (blocking) until the writer has written every pending line; False on timeout."""
        if self._thread is None:
            return True
        deadline = time.monotonic() + timeout
        while self._lines.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self) -> None:
        """Write what is pending (up to `CLOSE_FLUSH_TIMEOUT_S`) and stop the writer."""
        thread = self._thread
        if thread is None:
            return
        self._thread = None
        with contextlib.suppress(queue.Full):
            self._lines.put(_STOP, timeout=CLOSE_FLUSH_TIMEOUT_S)
        thread.join(CLOSE_FLUSH_TIMEOUT_S)

    # --- the writer thread ------------------------------------------------------------------

    def _write_lines(self) -> None:
        lines = self._lines
        while True:
            target, line = lines.get()
            try:
                if (target, line) == _STOP:
                    self._close_file()
                    return
                self._write(target, line)
            finally:
                lines.task_done()

    def _write(self, target: str, line: str) -> None:
        try:
            if target == STDERR:
                sys.stderr.write(line)
                sys.stderr.flush()
                return
            stream = self._open(target)
            stream.write(line)
            stream.flush()
            self._size += len(line.encode("utf-8"))
            if self._size >= self._rotate_bytes:
                self._rotate(target)
        except OSError as exc:
            self._close_file()
            self._failed(target, exc)

    def _open(self, path: str) -> IO[str]:
        if self._file is None or self._file_path != path:
            self._close_file()
            self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open
            self._file_path = path
            self._size = self._file.tell()
        return self._file

    def _rotate(self, path: str) -> None:
        self._close_file()
        os.replace(path, path + ".1")
        self._size = 0

    def _close_file(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
            self._file_path = None

    def _failed(self, target: str, exc: OSError) -> None:
        self._errors += 1
        now = time.monotonic()
        if now - self._last_error_log >= LOG_ERROR_INTERVAL_S:
            log.warning(
                "cannot write the diff log %s: %s (%d records not logged since the last "
                "report; they stay in memory for /diffs)",
                target,
                exc.strerror or exc,
                self._errors,
            )
            self._last_error_log = now
            self._errors = 0
