"""One canary's shadow request: `ShadowTemplate`, its precompiled recipe.

`ShadowTemplate.compile(spec)` turns the canary's transforms (`set header`, `drop
header`, `rewrite path`), its mark and its Host policy into a list of operations
once; `build()` then turns a client request into the canary's target and headers:
hop-by-hop and framing headers stripped, X-Forwarded-* added, the transforms
applied, the mark set, Host and Content-Length last. Pure, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from sidecar.http.headers import (
    CONTENT_LENGTH,
    EXPECT,
    HOST,
    Headers,
    add_forwarded,
    strip_headers,
)
from sidecar.http.syntax import HOP_BY_HOP
from sidecar.model.config import CanarySpec, DropHeader, RewritePath, SetHeader


@dataclass(frozen=True, slots=True)
class _Set:
    name: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class _Drop:
    names: frozenset[bytes]


@dataclass(frozen=True, slots=True)
class _Rewrite:
    pattern: re.Pattern[str]
    replacement: str


_Op = _Set | _Drop | _Rewrite

# Never copied onto a shadow request: framing is recomputed from the body copy, and a
# canary must not be asked for `100-continue`.
_SHADOW_DROP: frozenset[bytes] = HOP_BY_HOP | {EXPECT, CONTENT_LENGTH}


def _encode_path(path: str) -> bytes:
    try:
        return path.encode("latin-1")
    except UnicodeEncodeError:  # a replacement introduced non-latin-1 text
        return path.encode("utf-8")


@dataclass(frozen=True, slots=True)
class ShadowTemplate:
    """One canary's shadow-request recipe, compiled once from its `CanarySpec`."""

    ops: tuple[_Op, ...]
    mark: tuple[bytes, bytes] | None
    host: bytes | None  # None: preserve the client's Host

    @classmethod
    def compile(cls, spec: CanarySpec) -> ShadowTemplate:
        ops: list[_Op] = []
        for t in spec.transforms:
            if isinstance(t, SetHeader):
                ops.append(_Set(t.name.lower().encode("latin-1"), t.value.encode("latin-1")))
            elif isinstance(t, DropHeader):
                ops.append(_Drop(frozenset(n.lower().encode("latin-1") for n in t.names)))
            elif isinstance(t, RewritePath):
                ops.append(_Rewrite(re.compile(t.pattern), t.replacement))
        mark = None
        if spec.mark is not None:
            mark = (spec.mark[0].lower().encode("latin-1"), spec.mark[1].encode("latin-1"))
        host = spec.host.encode("latin-1") if spec.host is not None else None
        return cls(ops=tuple(ops), mark=mark, host=host)

    def build(
        self,
        *,
        raw_path: bytes,
        query_string: bytes,
        headers: Sequence[tuple[bytes, bytes]],
        client: str | None,
        scheme: str,
        body_length: int,
        default_host: bytes | None = None,
    ) -> tuple[bytes, Headers]:
        """The shadow request's target and headers ("the mirrored request").

        Headers: the client's minus hop-by-hop and `Expect`, X-Forwarded-* as for the
        primary, transforms in written order, the mark (overwriting), `Host` per `host`
        (`default_host` when preserving and the client sent none), and `Content-Length`
        equal to `body_length` (none when 0), never `Transfer-Encoding`. `Host` comes first.
        """
        out = strip_headers(headers, _SHADOW_DROP)
        add_forwarded(out, client=client, scheme=scheme)
        path = raw_path
        for op in self.ops:
            if isinstance(op, _Set):
                out = [(n, v) for n, v in out if n != op.name]
                out.append((op.name, op.value))
            elif isinstance(op, _Drop):
                out = [(n, v) for n, v in out if n not in op.names]
            else:
                text = path.decode("latin-1")
                path = _encode_path(op.pattern.sub(op.replacement, text, count=1))
        # The mark overwrites: every header of its name goes, the mark comes last (before
        # Content-Length); folded into the final pass, which also puts Host first.
        mark = self.mark
        mark_name = mark[0] if mark is not None else None
        host = self.host
        if host is None and mark_name == HOST:
            host = mark[1] if mark is not None else None
        if host is None:
            for n, v in out:
                if n == HOST and n != mark_name:
                    host = v
                    break
            else:
                host = default_host
        final: Headers = [(HOST, host)] if host is not None else []
        if mark is None:
            final += [(n, v) for n, v in out if n != HOST]
        else:
            final += [(n, v) for n, v in out if n != HOST and n != mark_name]
            if mark_name != HOST:
                final.append(mark)
        if body_length:
            final.append((CONTENT_LENGTH, str(body_length).encode("ascii")))
        target = path + b"?" + query_string if query_string else path
        return target or b"/", final
