"""Capturing one response (primary or canary) for comparison: status, the headers
the spec names, the body's length and sha256, and (for `body json`) its bytes up to
the spec's bound. Fed chunk by chunk as the body streams; never blocks.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from sidecar.model.compare import (
    CaptureError,
    CompareSpec,
)

# --- capturing --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class Captured:
    """One response as the comparison sees it.

    `headers` maps each name the spec lists (as written) to its values in order (empty
    when absent). `json` holds the body bytes only for `body json` and only when not
    `too_large`. `complete` is False when the body did not arrive whole.
    """

    status: int
    headers: Mapping[str, tuple[str, ...]]
    length: int
    sha256: str
    json: bytes | None
    too_large: bool
    complete: bool


class Capture:
    """The incremental recorder of one response, fed as it streams.

    `start()` once, `feed()` per body chunk, then exactly one of `finish()` or
    `incomplete()`. Never raises on content; raises `CaptureError` on misuse. Memory:
    at most `max_body_bytes` of kept chunks (chunk objects are kept, not copied, when
    they are `bytes`), released the moment the body grows past it.
    """

    __slots__ = ("_chunks", "_done", "_hash", "_headers", "_kept", "_length", "_spec", "_status")

    def __init__(self, spec: CompareSpec) -> None:
        self._spec = spec
        self._status: int | None = None
        self._headers: dict[str, tuple[str, ...]] = {}
        self._hash = hashlib.sha256()
        self._length = 0
        self._chunks: list[bytes] | None = [] if spec.body == "json" else None
        self._kept = 0
        self._done = False

    def start(self, status: int, headers: Iterable[tuple[bytes | str, bytes | str]]) -> None:
        if self._status is not None or self._done:
            raise CaptureError("start() called twice")
        self._status = status
        spec = self._spec
        if not spec.headers:
            return
        wanted = spec._header_keys
        found: list[list[str]] = [[] for _ in wanted]
        for name, value in headers:
            key = (name.encode("latin-1") if isinstance(name, str) else name).lower()
            if key in wanted:
                text = value.decode("latin-1") if isinstance(value, bytes | bytearray) else value
                found[wanted.index(key)].append(text)
        self._headers = {n: tuple(v) for n, v in zip(spec.headers, found, strict=True)}

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        if self._status is None or self._done:
            raise CaptureError("feed() outside start() .. finish()")
        if not chunk:
            return
        self._hash.update(chunk)
        self._length += len(chunk)
        if self._chunks is None:  # bytes mode, or json that is already too large
            return
        self._kept += len(chunk)
        if self._kept > self._spec.max_body_bytes:
            self._chunks = None  # release at once: memory stays bounded by max_body_bytes
            return
        # A bytearray or memoryview may be reused by its owner after this call: copy those.
        self._chunks.append(chunk if isinstance(chunk, bytes) else bytes(chunk))

    @property
    def started(self) -> bool:
        """`start()` was called (a response head arrived)."""
        return self._status is not None

    @property
    def too_large(self) -> bool:
        return self._spec.body == "json" and self._chunks is None

    @property
    def kept_bytes(self) -> int:
        """Bytes held for the JSON comparison right now (0 once too large)."""
        return 0 if self._chunks is None else self._kept

    def finish(self) -> Captured:
        """The whole response arrived."""
        return self._close(complete=True)

    def incomplete(self) -> Captured:
        """The body was cut (client left, idle_timeout): the result is judged `skipped`."""
        return self._close(complete=False)

    def _close(self, *, complete: bool) -> Captured:
        if self._status is None or self._done:
            raise CaptureError("finish()/incomplete() outside start() .. finish()")
        self._done = True
        too_large = self.too_large
        body = b"".join(self._chunks) if self._chunks is not None else None
        self._chunks = None
        headers = {n: self._headers.get(n, ()) for n in self._spec.headers}
        return Captured(
            status=self._status,
            headers=MappingProxyType(headers),
            length=self._length,
            sha256=self._hash.hexdigest(),
            json=body,
            too_large=too_large,
            complete=complete,
        )
