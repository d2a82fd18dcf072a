"""Sampling: `sample R` and `sample R by header|cookie|query|client`, compiled to closures.

`sample R` compares a fresh draw of the injected `random()` with R.
`sample R by ...` compares `key_position(key)` with R, where `key_position` is
an unsalted hash of the key's UTF-8 bytes mapped to [0, 1): the same key gets
the same position in every process, rule and restart, so the keys sampled at
5% are a subset of those sampled at 10%. A request without the key falls back
to a random draw. With several values of the key, the first one is used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from operator import methodcaller

from sidecar.model.config import SampleSpec
from sidecar.routing.request import RequestView

Random = Callable[[], float]
Sampler = Callable[[RequestView], bool]
KeyGetter = Callable[[RequestView], list[str]]


def key_position(value: str) -> float:
    """The key's stable position in [0, 1): unsalted, identical across processes.

    The top 53 bits of an 8-byte BLAKE2b digest, so the float is exact and never 1.0.
    """
    digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return (int.from_bytes(digest, "big") >> 11) * (1.0 / (1 << 53))


def _client_key(v: RequestView) -> list[str]:
    return [v.client] if v.client else []


def key_getter(spec: SampleSpec) -> KeyGetter | None:
    """Where a keyed sample's key comes from (the first value counts); None for a random draw."""
    if spec.by is None:
        return None
    if spec.by == "client":
        return _client_key
    if spec.key is None:
        raise ValueError(f"sample by {spec.by} needs a name")
    if spec.by == "header":
        return methodcaller("header_b", spec.key.lower().encode("latin-1"))
    return methodcaller(spec.by, spec.key)


def compile_sample(spec: SampleSpec | None, random: Random) -> Sampler | None:
    """A sampler closure for `spec`; None when every matching request samples in."""
    if spec is None or spec.rate >= 1.0:
        return None  # every matching request: no draw at all
    rate = spec.rate
    get = key_getter(spec)
    if get is None:
        return lambda v: random() < rate

    if get is _client_key:

        def by_client(v: RequestView) -> bool:
            key = v.client  # inline rather than through _client_key: the hot path
            return (key_position(key) if key else random()) < rate

        return by_client

    def by_key(v: RequestView) -> bool:
        values = get(v)
        return (key_position(values[0]) if values else random()) < rate

    return by_key
