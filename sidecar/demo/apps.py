"""The demo's primary and canaries: one small ASGI shop API with a behaviour profile.

    GET  /api/items            200 JSON list (`?page=N`)
    GET  /api/items/{id}       200 JSON item, 404 for an unknown id
    POST /api/orders           201 JSON order from a JSON body {"item": id, "qty": n}; 400 otherwise
    POST /api/orders/import    202, reads any body (the demo's large uploads)
    GET  /admin/stats          200 JSON: requests served by this app (never mirrored by the rules)
    GET  /healthz              200 "ok"
    anything else              404

A `Profile` adds latency and faults: the primary and v2 are quick and healthy; v3 is slower,
answers some requests with 500 and stalls on others (past its mirror deadline, so the
sidecar counts those as `failed`). Item answers carry `generated_at`, the time they were
made: it differs between any two answers whatever the version (noise for the comparison,
which the demo's `v1` baseline, the primary's app, removes), while v2 really differs in
one thing: it prices item 42 a cent higher. `sidecar demo` serves these in-process on loopback;
`python -m sidecar.demo.apps primary|v2|v3 --listen 0.0.0.0:8081` serves one on its own
(the docker-compose environment uses that).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config as HyperConfig

from sidecar.asgi import Receive, Scope, Send, serve_lifespan

# The largest request body an app reads; the rest of a larger upload is refused with 413.
# The demo's biggest upload is ~200 KiB; 1 MiB leaves room without letting a client
# make an app buffer without limit.
MAX_BODY_BYTES = 1 << 20
ITEM_COUNT = 100
PAGE_SIZE = 10
# The one item v2 prices differently: on page 5 and its own page, a real diff now and then.
SKEWED_ITEM = 42


@dataclass(frozen=True, slots=True, kw_only=True)
class Profile:
    """How an app behaves: a uniform latency range, then faults drawn per request."""

    name: str
    latency_s: tuple[float, float]
    error_share: float = 0.0  # answered 500
    stall_share: float = 0.0  # answered only after `stall_s` (past a mirror deadline)
    stall_s: float = 0.0
    price_skew_cents: int = 0  # added to the price of item SKEWED_ITEM (a real difference)

    def __post_init__(self) -> None:
        lo, hi = self.latency_s
        if not 0 <= lo <= hi:
            raise ValueError("latency_s must be (low, high) with 0 <= low <= high")
        if not 0 <= self.error_share + self.stall_share <= 1:
            raise ValueError("error_share + stall_share must be within 0..1")


PROFILES: dict[str, Profile] = {
    "primary": Profile(name="primary", latency_s=(0.001, 0.006)),
    "v2": Profile(name="v2", latency_s=(0.003, 0.015), price_skew_cents=1),
    # v3: ~10x slower, 8% errors, 10% stalls of 3 s (its mirror deadline in the demo is 1 s).
    "v3": Profile(
        name="v3", latency_s=(0.04, 0.12), error_share=0.08, stall_share=0.10, stall_s=3.0
    ),
}


class DemoApp:
    """The shop API under one profile; `requests` counts what it served."""

    def __init__(self, profile: Profile, *, seed: int | None = None) -> None:
        self.profile = profile
        self.requests = 0
        self._random = random.Random(seed)
        self._closing = asyncio.Event()

    def close(self) -> None:
        """Cut stalls short: the server is about to stop."""
        self._closing.set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await serve_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        self.requests += 1
        body = await _read_body(receive)
        if body is None:
            await _send(send, 413, {"error": "body too large"})
            return
        p = self.profile
        draw = self._random.random()
        await asyncio.sleep(self._random.uniform(*p.latency_s))
        if draw < p.stall_share:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(p.stall_s):
                    await self._closing.wait()
        elif draw < p.stall_share + p.error_share:
            await _send(send, 500, {"error": f"{p.name}: injected failure"})
            return
        status, doc = self.route(scope["method"], scope["path"], scope["query_string"], body)
        await _send(send, status, doc)

    def route(self, method: str, path: str, query: bytes, body: bytes) -> tuple[int, Any]:
        """The API without faults or latency: (status, JSON document)."""
        if path == "/healthz":
            return 200, "ok"
        if path == "/api/items" and method in ("GET", "HEAD"):
            page = _page(query)
            first = (page - 1) * PAGE_SIZE + 1
            last = min(first + PAGE_SIZE, ITEM_COUNT + 1)
            items = [self._item(i) for i in range(first, last)]
            return 200, {"page": page, "items": items, "generated_at": time.time()}
        if path.startswith("/api/items/") and method in ("GET", "HEAD"):
            tail = path.removeprefix("/api/items/")
            if tail.isdigit() and 1 <= int(tail) <= ITEM_COUNT:
                return 200, {**self._item(int(tail)), "generated_at": time.time()}
            return 404, {"error": "no such item"}
        if path == "/api/orders" and method == "POST":
            try:
                order = json.loads(body)
                item, qty = int(order["item"]), int(order["qty"])
            except (ValueError, TypeError, KeyError):
                return 400, {"error": 'expected {"item": id, "qty": n}'}
            return 201, {"order": self.requests, "item": item, "qty": qty}
        if path == "/api/orders/import" and method == "POST":
            return 202, {"accepted_bytes": len(body)}
        if path.startswith("/admin"):
            return 200, {"app": self.profile.name, "requests": self.requests}
        return 404, {"error": "not found"}

    def _item(self, i: int) -> dict[str, Any]:
        skew = self.profile.price_skew_cents if i == SKEWED_ITEM else 0
        return {"id": i, "name": f"item {i}", "price_cents": 100 + 37 * i % 900 + skew}


def _page(query: bytes) -> int:
    for part in query.split(b"&"):
        key, _, value = part.partition(b"=")
        if key == b"page" and value.isdigit():
            return max(1, min(int(value), ITEM_COUNT // PAGE_SIZE))
    return 1


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks)
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Send, status: int, doc: Any) -> None:
    body = json.dumps(doc).encode() + b"\n"
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode("ascii")),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body, "more_body": False})


def main(argv: Sequence[str] | None = None) -> int:
    """Serve one demo app until SIGTERM/SIGINT (the compose environment's primary/canary)."""
    parser = argparse.ArgumentParser(
        prog="python -m sidecar.demo.apps", description="serve one of sidecar's demo apps"
    )
    parser.add_argument("profile", choices=sorted(PROFILES))
    parser.add_argument("--listen", default="127.0.0.1:8081", metavar="ADDR")
    args = parser.parse_args(argv)

    config = HyperConfig()
    config.bind = [args.listen]
    config.accesslog = "-"
    config.graceful_timeout = 2.0
    app = DemoApp(PROFILES[args.profile])
    print(f"demo app {args.profile} on http://{args.listen}", file=sys.stderr, flush=True)
    # hypercorn's serve() handles SIGTERM/SIGINT itself when no shutdown trigger is given.
    asyncio.run(serve(app, config))  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    sys.exit(main())
